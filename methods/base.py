"""The one interface every pretraining method implements.

A method is an ``nn.Module`` built from a config. It owns its encoder (a
:class:`~methods.backbone.ViTEncoder`) and its pretext head, turns a batch of images
(or signals) into a dict with ``loss`` and pretext metrics, and hands back the encoder
weights for transfer. Tasks only ever see :meth:`encoder_state_dict`, whose keys are
timm ``VisionTransformer`` keys, so any task can load any method.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbone import ViTEncoder, build_encoder


class PretrainMethod(nn.Module):
    #: whether the encoder uses position embeddings while pretraining
    pretrain_pos_embed: bool = False
    #: whether the method pretrains at all ("scratch" baselines do not)
    pretrains: bool = True

    def __init__(self, encoder: dict):
        super().__init__()
        enc_cfg = dict(encoder)
        enc_cfg["pos_embed"] = "learn" if self.pretrain_pos_embed else "none"
        enc_cfg["num_classes"] = 0
        self.encoder_cfg = enc_cfg
        self.encoder: ViTEncoder = build_encoder(**enc_cfg)

    @property
    def modality(self) -> str:
        return self.encoder.modality

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training step: a dict with ``loss`` (scalar) and detached metrics."""
        raise NotImplementedError  # abstract

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Pretext metrics on held-out data (eval mode, no gradient)."""
        out = self.forward(images)
        return {k: float(v) for k, v in out.items()}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights with timm's names; no classifier head."""
        return {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()
                if not k.startswith("head.")}
