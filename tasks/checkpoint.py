"""Loading a pretrained encoder into a task's model, with an explicit report.

Every method saves ``encoder.pth`` with timm ``VisionTransformer`` names. A task's
encoder may have parameters the checkpoint lacks by design (the new classifier
``head``, and ``pos_embed`` for methods pretrained without position embeddings); the
loader says which were freshly initialised and refuses anything else: a key the model
does not have, a shape that differs, or a required weight that is missing means the
checkpoint is not an encoder of this architecture.

- :func:`load_encoder_weights`: into a timm ``VisionTransformer`` of the same names
  (classification; ``head`` and ``pos_embed`` may be new);
- :func:`load_encoder_into_backbone`: into the detector's
  :class:`tasks.vitdet.ViTDetBackbone`, by explicit, logged mapping rules (no [CLS]
  token, final norm or head in ViTDet; ``pos_embed`` without its [CLS] entry, resized
  to the backbone's pretraining grid; relative position tables new).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed

from engine.errors import ConfigError, DataError

__all__ = ["load_encoder_weights", "load_encoder_into_backbone", "read_encoder_state", "check_shapes",
           "NEW_AT_FINETUNING"]

# Parameters a finetuned model may add on top of a pretrained encoder.
NEW_AT_FINETUNING = ("pos_embed", "head.weight", "head.bias")


def read_encoder_state(checkpoint: Path) -> dict:
    """The state dict saved in ``checkpoint`` (``{"state_dict": ...}`` or bare), or one
    DataError saying why it cannot be read."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise DataError(f"encoder checkpoint not found: {checkpoint}")
    try:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or not a torch file
        raise DataError(f"cannot read encoder checkpoint {checkpoint} ({type(exc).__name__}): "
                        f"damaged, or not a weights-only torch checkpoint; delete it and rerun "
                        f"to write it again") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state:
        raise DataError(f"{checkpoint} holds no state dict")
    return state


def check_shapes(own: dict, state: dict, checkpoint: Path, what: str) -> None:
    """ConfigError naming the first tensor of ``state`` whose shape differs from ``own``'s."""
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise ConfigError(f"checkpoint {checkpoint} does not fit this {what}: {k} has shape "
                          f"{tuple(state[k].shape)}, {what} expects {tuple(own[k].shape)} "
                          f"({len(bad)} mismatched tensors)")


def load_encoder_weights(model: torch.nn.Module, checkpoint: Path,
                         allowed_new: tuple[str, ...] = NEW_AT_FINETUNING,
                         log=print) -> dict[str, list[str]]:
    checkpoint = Path(checkpoint)
    state = read_encoder_state(checkpoint)
    check_shapes(model.state_dict(), state, checkpoint, "encoder")
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    not_allowed = [k for k in missing if k not in allowed_new]
    if unexpected or not_allowed:
        raise ConfigError(f"checkpoint {checkpoint} is not an encoder of this architecture: "
                          f"missing {not_allowed[:5]}, unexpected {unexpected[:5]}")
    log(f"[load] {len(state)} tensors from {checkpoint.name}; freshly initialised: "
        f"{', '.join(missing) or 'none'}")
    return {"missing": missing, "unexpected": unexpected}


# encoder.pth entries with no counterpart in ViTDet (no [CLS] token, no final norm,
# no classifier): dropped, and the log says so.
DROPPED_PREFIXES = ("cls_token", "norm.", "fc_norm.", "head.", "reg_token")
MAPPED_PREFIXES = ("patch_embed.proj.", "blocks.")


def load_encoder_into_backbone(backbone, checkpoint: Path, log=print) -> dict:
    """Load a method's ``encoder.pth`` (timm names) into ``backbone`` (a
    :class:`tasks.vitdet.ViTDetBackbone`), by explicit rules:

    - ``patch_embed.proj.*`` and ``blocks.<i>.*`` -> the same name;
    - ``pos_embed`` (1, [1 +] g*g, C) -> ``pos_embed``, the [CLS] entry dropped, the
      grid resized (bicubic) when the pretraining grid differs from the backbone's;
    - ``cls_token``, ``norm.*``, ``fc_norm.*``, ``head.*`` -> dropped (ViTDet has none);
    - the backbone's relative position tables, and ``pos_embed`` when the checkpoint
      has none (PART and MP3 pretrain without), keep their fresh initialisation.

    Anything else (an unknown key, a shape that differs, a block the backbone lacks,
    a required weight that is missing) means a foreign checkpoint: ConfigError.
    Returns ``{"mapped", "dropped", "missing", "unexpected"}`` (sorted key lists).
    """
    checkpoint = Path(checkpoint)
    state = read_encoder_state(checkpoint)
    own = backbone.state_dict()
    mapped, dropped, notes = {}, [], []
    for key, value in state.items():
        if key.startswith(DROPPED_PREFIXES):
            dropped.append(key)
        elif key == "pos_embed":
            if backbone.pos_embed is None:
                dropped.append(key)
                notes.append("pos_embed dropped (finetuning without absolute position embeddings)")
                continue
            value = _grid_pos_embed(value, checkpoint)
            g = backbone.pretrain_grid
            if value.shape[1] != g * g:
                src = math.isqrt(value.shape[1])
                value = resample_abs_pos_embed(value, [g, g], num_prefix_tokens=0, antialias=False)
                notes.append(f"pos_embed resized {src}x{src} -> {g}x{g}")
            mapped["pos_embed"] = value
        elif key.startswith(MAPPED_PREFIXES) and key in own:
            mapped[key] = value
        else:
            raise ConfigError(f"checkpoint {checkpoint} is not a ViT encoder this backbone can load: "
                              f"key {key!r} has no counterpart (backbone depth {backbone.depth})")
    check_shapes(own, mapped, checkpoint, "backbone")
    result = backbone.load_state_dict(mapped, strict=False)
    missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    new_ok = [k for k in missing if k.endswith(("rel_pos_h", "rel_pos_w")) or k == "pos_embed"]
    required = [k for k in missing if k not in new_ok]
    if required or unexpected:
        raise ConfigError(f"checkpoint {checkpoint} is not an encoder of this architecture: "
                          f"missing {required[:5]}, unexpected {unexpected[:5]}")
    rel = [k for k in missing if k != "pos_embed"]
    log(f"[load] {checkpoint.name} -> ViTDet backbone: {len(mapped)} tensors mapped by name "
        f"(patch_embed.proj.*, blocks.*{', pos_embed without its [CLS] entry' if 'pos_embed' in mapped else ''})"
        f"; dropped (no counterpart in ViTDet): {', '.join(sorted(dropped)) or 'none'}")
    if "pos_embed" in missing:
        log("[load] the checkpoint has no pos_embed (its method pretrains without position "
            "embeddings): absolute position embeddings are freshly initialised (trunc. normal, std 0.02)")
    if rel:
        log(f"[load] freshly initialised (zero) relative position tables: {len(rel)} tensors "
            f"({rel[0]} ... {rel[-1]})")
    for note in notes:
        log(f"[load] {note}")
    return {"mapped": sorted(mapped), "dropped": sorted(dropped), "missing": missing,
            "unexpected": unexpected}


def _grid_pos_embed(value: torch.Tensor, checkpoint: Path) -> torch.Tensor:
    """(1, [1 +] g*g, C) -> (1, g*g, C): drops a [CLS] entry if there is one."""
    n = value.shape[1]
    for prefix in (1, 0):
        g = math.isqrt(n - prefix)
        if g * g == n - prefix:
            return value[:, prefix:]
    raise ConfigError(f"pos_embed in {checkpoint} has {n} entries: not a square grid (+ [CLS])")
