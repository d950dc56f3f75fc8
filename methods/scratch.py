"""Scratch: no pretraining, the supervised "Labelled" baseline rows (Tables 3, 6, 7).

The task trains its encoder from a random initialisation. ``finetune_pos_embed``
picks the row: ``True`` is "w/ PE" (registered as ``scratch``), ``False`` is "w/o PE"
(``scratch-nope``); the flag is read by :func:`engine.config.resolve_cell`.

``pretrains = False`` tells the runner to skip pretraining, so this class is never
trained; calling :meth:`forward` or asking for its (random) encoder weights raises,
so a random encoder can never pass for a pretrained one.
"""
from __future__ import annotations

import torch

from .base import PretrainMethod

__all__ = ["Scratch"]


class Scratch(PretrainMethod):
    pretrain_pos_embed = False
    pretrains = False

    def __init__(self, encoder: dict, finetune_pos_embed: bool = True):
        super().__init__(encoder)
        self.finetune_pos_embed = bool(finetune_pos_embed)

    def forward(self, images: torch.Tensor, *args, **kwargs) -> dict[str, torch.Tensor]:
        raise RuntimeError("Scratch has no pretraining (pretrains=False): it is the supervised "
                           "baseline whose encoder the task trains from random "
                           "initialisation; there is nothing to pretrain or evaluate here")

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        raise RuntimeError("Scratch has no pretrained encoder weights (pretrains=False); "
                           "the task builds and trains its encoder from scratch")
