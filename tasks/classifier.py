"""The finetuned classifier of every classification-style task (images and signals).

A ViT encoder (its own linear head on [CLS]) trained with Mixup/CutMix and soft targets
where the recipe asks for them, label smoothing or plain cross-entropy otherwise.
``pos_embed_mask``: the fraction of patch tokens whose position embedding is hidden
(set to zero: our choice of "masked") per sample during training, the EEG protocol's
20% (paper, Section 4); evaluation always uses every position embedding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from engine.runner import SuiteModel

__all__ = ["ClassifierModel"]


class ClassifierModel(SuiteModel):
    def __init__(self, encoder, num_classes: int, mixup: float = 0.8, cutmix: float = 1.0,
                 smoothing: float = 0.1, pos_embed_mask: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.pos_embed_mask = float(pos_embed_mask)
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing,
                               num_classes=num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()

    def position_mask(self, batch: int, device) -> torch.Tensor | None:
        """``(B, N)`` bool, True where a token's position embedding is hidden: exactly
        ``round(pos_embed_mask * N)`` random tokens per sample (None when off)."""
        enc = self.encoder
        if self.pos_embed_mask <= 0 or enc.pos_embed is None:
            return None
        n = enc.num_patches
        k = int(round(self.pos_embed_mask * n))
        rank = torch.rand(batch, n, device=device).argsort(1)
        return rank < k

    def logits(self, inputs: torch.Tensor, hide_positions: torch.Tensor | None = None):
        if hide_positions is None:
            return self.encoder(inputs)
        enc = self.encoder
        tokens = enc.patch_embed(inputs)
        pos = enc.grid_pos_embed().expand(tokens.shape[0], -1, -1)
        pos = pos.masked_fill(hide_positions[..., None], 0.0)
        return enc.forward_head(enc.forward_tokens(tokens, pos_embed=pos))

    def forward(self, inputs, data_samples=None, mode: str = "loss"):
        if mode == "loss":
            targets = data_samples
            if self.mixup is not None and inputs.shape[0] % 2 == 0:
                inputs, targets = self.mixup(inputs, targets)
            elif self.mixup is not None:  # Mixup needs an even batch; plain smoothing otherwise
                targets = F.one_hot(targets, self.num_classes).float()
            hide = self.position_mask(inputs.shape[0], inputs.device)
            return {"loss": self.criterion(self.logits(inputs, hide), targets)}
        preds = self.encoder(inputs).argmax(dim=-1)
        return [{"pred": p, "label": y} for p, y in zip(preds.tolist(), data_samples.tolist())]
