"""PART: pairwise relative translations between off-grid patches (the paper, section 3).

Per image and iteration: sample N boxes (``sampling``), cut each out and resize it to
the ViT patch size P, embed the N patches *without* position embeddings, pick
``num_pairs`` random (reference, target) index pairs, and regress

    eq. 1:  dx = (x_tgt - x_ref) / w_ref,   dy = (y_tgt - y_ref) / h_ref

with centres (x, y) and the reference box's width/height, by MSE (eq. 4). With
``sampling='scale_aspect'`` box sides are drawn in [P/2, 2P] and the target adds
eq. 5's ``dw = w_tgt / w_ref`` and ``dh = h_tgt / h_ref`` (``scale_target='log'``
regresses their logarithms instead, a choice the paper leaves open; the default
follows eq. 5 literally).

Config values, not copies:
- ``sampling='grid'`` is PART-grid (the paper's ablation): the ViT's own grid, in a
  random token order per image, so no head can read positions off the token index;
- ``head`` in {cross_attention, mlp, pairwise_mlp} is Table 5's relative encoder;
- in 1D (``encoder.modality='1d'``) boxes are windows along time and the target is dx.

Choices the paper leaves open (documented, and config values where it matters):
- pairs are drawn per sample without replacement from the N(N-1) ordered pairs with
  ``ref != tgt`` (a pair with itself has target 0); ``pairs_with_replacement=True``
  draws them independently (:func:`sample_pairs`);
- the relative encoder attends over the N patch embeddings (not the [CLS] token);
- pretext errors: ``err_x``/``err_y`` are the mean squared errors of dx/dy and
  ``err_euclid`` the mean Euclidean distance between predicted and true (dx, dy),
  all in units of the reference box size (Table 5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import PretrainMethod
from .heads import build_relative_head
from .sampling import PatchSampler

__all__ = ["PART", "relative_targets", "sample_pairs"]


def sample_pairs(batch_size: int, num_tokens: int, num_pairs: int, device=None,
                 generator: torch.Generator | None = None,
                 replacement: bool = False) -> torch.Tensor:
    """``(B, M, 2)`` random (ref, tgt) token indices with ref != tgt, per sample.

    Without replacement (default): M distinct ordered pairs out of the N(N-1), drawn
    uniformly; when M exceeds N(N-1), every pair appears once per full pass and the
    remainder is a fresh uniform draw (so no pair appears twice more often than
    another). With replacement: M independent uniform draws. The paper leaves this
    open; its counts (4096 on CIFAR's 64 patches, 4802 = 196^2 / 8 on ImageNet) read
    naturally as draws from all ordered pairs, so without replacement is our default.
    """
    total = num_tokens * (num_tokens - 1)
    if total < 1:
        raise ValueError(f"pairs need at least 2 tokens, got {num_tokens}")
    if replacement:
        ref = torch.randint(0, num_tokens, (batch_size, num_pairs), device=device,
                            generator=generator)
        shift = torch.randint(1, num_tokens, (batch_size, num_pairs), device=device,
                              generator=generator)
        return torch.stack([ref, (ref + shift) % num_tokens], dim=-1)
    chunks, left = [], num_pairs
    while left > 0:  # one random order of all pairs per pass, cut to what is left
        take = min(left, total)
        noise = torch.rand(batch_size, total, device=device, generator=generator)
        chunks.append(noise.topk(take, dim=1).indices if take < total else noise.argsort(1))
        left -= take
    index = torch.cat(chunks, dim=1)
    ref = index // (num_tokens - 1)
    rest = index % (num_tokens - 1)
    tgt = rest + (rest >= ref).long()  # skip the diagonal
    return torch.stack([ref, tgt], dim=-1)


def relative_targets(boxes: torch.Tensor, pairs: torch.Tensor, with_scale: bool = False,
                     scale_target: str = "ratio") -> torch.Tensor:
    """Eq. 1 (and eq. 5 with ``with_scale``) for every pair.

    boxes ``(B, N, 2k)``: k start coordinates then k sizes (k = 2 for image boxes
    ``(x0, y0, w, h)``, k = 1 for windows ``(t0, length)``); pairs ``(B, M, 2)``.
    Returns ``(B, M, k)`` translations, or ``(B, M, 2k)`` with the size ratios appended.
    """
    k = boxes.shape[-1] // 2
    ref = torch.gather(boxes, 1, pairs[..., 0:1].expand(-1, -1, 2 * k))
    tgt = torch.gather(boxes, 1, pairs[..., 1:2].expand(-1, -1, 2 * k))
    ref_size, tgt_size = ref[..., k:], tgt[..., k:]
    ref_centre = ref[..., :k] + ref_size / 2
    tgt_centre = tgt[..., :k] + tgt_size / 2
    shift = (tgt_centre - ref_centre) / ref_size
    if not with_scale:
        return shift
    ratio = tgt_size / ref_size
    if scale_target == "log":
        ratio = ratio.log()
    elif scale_target != "ratio":
        raise ValueError(f"scale_target must be 'ratio' or 'log', got {scale_target!r}")
    return torch.cat([shift, ratio], dim=-1)


class PART(PretrainMethod):
    pretrain_pos_embed = False
    version = 2  # pairs without replacement by default

    def __init__(self, encoder: dict, num_pairs: int = 2048, sampling: str = "offgrid",
                 box_size: float | None = None, num_patches: int | None = None,
                 head: str = "cross_attention", head_num_heads: int = 1,
                 scale_target: str = "ratio", pairs_with_replacement: bool = False):
        super().__init__(encoder)
        enc = self.encoder
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
        self.sampling = sampling
        self.patch_size = enc.patch_size
        self.box_size = box_size or self.patch_size
        self.num_patches = num_patches or enc.num_patches  # N = HW / P^2 by default
        if sampling == "grid" and self.num_patches != enc.num_patches:
            raise ValueError(f"grid sampling has {enc.num_patches} patches, num_patches={num_patches}")
        self.sampler = PatchSampler(enc.modality, sampling, self.patch_size, self.num_patches,
                                    self.box_size)
        self.num_pairs = num_pairs
        self.pairs_with_replacement = bool(pairs_with_replacement)
        self.with_scale = sampling == "scale_aspect"
        self.scale_target = scale_target
        k = self.sampler.coord_dims
        self.target_dim = 2 * k if self.with_scale else k
        self.head = build_relative_head(head, enc.embed_dim, self.target_dim, self.num_patches,
                                        num_heads=head_num_heads)

    # -------------------------------------------------------------------- sampling
    def sample_boxes(self, samples: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sampler.sample(samples, generator)

    def sample_pairs(self, batch_size: int, num_tokens: int, device=None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_pairs(batch_size, num_tokens, self.num_pairs, device, generator,
                            self.pairs_with_replacement)

    def extract(self, samples: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.sampler.extract(samples, boxes)

    # -------------------------------------------------------------------- model
    def embed(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Patch embeddings X' (B, N, d) of the boxes, no position embeddings."""
        tokens = self.encoder.embed_patches(self.extract(images, boxes))
        return self.encoder.forward_tokens(tokens)[:, 1:]

    def predict(self, images: torch.Tensor, boxes: torch.Tensor,
                pairs: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images, boxes), pairs)

    def targets(self, boxes: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return relative_targets(boxes, pairs, self.with_scale, self.scale_target)

    def forward(self, images: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        boxes = self.sample_boxes(images, generator)
        pairs = self.sample_pairs(images.shape[0], boxes.shape[1], images.device, generator)
        pred = self.predict(images, boxes, pairs)
        target = self.targets(boxes, pairs)
        loss = F.mse_loss(pred.float(), target)  # eq. 4: mean over pairs and coordinates
        return {"loss": loss, **self.errors(pred.detach().float(), target)}

    def errors(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Table 5's pretext errors, on the translation part of the target."""
        k = self.sampler.coord_dims
        diff = pred[..., :k] - target[..., :k]
        out = {"err_x": diff[..., 0].pow(2).mean()}
        if k == 2:
            out["err_y"] = diff[..., 1].pow(2).mean()
        out["err_euclid"] = diff.norm(dim=-1).mean()
        return out

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def pretext_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions and targets of one held-out batch (the caller fixes the RNG)."""
        boxes = self.sample_boxes(images)
        pairs = self.sample_pairs(images.shape[0], boxes.shape[1], images.device)
        pred = self.predict(images, boxes, pairs).float()
        return {"pred": pred.flatten(0, 1), "target": self.targets(boxes, pairs).flatten(0, 1)}

    def summarize_pretext(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Table 5's errors over a whole held-out set, beside the best constant predictor.

        The constant that minimises the mean Euclidean error is the geometric median of
        the true translations (Weiszfeld's iteration); a model that learned nothing
        from the pixels cannot beat it.
        """
        pred, target = outputs["pred"], outputs["target"]
        k = self.sampler.coord_dims
        out = {name: float(v) for name, v in self.errors(pred, target).items()}
        shift = target[:, :k].double()
        median = shift.mean(0)
        for _ in range(100):
            w = 1.0 / (shift - median).norm(dim=-1).clamp_min(1e-9)
            median = (w[:, None] * shift).sum(0) / w.sum()
        out["const_err_euclid"] = float((shift - median).norm(dim=-1).mean())
        out["num_pairs_evaluated"] = int(pred.shape[0])
        return out

    @torch.no_grad()
    def pair_matrices(self, images: torch.Tensor,
                      boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted and true targets for all N x N pairs: two ``(B, N, N, out)`` tensors."""
        b, n = boxes.shape[:2]
        i, j = torch.meshgrid(torch.arange(n, device=boxes.device),
                              torch.arange(n, device=boxes.device), indexing="ij")
        pairs = torch.stack([i.reshape(-1), j.reshape(-1)], -1).unsqueeze(0).expand(b, -1, -1)
        pred = self.predict(images, boxes, pairs).view(b, n, n, -1)
        true = self.targets(boxes, pairs).view(b, n, n, -1)
        return pred, true
