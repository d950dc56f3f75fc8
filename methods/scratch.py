"""Scratch: no pretraining, the supervised "Labelled" baseline rows (Tables 3, 6, 7).

The task trains its encoder from a random initialisation. "w/ PE" is ``scratch``,
"w/o PE" the registered variant ``scratch-nope`` (finetuning option ``pos_embed=False``).

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

    def __init__(self, encoder: dict):
        super().__init__(encoder)

    def forward(self, images: torch.Tensor, *args, **kwargs) -> dict[str, torch.Tensor]:
        raise RuntimeError("Scratch has no pretraining (pretrains=False): it is the supervised "
                           "baseline whose encoder the task trains from random "
                           "initialisation; there is nothing to pretrain or evaluate here")

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        raise RuntimeError("Scratch has no pretrained encoder weights (pretrains=False); "
                           "the task builds and trains its encoder from scratch")
