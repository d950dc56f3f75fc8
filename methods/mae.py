"""MAE: masked autoencoding of pixels (the public MAE recipe, as a baseline).

Per image and iteration: cut the image into the ViT's grid patches, keep a random
``N - round(mask_ratio * N)`` of them (per-sample argsort of uniform noise, so exactly
``round(mask_ratio * N)`` are masked), encode [CLS] + the visible tokens with their
position embeddings, and let a light decoder reconstruct the pixels of every patch
from the encoded visible tokens plus one shared mask token per hidden patch. The loss
is the mean squared error over the *masked* patches only.

Position embeddings are the encoder's own ``pos_embed`` set to FIXED sin-cos values
(2D for images, 1D for signals) with a zero [CLS] entry and ``requires_grad=False``,
as in the public MAE. ``encoder_state_dict()`` therefore carries ``pos_embed``, and
finetuning starts its learnable position embedding from these values.

Choices made here (documented, since they fix the numbers):

- Sin-cos layout: for a ``gh x gw`` grid the first half of the channels encodes the
  row (y) index and the second half the column (x) index; each half is
  ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000 ** (-k / (D/4))``. In 1D the
  whole width encodes the window index. (The public code puts x first; an encoder
  trained from scratch does not care, and finetuning reads the values we saved.)
- Reconstruction target: the pixels of each grid patch flattened C-major
  (channel, then row, then column; in 1D channel, then time), which is the order of
  ``patches.flatten(2)`` for :func:`~methods.sampling.extract_patches` /
  :func:`~methods.sampling.extract_windows` on grid boxes and the order of the patch
  projection's flattened kernel. :func:`patchify` computes it with a reshape (exact,
  no resampling).
- ``norm_pix_loss``: each patch's target is ``(x - mean) / sqrt(var + 1e-6)`` with the
  mean and the (unbiased, as in the public code) variance over that patch's values.
- In 1D a signal's length beyond ``num_windows * patch_size`` is ignored, as by the
  patch projection.

Config: ``mask_ratio=0.75``, ``decoder_dim=512``, ``decoder_depth=8``,
``decoder_heads=16``, ``decoder_mlp_ratio=4.0``, ``norm_pix_loss=True``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from .base import PretrainMethod

__all__ = ["MAE", "sincos_pos_embed_1d", "sincos_pos_embed_2d", "grid_sincos_pos_embed",
           "set_fixed_sincos_pos_embed", "random_masking", "num_kept", "patchify",
           "normalize_patches", "masked_mse", "build_decoder_blocks"]


# ----------------------------------------------------------------------- sin-cos tables

def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(M,)`` positions -> ``(M, dim)``: ``[sin(p * w_k) | cos(p * w_k)]``, k < dim/2."""
    if dim % 2:
        raise ValueError(f"1D sin-cos embedding needs an even width, got {dim}")
    half = dim // 2
    freq = torch.arange(half, dtype=torch.float64) / half
    omega = 1.0 / (10000.0 ** freq)                                   # (dim/2,)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega[None]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """``(grid_h * grid_w, dim)`` row-major; first half encodes y, second half x."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs a width divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb_y = sincos_pos_embed_1d(dim // 2, ys.reshape(-1))
    emb_x = sincos_pos_embed_1d(dim // 2, xs.reshape(-1))
    return torch.cat([emb_y, emb_x], dim=1)


def grid_sincos_pos_embed(dim: int, grid_size: tuple[int, ...],
                          cls_token: bool = False) -> torch.Tensor:
    """Sin-cos table of a grid (1 or 2 sizes) as ``(1, [1 +] N, dim)``; [CLS] entry zero."""
    if len(grid_size) == 1:
        table = sincos_pos_embed_1d(dim, torch.arange(int(grid_size[0])))
    elif len(grid_size) == 2:
        table = sincos_pos_embed_2d(dim, int(grid_size[0]), int(grid_size[1]))
    else:
        raise ValueError(f"grid_size must have 1 or 2 entries, got {grid_size}")
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table], dim=0)
    return table.unsqueeze(0)


def set_fixed_sincos_pos_embed(encoder) -> None:
    """Overwrite the encoder's ``pos_embed`` with fixed sin-cos values and freeze it."""
    if encoder.pos_embed is None:
        raise ValueError("the encoder has no pos_embed (build it with pos_embed='learn')")
    n_prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
    if n_prefix > 1:
        raise ValueError("only a single [CLS] prefix token is supported")
    table = grid_sincos_pos_embed(encoder.embed_dim, tuple(encoder.patch_embed.grid_size),
                                  cls_token=n_prefix == 1)
    if table.shape != encoder.pos_embed.shape:
        raise ValueError(f"sin-cos table {tuple(table.shape)} does not match pos_embed "
                         f"{tuple(encoder.pos_embed.shape)}")
    with torch.no_grad():
        encoder.pos_embed.copy_(table)
    encoder.pos_embed.requires_grad_(False)


# ----------------------------------------------------------------------- masking

def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Visible tokens: ``N - round(mask_ratio * N)``, at least one."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = num_tokens - int(round(mask_ratio * num_tokens))
    if keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible token out of {num_tokens}")
    return keep


def random_masking(batch_size: int, num_tokens: int, mask_ratio: float, device=None,
                   generator: torch.Generator | None = None):
    """Per-sample random subset of visible tokens (argsort of uniform noise).

    Returns ``(ids_keep (B, K), mask (B, N) float with 1 = masked, ids_restore (B, N))``
    where ``K = N - round(mask_ratio * N)``; ``ids_restore`` undoes the shuffle (visible
    tokens first, then masked ones) back to grid order.
    """
    keep = num_kept(num_tokens, mask_ratio)
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch_size, num_tokens, device=noise.device)
    mask[:, :keep] = 0.0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x (B, N, ...)`` rows ``ids (B, K)`` -> ``(B, K, ...)``."""
    idx = ids.reshape(*ids.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, idx)


# ----------------------------------------------------------------------- targets, loss

def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Grid patches, C-major within a patch: ``(B, C, H, W)`` -> ``(B, N, C, P, P)``,
    ``(B, C, T)`` -> ``(B, N, C, P)``; row-major patch order (timm's)."""
    p = patch_size
    if images.dim() == 4:
        b, c, h, w = images.shape
        gh, gw = h // p, w // p
        x = images[:, :, :gh * p, :gw * p].reshape(b, c, gh, p, gw, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, p, p)
    if images.dim() == 3:
        b, c, t = images.shape
        n = t // p
        x = images[:, :, :n * p].reshape(b, c, n, p)
        return x.permute(0, 2, 1, 3)
    raise ValueError(f"expected (B, C, H, W) or (B, C, T) input, got shape {tuple(images.shape)}")


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation over the last dim (mean, unbiased variance, ``eps``)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches (``mask`` 1) of the per-patch mean squared error."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def build_decoder_blocks(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> nn.Sequential:
    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(*[Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm)
                           for _ in range(depth)])


def init_linear_and_norm(module: nn.Module) -> None:
    """Xavier-uniform linear weights, zero biases, unit LayerNorms (the MAE init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------- the method

class MAE(PretrainMethod):
    pretrain_pos_embed = True

    def __init__(self, encoder: dict, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, decoder_mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True):
        super().__init__(encoder)
        enc = self.encoder
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
