"""DropPos: reconstruct dropped positions (the public DropPos recipe, as a baseline).

Per image and iteration:

1. MAE-style patch masking: keep ``K = N - round(mask_ratio * N)`` random grid patches
   (:func:`methods.mae.random_masking`);
2. position dropping: among the K visible tokens, ``round(pos_mask_ratio * K)`` random
   ones get a learnable ``mask_pos_token`` (1, 1, d) instead of their position
   embedding; the others, and [CLS], keep theirs;
3. the encoder sees [CLS] + the K visible tokens; a decoder *without* position
   embedding (``Linear(d -> decoder_dim)``, blocks, LayerNorm,
   ``Linear(decoder_dim -> N)``) turns every visible token into logits over the N grid
   positions;
4. loss: soft-label cross-entropy on the visible tokens whose position was dropped
   ONLY (:func:`position_loss`), optionally weighted per token (attentive
   reconstruction).

Position embeddings are the encoder's ``pos_embed`` set to fixed sin-cos values with
a zero [CLS] entry, exactly as in :mod:`methods.mae` (same helpers).

Position smoothing (``position_smoothing=True``): the label of a token at grid cell
``i`` is ``w_ij = exp(-dist(i, j)^2 / sigma^2)`` over all cells j, with ``dist`` the
Euclidean distance between cells in grid-cell units (``|i - j|`` in 1D), each row
normalised to sum to exactly 1. (The public code does not normalise the rows exactly;
this one does, so the loss is a proper cross-entropy between distributions.) sigma
decays linearly from ``sigma_start`` to 0 over training: the training loop calls
:meth:`DropPos.set_progress` with the fraction done (stored in the ``progress``
buffer), and ``sigma = sigma_start * (1 - progress)``. At sigma 0 the labels are exactly
one-hot (no NaN: sigma^2 is clamped to a tiny positive value, which leaves only the
diagonal). ``sigma_start=1.0`` grid cell is a choice of ours *(assumption)*: the public
code's starting value is tied to its own 14 x 14 setting.

Attentive reconstruction (``attentive_reconstruction=True``): per-token weights
``softmax_j(cos(CLS_out, token_out_j) / attn_temperature)`` over the dropped tokens of
each image, computed from the encoder's outputs under ``torch.no_grad()`` (no gradient
flows through them), multiplied by the number of dropped tokens so that their mean is
1, multiplying each dropped token's cross-entropy.

Config: ``mask_ratio=0.75``, ``pos_mask_ratio=0.75``, ``decoder_dim=512``,
``decoder_depth=2``, ``decoder_heads=16``, ``decoder_mlp_ratio=4.0``,
``position_smoothing=True``, ``sigma_start=1.0``, ``attentive_reconstruction=True``,
``attn_temperature=0.1``. Works in 2D and in 1D (``encoder.modality='1d'``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import PretrainMethod
from .mae import (build_decoder_blocks, gather_tokens, init_linear_and_norm, num_kept, patchify,
                  random_masking, set_fixed_sincos_pos_embed)

__all__ = ["DropPos", "grid_coordinates", "smoothed_position_labels", "position_loss",
           "attentive_weights", "drop_positions"]


def grid_coordinates(grid_size: tuple[int, ...], device=None) -> torch.Tensor:
    """``(N, k)`` cell coordinates in grid-cell units, row-major (k = 1 or 2)."""
    if len(grid_size) == 1:
        return torch.arange(int(grid_size[0]), device=device, dtype=torch.float32)[:, None]
    if len(grid_size) == 2:
        ys, xs = torch.meshgrid(torch.arange(int(grid_size[0]), device=device),
                                torch.arange(int(grid_size[1]), device=device), indexing="ij")
        return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1).float()
    raise ValueError(f"grid_size must have 1 or 2 entries, got {grid_size}")


def smoothed_position_labels(coords: torch.Tensor, sigma) -> torch.Tensor:
    """``(N, N)`` soft labels: row i is ``exp(-|c_i - c_j|^2 / sigma^2)`` normalised to 1.

    ``sigma`` (float or 0-d tensor) may be 0: the result is then the identity.
    """
    d2 = torch.cdist(coords, coords).pow(2)
    sigma = torch.as_tensor(sigma, dtype=d2.dtype, device=d2.device)
    w = torch.exp(-d2 / sigma.pow(2).clamp_min(1e-12))
    return w / w.sum(dim=1, keepdim=True)  # the diagonal is 1, so a row never sums to 0


def position_loss(logits: torch.Tensor, labels: torch.Tensor, dropped: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-label cross-entropy averaged over the tokens with ``dropped`` True.

    logits, labels ``(B, K, N)``; dropped ``(B, K)`` bool; weights ``(B, K)`` or None.
    Tokens with ``dropped`` False contribute nothing, whatever their logits or labels.
    """
    ce = -(labels * F.log_softmax(logits.float(), dim=-1)).sum(-1)       # (B, K)
    keep = dropped.to(ce.dtype)
    if weights is not None:
        keep = keep * weights.to(ce.dtype)
    ce = torch.where(dropped, ce, torch.zeros_like(ce))  # a NaN elsewhere cannot leak in
    return (ce * keep).sum() / dropped.sum().clamp_min(1)


