"""Random token subsets: which grid patches the encoder sees (MAE, DropPos)."""
from __future__ import annotations

import torch

__all__ = ["num_kept", "random_masking", "gather_tokens"]


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Visible tokens: ``N - round(mask_ratio * N)``, at least one."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = num_tokens - int(round(mask_ratio * num_tokens))
    if keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible token out of {num_tokens}")
    return keep


def random_masking(batch_size: int, num_tokens: int, mask_ratio: float, device=None,
                   generator: torch.Generator | None = None):
    """Per-sample random subset of visible tokens (argsort of uniform noise).

    Returns ``(ids_keep (B, K), mask (B, N) float with 1 = masked, ids_restore (B, N))``
    where ``K = N - round(mask_ratio * N)``; ``ids_restore`` undoes the shuffle (visible
    tokens first, then masked ones) back to grid order.
    """
    keep = num_kept(num_tokens, mask_ratio)
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch_size, num_tokens, device=noise.device)
    mask[:, :keep] = 0.0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x (B, N, ...)`` rows ``ids (B, K)`` -> ``(B, K, ...)``."""
    idx = ids.reshape(*ids.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, idx)
