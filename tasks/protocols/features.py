"""Frozen features: :func:`extract_features` (the encoder's ``forward_features`` output
after its final norm, pooled by ``pool``: :data:`POOLS`), in the data set's order, in eval
mode, without gradients; :func:`cached_features` keeps them on disk, one ``.pt`` per key
(:func:`feature_cache_key`), written atomically.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.utils.data as tud

from engine.atomic import atomic_torch_save
from engine.plan import stable_hash


POOLS = ("cls", "avg", "cls+avg")


def _pool_tokens(tokens: torch.Tensor, pool: str, num_prefix_tokens: int) -> torch.Tensor:
    """``forward_features`` output ``(B, prefix + N, d)`` -> ``(B, d)`` (``(B, 2d)`` for cls+avg)."""
    cls = tokens[:, 0]
    avg = tokens[:, num_prefix_tokens:].mean(dim=1)
    if pool == "cls":
        return cls
    if pool == "avg":
        return avg
    return torch.cat([cls, avg], dim=1)


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


def _extract_pools(encoder: nn.Module, dataset, pools: tuple[str, ...], batch_size: int,
                   device=None, num_workers: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One pass over ``dataset``: ``{pool: (n, d) float32}`` on the CPU, and labels ``(n,)`` int64."""
    for pool in pools:
        _check_pool(pool)
    if device is None:
        device = next(encoder.parameters()).device
    device = torch.device(device)
    param_device = next(encoder.parameters()).device
    if param_device != device:
        raise ValueError(f"the encoder's weights are on {param_device}, features were asked on {device}: "
                         f"move the encoder first (encoder.to({str(device)!r}))")
    loader = tud.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                            num_workers=num_workers)
    prefix = int(encoder.num_prefix_tokens)
    out: dict[str, list[torch.Tensor]] = {p: [] for p in pools}
    labels: list[torch.Tensor] = []
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for x, y in loader:
                tokens = encoder.forward_features(x.to(device, non_blocking=True)).float()
                for pool in pools:
                    out[pool].append(_pool_tokens(tokens, pool, prefix).cpu())
                labels.append(torch.as_tensor(y).reshape(-1).to(torch.int64))
    finally:
        encoder.train(was_training)
    if not labels:
        raise ValueError("cannot extract features from an empty data set")
    return {p: torch.cat(v).contiguous() for p, v in out.items()}, torch.cat(labels)


def extract_features(encoder: nn.Module, dataset, batch_size: int, pool: str = "cls", device=None,
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of every sample of ``dataset`` (which yields ``(x, label)``).

    ``encoder``: a timm ``VisionTransformer`` (our :class:`methods.backbone.ViTEncoder`,
    with or without position embeddings). Its ``forward_features`` output (after the
    final norm) is pooled: ``cls`` = token 0, ``avg`` = mean of the tokens after the
    ``encoder.num_prefix_tokens`` prefix tokens, ``cls+avg`` = both concatenated.
    Eval mode (restored afterwards), no gradients, the data set's order. ``device``:
    where the encoder runs (None: where its weights are; they are never moved here).

    Returns ``(features float32 (n, d), labels int64 (n,))``, both on the CPU.
    """
    feats, labels = _extract_pools(encoder, dataset, (pool,), batch_size, device, num_workers)
    return feats[pool], labels


# ------------------------------------------------------------------------ cache
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


def feature_cache_key(**parts) -> str:
    """A file-name-safe key for :func:`cached_features` from what makes features differ:
    e.g. ``feature_cache_key(checkpoint=..., data=..., split="train", pool="cls",
    img_size=32)``. Readable prefix (split and pool when given) + a hash of all parts."""
    readable = [str(parts[k]) for k in ("split", "pool") if k in parts]
    readable = [re.sub(r"[^A-Za-z0-9.=+-]", "-", r) for r in readable]
    return "__".join(["feat", *readable, stable_hash(parts, n=16)])


def cached_features(cache_dir: str | Path | None, key: str, compute_fn: Callable[[], object]):
    """``compute_fn()``'s result (tensors, or tuples/dicts of tensors), kept in
    ``cache_dir/<key>.pt``: read when the file exists, else computed and written
    atomically (temporary file + ``os.replace``: a killed run leaves no half file).
    ``cache_dir=None`` computes without caching. ``key`` must be a plain file name."""
    if cache_dir is None:
        return compute_fn()
    if not _KEY.match(key):
        raise ValueError(f"feature cache key must be a plain file name ([A-Za-z0-9._=+-]), got {key!r}")
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute_fn()
    atomic_torch_save(value, path)
    return value