@torch.no_grad()
def attentive_weights(cls_out: torch.Tensor, tokens_out: torch.Tensor, dropped: torch.Tensor,
                      temperature: float = 0.1) -> torch.Tensor:
    """``(B, K)`` weights: softmax over each image's dropped tokens of
    ``cos(CLS, token) / temperature``, times their count (mean 1); 0 elsewhere.

    cls_out ``(B, d)``, tokens_out ``(B, K, d)``, dropped ``(B, K)`` bool. Detached.
    """
    cos = F.cosine_similarity(tokens_out.float(), cls_out.float()[:, None], dim=-1)
    logits = (cos / temperature).masked_fill(~dropped, float("-inf"))
    w = logits.softmax(dim=1).nan_to_num(0.0) * dropped.sum(1, keepdim=True)
    return torch.where(dropped, w, torch.zeros_like(w)).detach()


def drop_positions(batch_size: int, num_tokens: int, num_dropped: int, device=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, K)`` bool, exactly ``num_dropped`` random True per row."""
    order = torch.rand(batch_size, num_tokens, device=device, generator=generator).argsort(1)
    dropped = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=order.device)
    return dropped.scatter(1, order[:, :num_dropped], True)


class DropPos(PretrainMethod):
    pretrain_pos_embed = True

    def __init__(self, encoder: dict, mask_ratio: float = 0.75, pos_mask_ratio: float = 0.75,
                 decoder_dim: int = 512, decoder_depth: int = 2, decoder_heads: int = 16,
                 decoder_mlp_ratio: float = 4.0, position_smoothing: bool = True,
                 sigma_start: float = 1.0, attentive_reconstruction: bool = True,
                 attn_temperature: float = 0.1):
        super().__init__(encoder)
        enc = self.encoder
        set_fixed_sincos_pos_embed(enc)
        self.patch_size = enc.patch_size
        self.num_patches = enc.num_patches
        self.mask_ratio = float(mask_ratio)
        self.num_visible = num_kept(self.num_patches, self.mask_ratio)
        if not 0.0 < pos_mask_ratio <= 1.0:
            raise ValueError(f"pos_mask_ratio must be in (0, 1], got {pos_mask_ratio}")
        self.pos_mask_ratio = float(pos_mask_ratio)
        self.num_dropped = int(round(self.pos_mask_ratio * self.num_visible))
        if self.num_dropped < 1:
            raise ValueError(f"pos_mask_ratio {pos_mask_ratio} drops no position out of "
                             f"{self.num_visible} visible tokens")
        if sigma_start < 0:
            raise ValueError(f"sigma_start must be >= 0, got {sigma_start}")
        self.position_smoothing = bool(position_smoothing)
        self.sigma_start = float(sigma_start)
        self.attentive_reconstruction = bool(attentive_reconstruction)
        self.attn_temperature = float(attn_temperature)

        self.mask_pos_token = nn.Parameter(torch.zeros(1, 1, enc.embed_dim))
        self.decoder_embed = nn.Linear(enc.embed_dim, decoder_dim)
        self.decoder_blocks = build_decoder_blocks(decoder_dim, decoder_depth, decoder_heads,
                                                   decoder_mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.num_patches)
        init_linear_and_norm(nn.ModuleList([self.decoder_embed, self.decoder_blocks,
                                            self.decoder_norm, self.decoder_pred]))
        nn.init.normal_(self.mask_pos_token, std=0.02)

        self.register_buffer("progress", torch.zeros(()))
        self.register_buffer("coords", grid_coordinates(tuple(enc.patch_embed.grid_size)),
                             persistent=False)

    # -------------------------------------------------------------------- schedule
    def set_progress(self, fraction: float) -> None:
        """Fraction of training done, in [0, 1] (called by the training loop)."""
        self.progress.fill_(min(1.0, max(0.0, float(fraction))))

    @property
    def sigma(self) -> torch.Tensor:
        """Current smoothing width in grid cells (0 when smoothing is off)."""
        if not self.position_smoothing:
            return torch.zeros((), device=self.progress.device)
        return self.sigma_start * (1.0 - self.progress)

    def label_table(self) -> torch.Tensor:
        """``(N, N)``: row i is the target distribution of a token at cell i."""
        return smoothed_position_labels(self.coords, self.sigma)

    # -------------------------------------------------------------------- model
    def predict(self, images: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Everything the loss needs, for the K visible tokens of every image:
        ``logits (B, K, N)``, ``positions (B, K)`` (true cell index), ``dropped (B, K)``,
        ``cls_out (B, d)`` and ``tokens_out (B, K, d)`` (encoder outputs)."""
        b = images.shape[0]
        patches = patchify(images, self.patch_size)
        ids_keep, _, _ = random_masking(b, patches.shape[1], self.mask_ratio, images.device,
                                        generator)
        dropped = drop_positions(b, ids_keep.shape[1], self.num_dropped, images.device, generator)
        tokens = self.encoder.embed_patches(gather_tokens(patches, ids_keep))
        pos = gather_tokens(self.encoder.grid_pos_embed().expand(b, -1, -1), ids_keep)
        pos = torch.where(dropped[..., None], self.mask_pos_token.to(pos.dtype), pos)
        latent = self.encoder.forward_tokens(tokens, pos_embed=pos)
        x = self.decoder_norm(self.decoder_blocks(self.decoder_embed(latent)))
        logits = self.decoder_pred(x)[:, 1:]
        return {"logits": logits, "positions": ids_keep, "dropped": dropped,
                "cls_out": latent[:, 0], "tokens_out": latent[:, 1:]}

    def forward(self, images: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out = self.predict(images, generator)
        labels = self.label_table()[out["positions"]]                       # (B, K, N)
        weights = None
        if self.attentive_reconstruction:
            weights = attentive_weights(out["cls_out"], out["tokens_out"], out["dropped"],
                                        self.attn_temperature)
        loss = position_loss(out["logits"], labels, out["dropped"], weights)
        with torch.no_grad():
            hit = out["logits"].argmax(-1) == out["positions"]
            acc = hit[out["dropped"]].float().mean()
        return {"loss": loss, "pos_acc": acc}

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def pretext_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image, for its dropped tokens ``(B, num_dropped)``: whether the argmax
        cell is right, and the distance (grid cells) from the predicted to the true cell."""
        out = self.predict(images)
        b = images.shape[0]
        pred = out["logits"].argmax(-1)[out["dropped"]].view(b, -1)
        true = out["positions"][out["dropped"]].view(b, -1)
        dist = (self.coords[pred] - self.coords[true]).norm(dim=-1)
        return {"correct": (pred == true).float(), "cell_dist": dist}

    def summarize_pretext(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Position accuracy on dropped tokens beside chance (1/N), and the mean
        distance in grid cells between predicted and true cells."""
        correct = outputs["correct"].double()
        return {"pos_acc": float(correct.mean()),
                "chance_acc": 1.0 / self.num_patches,
                "cell_dist": float(outputs["cell_dist"].double().mean()),
                "num_tokens_evaluated": int(correct.numel())}
