"""Grid patches as pixel (or sample) targets, in the patch projection's order."""
from __future__ import annotations

import torch

__all__ = ["patchify", "normalize_patches"]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Grid patches, C-major within a patch: ``(B, C, H, W)`` -> ``(B, N, C, P, P)``,
    ``(B, C, T)`` -> ``(B, N, C, P)``; row-major patch order (timm's). Pixels beyond
    the last whole patch are ignored, as by the patch projection."""
    p = patch_size
    if images.dim() == 4:
        b, c, h, w = images.shape
        gh, gw = h // p, w // p
        x = images[:, :, :gh * p, :gw * p].reshape(b, c, gh, p, gw, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, p, p)
    if images.dim() == 3:
        b, c, t = images.shape
        n = t // p
        x = images[:, :, :n * p].reshape(b, c, n, p)
        return x.permute(0, 2, 1, 3)
    raise ValueError(f"expected (B, C, H, W) or (B, C, T) input, got shape {tuple(images.shape)}")


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation over the last dim (mean, unbiased variance, ``eps``)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()
