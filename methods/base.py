"""The one interface every pretraining method implements.

A method is an ``nn.Module`` built from a config. It owns its encoder (a
:class:`~methods.backbone.ViTEncoder`) and its pretext head, and declares everything the
training loop, the tasks and the figures call on it; nothing outside probes a method
for optional attributes. What a method must write:

- ``forward(samples)``: a training step's dict with ``loss`` (scalar) and detached
  metrics; ``samples`` is one batch of the views it declared (see below);
- ``pretext_outputs(samples)`` / ``summarize_pretext(outputs)``: its own errors on
  held-out data (``--task pretext``); the defaults raise, naming the method.

What it may override (the defaults do nothing, or raise naming the method):

- ``pretrain_views(**config)``: the views a pretraining sample is made of, as
  :class:`ViewSpec` (one full-size view by default; a multi-crop method declares its
  global and local crops here and every task builds them);
- ``on_train_progress(fraction)``: called before every training step with the fraction
  of training done (schedules inside a method, e.g. DropPos's sigma);
- ``on_train_iter_end()``: called after every optimizer step (e.g. an EMA teacher);
- ``pair_matrices(samples, boxes)``: predicted and true targets of all patch pairs,
  for the figures;
- ``version``: bump it when a change alters what a given config and seed pretrain to,
  so that cached checkpoints of the old code are not reused.

Tasks only ever see :meth:`encoder_state_dict`, whose keys are timm
``VisionTransformer`` keys, so any task can load any method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .backbone import ViTEncoder, build_encoder

__all__ = ["PretrainMethod", "ViewSpec"]


@dataclass(frozen=True)
class ViewSpec:
    """``count`` augmented views of a pretraining sample, cut by the task's pretraining
    augmentation. ``size``: the view's side (None: the encoder's input size);
    ``crop_scale``: the random-resized-crop area range (None: the plan's
    ``augment.rrc_scale``). A sample with one view in total is that view's tensor;
    otherwise a list of tensors in declaration order."""
    count: int = 1
    size: int | None = None
    crop_scale: tuple[float, float] | None = None


class PretrainMethod(nn.Module):
    #: whether the encoder uses position embeddings while pretraining
    pretrain_pos_embed: bool = False
    #: whether the method pretrains at all ("scratch" baselines do not)
    pretrains: bool = True
    #: code version of what the method computes (part of the checkpoint cache key)
    version: int = 1

    def __init__(self, encoder: dict):
        super().__init__()
        enc_cfg = dict(encoder)
        enc_cfg["pos_embed"] = "learn" if self.pretrain_pos_embed else "none"
        enc_cfg["num_classes"] = 0
        self.encoder_cfg = enc_cfg
        self.encoder: ViTEncoder = build_encoder(**enc_cfg)

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def modality(self) -> str:
        return self.encoder.modality

    # ------------------------------------------------------------------ data
    @classmethod
    def pretrain_views(cls, **config) -> tuple[ViewSpec, ...]:
        """The views one pretraining sample is made of (``config``: the constructor's)."""
        return (ViewSpec(),)

    # ------------------------------------------------------------------ training
    def forward(self, samples) -> dict[str, torch.Tensor]:
        """Training step: a dict with ``loss`` (scalar) and detached metrics."""
        raise NotImplementedError(f"method {self.name} defines no training step (forward)")

    def on_train_progress(self, fraction: float) -> None:
        """Before a training step: ``fraction`` of training done, in [0, 1]."""

    def on_train_iter_end(self) -> None:
        """After an optimizer step."""

    # ------------------------------------------------------------------ evaluation
    def pretext_outputs(self, samples) -> dict[str, torch.Tensor]:
        """Per-sample pretext outputs of one held-out batch (the caller fixes the RNG)."""
        raise ValueError(f"method {self.name} defines no pretext evaluation")

    def summarize_pretext(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Pretext metrics over the concatenated outputs of a whole held-out set."""
        raise ValueError(f"method {self.name} defines no pretext evaluation")

    def pair_matrices(self, samples, boxes) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted and true targets for all N x N pairs of ``boxes``."""
        raise ValueError(f"method {self.name} predicts no pairwise targets to draw")

    # ------------------------------------------------------------------ transfer
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights with timm's names; no classifier head."""
        return {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()
                if not k.startswith("head.")}
