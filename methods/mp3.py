"""MP3: masked patch position prediction (the paper's grid baseline, Tables 2, 3, 6, 7).

Per image and iteration (:meth:`MP3.forward`, returning ``loss`` and ``pos_acc``):

1. cut the image (or signal) into the ViT's own grid of N patches and embed them with
   the patch projection, *without* position embeddings;
2. shuffle the token order (one random permutation per sample);
3. draw a random subset of ``round((1 - mask_ratio) * N)`` tokens per sample that
   serve as keys/values in the attention of *every* encoder block, while every token
   is a query (the [CLS] token is always a key): :func:`sample_key_mask`, turned into
   the encoder's bool ``attn_mask`` by :func:`key_attention_mask`;
4. a linear head on each patch token's output classifies that token's own grid index
   among N (cross-entropy over N classes, averaged over all tokens).

``mask_ratio`` (eta, default 0.75) must be in [0, 1), else ValueError.
Finetuning adds position embeddings by default ("MP3 w/ PE"); Table 6/7's "MP3 w/o
PE" is the registered variant ``mp3-nope``, whose finetuning option ``pos_embed=False``
lives in the registry: pretraining is identical for both and shared.
:meth:`MP3.pretext_outputs` masks keys as in training.

Details: docs/reference/baselines.md.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import PretrainMethod

__all__ = ["MP3", "sample_key_mask", "key_attention_mask"]


def sample_key_mask(batch_size: int, num_tokens: int, mask_ratio: float, device=None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, N)`` bool: True for the ``round((1 - mask_ratio) * N)`` tokens kept as keys.

    A fresh uniformly random subset per sample.
    """
    num_keep = int(round((1.0 - mask_ratio) * num_tokens))
    rank = torch.rand(batch_size, num_tokens, device=device, generator=generator).argsort(1)
    return rank < num_keep  # rank is a random permutation: exactly num_keep Trues per row


def key_attention_mask(kept: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` kept-key flags -> ``(B, 1, 1+N, 1+N)`` bool attention mask.

    Column 0 is the [CLS] token (always a key); column ``1 + j`` is patch token j, a key
    iff ``kept[:, j]``. Every row (query) is the same: all tokens are queries.
    """
    b, n = kept.shape
    cols = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=kept.device), kept.bool()], 1)
    return cols[:, None, None, :].expand(b, 1, n + 1, n + 1)


class MP3(PretrainMethod):
    pretrain_pos_embed = False

    def __init__(self, encoder: dict, mask_ratio: float = 0.75):
        super().__init__(encoder)
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
        self.mask_ratio = float(mask_ratio)
        enc = self.encoder
        self.num_patches = enc.num_patches
        self.grid_size = tuple(enc.patch_embed.grid_size)  # (rows, cols) or (N,) in 1D
        self.head = nn.Linear(enc.embed_dim, self.num_patches)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def num_keys(self) -> int:
        """Patch tokens that are keys/values per sample (the [CLS] token comes on top)."""
        return int(round((1.0 - self.mask_ratio) * self.num_patches))

    # -------------------------------------------------------------------- sampling
    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: a token order ``(B, N)`` (grid index of each sequence position)
        and the kept-key flags ``(B, N)`` over sequence positions."""
        b, n = images.shape[0], self.num_patches
        order = torch.rand(b, n, device=images.device, generator=generator).argsort(1)
        kept = sample_key_mask(b, n, self.mask_ratio, images.device, generator)
        return order, kept

    # -------------------------------------------------------------------- model
    def encode(self, images: torch.Tensor, order: torch.Tensor,
               kept: torch.Tensor) -> torch.Tensor:
        """Encoder outputs ``(B, 1+N, d)``: [CLS] then the patch tokens in ``order``."""
        tokens = self.encoder.patch_embed(images)  # (B, N, d), grid order, no pos embed
        tokens = torch.gather(tokens, 1, order[..., None].expand_as(tokens))
        return self.encoder.forward_tokens(tokens, attn_mask=key_attention_mask(kept))

    def predict(self, images: torch.Tensor, order: torch.Tensor,
                kept: torch.Tensor) -> torch.Tensor:
        """Position logits ``(B, N, N)`` of each token in sequence order."""
        return self.head(self.encode(images, order, kept)[:, 1:])

    def forward(self, images: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        order, kept = self.sample(images, generator)
        logits = self.predict(images, order, kept).float()
        loss = F.cross_entropy(logits.flatten(0, 1), order.flatten())
        pos_acc = (logits.detach().argmax(-1) == order).float().mean()
        return {"loss": loss, "pos_acc": pos_acc}

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def pretext_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted and true grid indices ``(B, N)`` of one held-out batch (the caller
        fixes the RNG); keys are masked as in training."""
        order, kept = self.sample(images)
        pred = self.predict(images, order, kept).argmax(-1)
        return {"pred": pred, "target": order}

    def _cells(self, index: torch.Tensor) -> torch.Tensor:
        """Grid index -> (row, col) cell coordinates (2D) or (t,) (1D), in patches."""
        if len(self.grid_size) == 1:
            return index[..., None].double()
        cols = self.grid_size[1]
        return torch.stack([index // cols, index % cols], -1).double()

    def summarize_pretext(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Position accuracy over a held-out set beside chance (1/N), and the mean
        Euclidean distance between predicted and true cells (in patches)."""
        pred, target = outputs["pred"], outputs["target"]
        return {
            "pos_acc": float((pred == target).double().mean()),
            "chance_acc": 1.0 / self.num_patches,
            "pos_err_cells": float((self._cells(pred) - self._cells(target)).norm(dim=-1).mean()),
            "num_tokens_evaluated": int(target.numel()),
        }
