"""The light transformer decoder of MAE and DropPos (timm blocks), and its init.

The init (:func:`~methods.layers.init.init_linear_and_norm`, re-exported here) is the
public MAE's and DropPos's ``_init_weights``; see :mod:`methods.layers.init`.
"""
from __future__ import annotations

import functools

import torch.nn as nn
from timm.models.vision_transformer import Block

from .init import init_linear_and_norm

__all__ = ["build_decoder_blocks", "init_linear_and_norm"]


def build_decoder_blocks(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> nn.Sequential:
    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(*[Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm)
                           for _ in range(depth)])
