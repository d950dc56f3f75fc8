"""DropPos: reconstruct dropped positions (the public DropPos recipe, as a baseline).

Per image and iteration (:meth:`DropPos.forward`, returning ``loss`` and ``pos_acc``):

1. MAE-style patch masking: keep ``K = N - round(mask_ratio * N)`` random grid patches
   (:func:`methods.layers.random_masking`);
2. ``round(pos_mask_ratio * K)`` of them (:func:`drop_positions`) get a learnable
   ``mask_pos_token`` instead of their fixed sin-cos position embedding;
3. a decoder without position embedding gives every visible token logits over the N
   grid positions (:meth:`DropPos.predict`);
4. loss: soft-label cross-entropy on the dropped-position tokens only
   (:func:`position_loss`), optionally weighted by :func:`attentive_weights`
   (``attentive_source`` one of :data:`ATTENTIVE_SOURCES`).

Labels (:func:`smoothed_position_labels` over :func:`grid_coordinates`) are Gaussian
over the encoder's own grid, each row summing to 1, one-hot at sigma 0. Sigma falls
linearly from ``sigma_start`` to 0: the training loop must call
:meth:`DropPos.on_train_progress` with the fraction of training done before every step.
Invalid ``mask_ratio``, ``pos_mask_ratio``, ``sigma_start``, ``attentive_source`` or
``attn_temperature`` raise ValueError.

Config: ``mask_ratio=0.75``, ``pos_mask_ratio=0.75``, ``decoder_dim=512``,
``decoder_depth=2``, ``decoder_heads=16``, ``decoder_mlp_ratio=4.0``,
``position_smoothing=True``, ``sigma_start=1.0``, ``attentive_reconstruction=True``,
``attentive_source="full_image"``, ``attn_temperature=0.1``. Works in 2D and in 1D
(``encoder.modality='1d'``).

Details: docs/reference/baselines.md.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import PretrainMethod
from .layers import (build_decoder_blocks, gather_tokens, init_linear_and_norm, num_kept,
                     patchify, random_masking, set_fixed_sincos_pos_embed)
from .layers.init import init_vit_encoder_like_mae

__all__ = ["DropPos", "grid_coordinates", "smoothed_position_labels", "position_loss",
           "attentive_weights", "drop_positions", "ATTENTIVE_SOURCES"]

ATTENTIVE_SOURCES = ("full_image", "masked")


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
    """Soft-label cross-entropy over the tokens with ``dropped`` True.

    logits, labels ``(B, K, N)``; dropped ``(B, K)`` bool; weights ``(B, K)`` or None.
    Without weights: the mean over the dropped tokens of the batch. With weights:
    ``sum(w * ce) / sum(w)`` over the dropped tokens of the whole batch (the public
    ``forward_drop_pos_loss``). Tokens with ``dropped`` False contribute nothing,
    whatever their logits, labels or weights.
    """
    ce = -(labels * F.log_softmax(logits.float(), dim=-1)).sum(-1)       # (B, K)
    ce = torch.where(dropped, ce, torch.zeros_like(ce))  # a NaN elsewhere cannot leak in
    if weights is None:
        return ce.sum() / dropped.sum().clamp_min(1)
    w = torch.where(dropped, weights.to(ce.dtype), torch.zeros_like(ce))
    return (ce * w).sum() / w.sum().clamp_min(1e-12)


@torch.no_grad()
def attentive_weights(cls_out: torch.Tensor, tokens_out: torch.Tensor,
                      temperature: float = 0.1) -> torch.Tensor:
    """``(B, M)`` weights: ``softmax_j(cos(CLS, token_j) / temperature)`` over each
    image's M tokens (each row sums to 1). Detached.

    cls_out ``(B, d)``, tokens_out ``(B, M, d)``. Pass the outputs of the K visible
    tokens: a softmax over all N patches gathered at the visible ones and renormalised
    (the public code's order of operations) is the same thing.
    """
    cos = F.cosine_similarity(tokens_out.float(), cls_out.float()[:, None], dim=-1)
    return (cos / temperature).softmax(dim=1).detach()


def drop_positions(batch_size: int, num_tokens: int, num_dropped: int, device=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, K)`` bool, exactly ``num_dropped`` random True per row."""
    order = torch.rand(batch_size, num_tokens, device=device, generator=generator).argsort(1)
    dropped = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=order.device)
    return dropped.scatter(1, order[:, :num_dropped], True)


class DropPos(PretrainMethod):
    pretrain_pos_embed = True
    #: 2: attentive weights from a full-image pass, normalised as the public code;
    #: encoder initialised as the public code (was timm's ViT init)
    version = 2

    def __init__(self, encoder: dict, mask_ratio: float = 0.75, pos_mask_ratio: float = 0.75,
                 decoder_dim: int = 512, decoder_depth: int = 2, decoder_heads: int = 16,
                 decoder_mlp_ratio: float = 4.0, position_smoothing: bool = True,
                 sigma_start: float = 1.0, attentive_reconstruction: bool = True,
                 attentive_source: str = "full_image", attn_temperature: float = 0.1):
        super().__init__(encoder)
        enc = self.encoder
        init_vit_encoder_like_mae(enc)
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
        if attentive_source not in ATTENTIVE_SOURCES:
            raise ValueError(f"attentive_source must be one of {ATTENTIVE_SOURCES}, "
                             f"got {attentive_source!r}")
        if attn_temperature <= 0:
            raise ValueError(f"attn_temperature must be > 0, got {attn_temperature}")
        self.position_smoothing = bool(position_smoothing)
        self.sigma_start = float(sigma_start)
        self.attentive_reconstruction = bool(attentive_reconstruction)
        self.attentive_source = attentive_source
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
    def on_train_progress(self, fraction: float) -> None:
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

    @torch.no_grad()
    def full_image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The separate pass of attentive reconstruction: [CLS] + all N grid patches, each
        with its own position embedding, through the encoder without gradient.
        Returns ``cls_out (B, d)`` and ``tokens_out (B, N, d)`` in grid order."""
        enc = self.encoder
        tokens = enc.embed_patches(patchify(images, self.patch_size))
        out = enc.forward_tokens(tokens, pos_embed=enc.grid_pos_embed())
        return out[:, 0], out[:, 1:]

    def token_weights(self, images: torch.Tensor,
                      out: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``(B, K)`` attentive weights of the visible tokens of ``out`` (from
        :meth:`predict` on ``images``), or None without attentive reconstruction."""
        if not self.attentive_reconstruction:
            return None
        if self.attentive_source == "full_image":
            cls_out, tokens_out = self.full_image_features(images)
            tokens_out = gather_tokens(tokens_out, out["positions"])
        else:
            cls_out, tokens_out = out["cls_out"], out["tokens_out"]
        return attentive_weights(cls_out, tokens_out, self.attn_temperature)

    def forward(self, images: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out = self.predict(images, generator)
        labels = self.label_table()[out["positions"]]                       # (B, K, N)
        weights = self.token_weights(images, out)
        loss = position_loss(out["logits"], labels, out["dropped"], weights)
        with torch.no_grad():  # accuracy over the dropped tokens, without a boolean index
            hit = out["logits"].argmax(-1) == out["positions"]   # (a host read on a GPU)
            dropped = out["dropped"]
            acc = (hit & dropped).sum() / dropped.sum().clamp_min(1)
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
