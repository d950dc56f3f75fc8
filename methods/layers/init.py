"""Weight initialisation of MAE's and DropPos's encoders and decoders.

Both public implementations initialise their models the same way
(``models_mae.py``: ``MaskedAutoencoderViT.initialize_weights`` and ``_init_weights``
in facebookresearch/mae; ``models_DropPos_mae.py``:
``DropPositionMaskedAutoEncoderViT.initialize_weights`` and ``_init_weights`` in
Haochen-Wang409/DropPos):

- the patch projection's weight (a convolution whose kernel equals its stride) is
  initialised as a linear layer: ``xavier_uniform_`` on its ``(out, in * p * p)``
  flattened view, so the bound is ``sqrt(6 / (fan_in + fan_out))`` with
  ``fan_in = in_chans * p * p`` and ``fan_out = embed_dim``. Its bias is left at
  PyTorch's ``Conv2d`` default (``_init_weights`` only visits ``nn.Linear`` and
  ``nn.LayerNorm``);
- ``cls_token`` (and the method's mask token) ``normal_(std=0.02)``;
- every ``nn.Linear``: ``xavier_uniform_`` weight (the qkv projection as one
  ``(3d, d)`` matrix), zero bias; every ``nn.LayerNorm``: weight 1, bias 0;
- ``pos_embed``: fixed 2D sin-cos (:mod:`.sincos`), not learnt.

:func:`init_vit_encoder_like_mae` applies this to our encoder (a timm
``VisionTransformer``, :class:`~methods.backbone.ViTEncoder`), in 2D and in 1D (the
1D patch projection is a ``Conv1d``, flattened to ``(out, in * p)`` the same way; our
choice, the public code is 2D only). Position embeddings are not touched here: the
methods set their fixed sin-cos table separately.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["init_linear_and_norm", "init_patch_embed_as_linear", "init_vit_encoder_like_mae"]


def init_linear_and_norm(module: nn.Module) -> None:
    """Xavier-uniform linear weights, zero linear biases, unit LayerNorms (weight 1, bias 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@torch.no_grad()
def init_patch_embed_as_linear(proj: nn.Module) -> None:
    """Xavier-uniform on the ``(out, in * prod(kernel))`` view of a patch convolution's
    weight (in place); the bias is left as it is."""
    w = proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))


def init_vit_encoder_like_mae(encoder: nn.Module) -> None:
    """The public MAE / DropPos initialisation of a timm ViT encoder (module docstring).

    Linear layers and LayerNorms first, then the patch projection and ``cls_token``.
    """
    init_linear_and_norm(encoder)
    init_patch_embed_as_linear(encoder.patch_embed.proj)
    if getattr(encoder, "cls_token", None) is not None:
        nn.init.normal_(encoder.cls_token, std=0.02)
