"""Fixed sin-cos position tables (MAE's and DropPos's encoders and decoders).

2D: timm's :func:`timm.layers.build_sincos2d_pos_embed` for a ``gh x gw`` grid, row-major:
channels ``[sin(y w_k) | sin(x w_k) | cos(y w_k) | cos(x w_k)]`` with
``w_k = 10000 ** (-k / (D/4))``. The public MAE orders the four blocks differently
(x first, sin and cos per coordinate); the frequencies are the same, an encoder
trained from scratch does not care, and finetuning reads the values we saved.
1D (signals): ``[sin(t w_k) | cos(t w_k)]`` with ``w_k = 10000 ** (-k / (D/2))``.
"""
from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed

__all__ = ["sincos_pos_embed_1d", "grid_sincos_pos_embed", "set_fixed_sincos_pos_embed"]


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(M,)`` positions -> ``(M, dim)``: ``[sin(p * w_k) | cos(p * w_k)]``, k < dim/2."""
    if dim % 2:
        raise ValueError(f"1D sin-cos embedding needs an even width, got {dim}")
    half = dim // 2
    omega = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / half))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def grid_sincos_pos_embed(dim: int, grid_size: tuple[int, ...],
                          cls_token: bool = False) -> torch.Tensor:
    """Sin-cos table of a grid (1 or 2 sizes) as ``(1, [1 +] N, dim)``; [CLS] entry zero."""
    if len(grid_size) == 1:
        table = sincos_pos_embed_1d(dim, torch.arange(int(grid_size[0])))
    elif len(grid_size) == 2:
        if dim % 4:
            raise ValueError(f"2D sin-cos embedding needs a width divisible by 4, got {dim}")
        table = build_sincos2d_pos_embed([int(grid_size[0]), int(grid_size[1])], dim)
    else:
        raise ValueError(f"grid_size must have 1 or 2 entries, got {grid_size}")
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table], dim=0)
    return table.unsqueeze(0)


def set_fixed_sincos_pos_embed(encoder) -> None:
    """Overwrite the encoder's ``pos_embed`` with fixed sin-cos values and freeze it."""
    if encoder.pos_embed is None:
        raise ValueError("the encoder has no pos_embed (build it with pos_embed='learn')")
    n_prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
    if n_prefix > 1:
        raise ValueError("only a single [CLS] prefix token is supported")
    table = grid_sincos_pos_embed(encoder.embed_dim, tuple(encoder.patch_embed.grid_size),
                                  cls_token=n_prefix == 1)
    if table.shape != encoder.pos_embed.shape:
        raise ValueError(f"sin-cos table {tuple(table.shape)} does not match pos_embed "
                         f"{tuple(encoder.pos_embed.shape)}")
    with torch.no_grad():
        encoder.pos_embed.copy_(table)
    encoder.pos_embed.requires_grad_(False)
