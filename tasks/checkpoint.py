"""Loading a pretrained encoder into a task's model, with an explicit report.

Every method saves ``encoder.pth`` with timm ``VisionTransformer`` names. A task's
encoder may have parameters the checkpoint lacks by design (the new classifier
``head``, and ``pos_embed`` for methods pretrained without position embeddings); the
loader says which were freshly initialised and refuses anything else: a key the model
does not have, a shape that differs, or a required weight that is missing means the
checkpoint is not an encoder of this architecture.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import ConfigError, DataError

__all__ = ["load_encoder_weights", "read_encoder_state", "check_shapes", "NEW_AT_FINETUNING"]

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
        raise DataError(f"cannot read encoder checkpoint {checkpoint}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
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
