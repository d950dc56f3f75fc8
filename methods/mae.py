"""MAE: masked autoencoding of pixels (the public MAE recipe, as a baseline).

Per image and iteration: cut the image into the ViT's grid patches, keep a random
``N - round(mask_ratio * N)`` of them, encode [CLS] + the visible tokens with their
position embeddings (:meth:`MAE.forward_encoder`), and let a light decoder reconstruct
the pixels of every patch from the encoded visible tokens plus one shared mask token
per hidden patch (:meth:`MAE.forward_decoder`). The loss is the mean squared error
over the *masked* patches only (:func:`masked_mse`); :meth:`MAE.forward` returns
``loss``, :meth:`MAE.reconstruct` gives ``(pred, target, mask)`` over all N patches.
A ``mask_ratio`` outside [0, 1), or one that leaves no visible patch, raises ValueError.

Position embeddings are the encoder's own ``pos_embed`` set to FIXED sin-cos values
(2D for images, 1D for signals) with a zero [CLS] entry and ``requires_grad=False``,
as in the public MAE. ``encoder_state_dict()`` therefore carries ``pos_embed``, and
finetuning starts its learnable position embedding from these values.
Targets (:meth:`MAE.targets`) are each grid patch's pixels flattened C-major,
normalised per patch when ``norm_pix_loss``.

Config: ``mask_ratio=0.75``, ``decoder_dim=512``, ``decoder_depth=8``,
``decoder_heads=16``, ``decoder_mlp_ratio=4.0``, ``norm_pix_loss=True``.

Details: docs/reference/baselines.md.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import PretrainMethod
from .layers import (build_decoder_blocks, gather_tokens, grid_sincos_pos_embed,
                     init_linear_and_norm, normalize_patches, num_kept, patchify, random_masking,
                     set_fixed_sincos_pos_embed)
from .layers.init import init_vit_encoder_like_mae

__all__ = ["MAE", "masked_mse"]


# ----------------------------------------------------------------------- loss

def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches (``mask`` 1) of the per-patch mean squared error."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


# ----------------------------------------------------------------------- the method

class MAE(PretrainMethod):
    pretrain_pos_embed = True
    #: 2: the encoder is initialised as the public MAE's (was timm's ViT init)
    version = 2

    def __init__(self, encoder: dict, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, decoder_mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True):
        super().__init__(encoder)
        enc = self.encoder
        init_vit_encoder_like_mae(enc)
        set_fixed_sincos_pos_embed(enc)
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.patch_size = enc.patch_size
        self.num_patches = enc.num_patches
        num_kept(self.num_patches, self.mask_ratio)  # validate early
        in_chans = enc.patch_embed.proj.weight.shape[1]
        self.patch_dim = in_chans * self.patch_size ** (1 if enc.modality == "1d" else 2)

        self.decoder_embed = nn.Linear(enc.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed",
            grid_sincos_pos_embed(decoder_dim, tuple(enc.patch_embed.grid_size), cls_token=True),
            persistent=False)
        self.decoder_blocks = build_decoder_blocks(decoder_dim, decoder_depth, decoder_heads,
                                                   decoder_mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_dim)
        init_linear_and_norm(nn.ModuleList([self.decoder_embed, self.decoder_blocks,
                                            self.decoder_norm, self.decoder_pred]))
        nn.init.normal_(self.mask_token, std=0.02)

    # -------------------------------------------------------------------- pieces
    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """Grid patches ``(B, N, C, P, P)`` / ``(B, N, C, P)``."""
        return patchify(images, self.patch_size)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets ``(B, N, patch_dim)`` (normalised if ``norm_pix_loss``)."""
        target = self.patches(images).flatten(2)
        return normalize_patches(target) if self.norm_pix_loss else target

    def forward_encoder(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Encode [CLS] + the visible patches: ``(latent (B, 1+K, d), mask, ids_restore)``."""
        patches = self.patches(images)
        ids_keep, mask, ids_restore = random_masking(images.shape[0], patches.shape[1],
                                                     self.mask_ratio, images.device, generator)
        tokens = self.encoder.embed_patches(gather_tokens(patches, ids_keep))
        pos = self.encoder.grid_pos_embed().expand(images.shape[0], -1, -1)
        latent = self.encoder.forward_tokens(tokens, pos_embed=gather_tokens(pos, ids_keep))
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``(B, 1+K, d)`` -> pixel predictions ``(B, N, patch_dim)`` in grid order."""
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        visible = x[:, 1:]
        filler = self.mask_token.expand(b, n - visible.shape[1], -1)
        x_ = gather_tokens(torch.cat([visible, filler], dim=1), ids_restore)  # unshuffle
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed.to(x.dtype)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:]

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """``(pred, target, mask)``, each over all N grid patches."""
        latent, mask, ids_restore = self.forward_encoder(images, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return pred, self.targets(images), mask

    def forward(self, images: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        pred, target, mask = self.reconstruct(images, generator)
        loss = masked_mse(pred.float(), target.float(), mask)
        return {"loss": loss}

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def pretext_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image masked-patch MSE of the model and of predicting zero in target space
        (with ``norm_pix_loss`` that is each patch's own mean value)."""
        pred, target, mask = self.reconstruct(images)
        pred, target = pred.float(), target.float()
        count = mask.sum(1).clamp_min(1.0)
        mse = ((pred - target).pow(2).mean(-1) * mask).sum(1) / count
        zero = (target.pow(2).mean(-1) * mask).sum(1) / count
        return {"recon_mse": mse, "zero_mse": zero}

    def summarize_pretext(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Masked-patch reconstruction MSE over the held-out set, beside predicting zero."""
        return {"recon_mse": float(outputs["recon_mse"].double().mean()),
                "zero_mse": float(outputs["zero_mse"].double().mean()),
                "num_images_evaluated": int(outputs["recon_mse"].shape[0])}
