"""ViT encoders for every method and task, built on timm's VisionTransformer.

`ViTEncoder` *is* a timm ``VisionTransformer`` (same parameter names, so timm's layer
decay, checkpoint filters and our detection backbone all read its state dict), with
two additions every pretraining method needs:

- :meth:`ViTEncoder.embed_patches` embeds a batch of already-cut patches of any count
  N (off-grid, shuffled, a subset...) with the model's own patch projection;
- :meth:`ViTEncoder.forward_tokens` runs [CLS] + those tokens through the blocks, with
  or without position embeddings and with an optional attention mask.

Position embeddings: PART and MP3 pretrain with ``pos_embed='none'``; finetuning builds
the same encoder with ``pos_embed='learn'`` (randomly initialised, as in the paper) and
loads the pretrained weights, so only ``pos_embed`` and ``head`` are new.

The 1D variant (``modality='1d'``) tokenises a multichannel signal ``(B, C, T)`` into
windows of ``patch_size`` samples x C channels with a linear map (a strided Conv1d).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

__all__ = ["ViTEncoder", "PatchEmbed1d", "build_encoder", "ENCODER_ARCHS"]

# Named sizes; a preset picks one and may override any field.
ENCODER_ARCHS = {
    "vit_micro": dict(embed_dim=96, depth=4, num_heads=3),      # tiny preset (CPU)
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    # vit_micro at twice the width: README "What the tiny preset can support" measures it
    "vit_micro_wide": dict(embed_dim=192, depth=4, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    # the EEG encoder: with 6 x 100-sample patches, 30 tokens and 5 classes, 12.80 M
    # parameters; the paper states 12.9 M and no shape (width/depth our choice)
    "vit_eeg": dict(embed_dim=256, depth=16, num_heads=8),
}


class PatchEmbed1d(nn.Module):
    """Windows of ``patch_size`` samples across all channels -> one token each."""

    def __init__(self, img_size: int = 3000, patch_size: int = 100, in_chans: int = 6,
                 embed_dim: int = 256, bias: bool = True, **_ignored):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = img_size // patch_size
        self.grid_size = (self.num_patches,)
        self.proj = nn.Conv1d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size,
                              bias=bias)

    def feat_ratio(self, as_scalar: bool = True):
        return self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).transpose(1, 2)


class ViTEncoder(VisionTransformer):
    """timm ViT that also accepts a batch of patch tokens (see module docstring)."""

    def __init__(self, modality: str = "2d", **kwargs):
        if modality not in ("2d", "1d"):
            raise ValueError(f"modality must be '2d' or '1d', got {modality!r}")
        if modality == "1d":
            kwargs.setdefault("embed_layer", PatchEmbed1d)
        super().__init__(**kwargs)
        self.modality = modality

    @property
    def patch_size(self) -> int:
        ps = self.patch_embed.patch_size
        return ps[0] if isinstance(ps, (tuple, list)) else ps

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, N, C, P, P)`` (or ``(B, N, C, L)`` in 1D) -> ``(B, N, d)``.

        The patch projection is a convolution whose kernel equals its input, i.e. a
        linear map of the flattened patch: one matmul for the whole batch.
        """
        proj = self.patch_embed.proj
        weight = proj.weight.flatten(1)
        return nn.functional.linear(patches.flatten(2), weight, proj.bias)

    def grid_pos_embed(self) -> torch.Tensor | None:
        """Position embeddings of the patch tokens (without the [CLS] entry), ``(1, N, d)``."""
        if self.pos_embed is None:
            return None
        return self.pos_embed[:, self.num_prefix_tokens:] if not self.no_embed_class else self.pos_embed

    def forward_tokens(self, tokens: torch.Tensor, pos_embed: torch.Tensor | None = None,
                       attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[CLS] + tokens through the blocks: ``(B, N, d)`` -> ``(B, 1 + N, d)``.

        ``pos_embed`` (broadcastable to ``(B, N, d)``) is added to the patch tokens; the
        [CLS] token gets its own entry of the model's ``pos_embed`` when it has one.
        ``attn_mask`` is passed to every block (``(B, 1, 1+N, 1+N)`` bool, True = may
        attend), as MP3 needs.
        """
        if pos_embed is not None:
            tokens = tokens + pos_embed
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        if self.pos_embed is not None and not self.no_embed_class:
            cls = cls + self.pos_embed[:, :1]
        x = torch.cat([cls, tokens], dim=1)
        x = self.pos_drop(x)
        x = self.norm_pre(x)
        if attn_mask is not None:
            for blk in self.blocks:
                x = blk(x, attn_mask=attn_mask)
        else:
            x = self.blocks(x)
        return self.norm(x)


def build_encoder(arch: str = "vit_micro", img_size: int = 32, patch_size: int = 4,
                  in_chans: int = 3, modality: str = "2d", pos_embed: str = "none",
                  num_classes: int = 0, drop_path_rate: float = 0.0, **overrides) -> ViTEncoder:
    """Build a :class:`ViTEncoder` from a named size plus overrides."""
    if arch not in ENCODER_ARCHS:
        raise ValueError(f"unknown encoder arch {arch!r}; expected one of {sorted(ENCODER_ARCHS)}")
    cfg = dict(ENCODER_ARCHS[arch])
    cfg.update(overrides)
    return ViTEncoder(modality=modality, img_size=img_size, patch_size=patch_size,
                      in_chans=in_chans, pos_embed=pos_embed, num_classes=num_classes,
                      global_pool="token", drop_path_rate=drop_path_rate, **cfg)
