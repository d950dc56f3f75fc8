"""Where patches come from, and how they are cut out.

A box is ``(x0, y0, w, h)`` in pixel units of the image it was sampled from, with the
image occupying ``[0, W] x [0, H]`` (pixel ``k`` covers ``[k, k + 1)``). Its centre is
``(x0 + w / 2, y0 + h / 2)``. Boxes of a batch are one ``(B, N, 4)`` float tensor on the
batch's device; nothing here loops in Python over images or patches.

1D windows are ``(t0, length)`` along the time axis, ``(B, N, 2)``.

Extraction resizes every box to ``P x P`` (or every window to ``L`` samples) with one
``torchvision.ops.roi_align`` call per batch: each output pixel is the average of
bilinear samples on a regular sub-grid of its bin (``ceil(box / P)`` samples per side,
so a box larger than P is averaged, not aliased). A box of side P on integer
coordinates reproduces the ViT's own patchification exactly.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

__all__ = [
    "sample_offgrid_boxes",
    "grid_boxes",
    "sample_scale_aspect_boxes",
    "sample_boxes",
    "extract_patches",
    "box_centres",
    "sample_offgrid_windows",
    "grid_windows",
    "extract_windows",
    "SAMPLING_MODES",
    "PatchSampler",
    "shuffle_boxes",
]

SAMPLING_MODES = ("offgrid", "grid", "scale_aspect")


def _uniform(shape, low, high, generator, device):
    u = torch.rand(shape, generator=generator, device=device)
    return low + u * (high - low)


def sample_offgrid_boxes(batch_size: int, num_boxes: int, image_size: tuple[int, int],
                         box_size: float, generator: torch.Generator | None = None,
                         device=None) -> torch.Tensor:
    """Square boxes of side ``box_size`` at uniformly random continuous positions.

    Positions are independent per box and per image, so boxes may overlap and parts
    of the image stay uncovered (PART's built-in masking, paper section 3.1).
    """
    h, w = image_size
    if box_size > min(h, w):
        raise ValueError(f"box_size {box_size} does not fit in an image of {h}x{w}")
    shape = (batch_size, num_boxes)
    x0 = _uniform(shape, 0.0, w - box_size, generator, device)
    y0 = _uniform(shape, 0.0, h - box_size, generator, device)
    side = torch.full(shape, float(box_size), device=x0.device)
    return torch.stack([x0, y0, side, side], dim=-1)


def grid_boxes(batch_size: int, image_size: tuple[int, int], patch_size: int,
               device=None) -> torch.Tensor:
    """The ViT's fixed grid, row-major (the order timm's patch embedding uses)."""
    h, w = image_size
    gh, gw = h // patch_size, w // patch_size
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device),
                            indexing="ij")
    x0 = (xs.reshape(-1) * patch_size).float()
    y0 = (ys.reshape(-1) * patch_size).float()
    side = torch.full_like(x0, float(patch_size))
    boxes = torch.stack([x0, y0, side, side], dim=-1)
    return boxes.unsqueeze(0).expand(batch_size, -1, -1).contiguous()


def sample_scale_aspect_boxes(batch_size: int, num_boxes: int, image_size: tuple[int, int],
                              patch_size: int, min_scale: float = 0.5, max_scale: float = 2.0,
                              generator: torch.Generator | None = None,
                              device=None) -> torch.Tensor:
    """Boxes whose width and height are drawn independently in ``[P/2, 2P]`` (eq. 5)."""
    h, w = image_size
    shape = (batch_size, num_boxes)
    lo, hi = min_scale * patch_size, min(max_scale * patch_size, h, w)
    bw = _uniform(shape, lo, hi, generator, device)
    bh = _uniform(shape, lo, hi, generator, device)
    x0 = torch.rand(shape, generator=generator, device=device) * (w - bw)
    y0 = torch.rand(shape, generator=generator, device=device) * (h - bh)
    return torch.stack([x0, y0, bw, bh], dim=-1)


def sample_boxes(mode: str, batch_size: int, num_boxes: int, image_size: tuple[int, int],
                 patch_size: int, box_size: float | None = None,
                 generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Dispatch on a sampling mode name (a config value of the methods)."""
    if mode == "offgrid":
        return sample_offgrid_boxes(batch_size, num_boxes, image_size, box_size or patch_size,
                                    generator, device)
    if mode == "grid":
        boxes = grid_boxes(batch_size, image_size, patch_size, device)
        if boxes.shape[1] != num_boxes:
            raise ValueError(f"grid sampling gives {boxes.shape[1]} boxes, config asks {num_boxes}")
        return boxes
    if mode == "scale_aspect":
        return sample_scale_aspect_boxes(batch_size, num_boxes, image_size, patch_size,
                                         generator=generator, device=device)
    raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")


def shuffle_boxes(boxes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random token order per sample: ``(B, N, k)`` rows permuted along N."""
    order = torch.rand(boxes.shape[:2], device=boxes.device, generator=generator).argsort(1)
    return torch.gather(boxes, 1, order[..., None].expand_as(boxes))


class PatchSampler:
    """Where a method's patches come from, chosen once from (modality, mode).

    ``sample(x, generator)`` gives the boxes of a batch (``(B, N, 4)`` image boxes or
    ``(B, N, 2)`` windows); ``extract(x, boxes)`` cuts them out at the patch size;
    ``coord_dims`` is 2 for images, 1 for signals. Grid modes return the ViT's own grid
    in a random token order per sample, so no head can read positions off the index.
    """

    def __init__(self, modality: str, mode: str, patch_size: int, num_boxes: int,
                 box_size: float | None = None):
        if mode not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
        if modality == "1d" and mode == "scale_aspect":
            raise ValueError("scale_aspect sampling is defined for 2D images only")
        self.modality, self.mode = modality, mode
        self.patch_size, self.num_boxes = int(patch_size), int(num_boxes)
        self.box_size = float(box_size or patch_size)
        self.coord_dims = 1 if modality == "1d" else 2
        samplers = {("2d", "offgrid"): self._boxes_offgrid, ("2d", "grid"): self._boxes_grid,
                    ("2d", "scale_aspect"): self._boxes_scale_aspect,
                    ("1d", "offgrid"): self._windows_offgrid, ("1d", "grid"): self._windows_grid}
        self.sample = samplers[(modality, mode)]

    # 2D
    def _boxes_offgrid(self, x, generator=None):
        return sample_offgrid_boxes(x.shape[0], self.num_boxes, tuple(x.shape[-2:]),
                                    self.box_size, generator, x.device)

    def _boxes_grid(self, x, generator=None):
        boxes = grid_boxes(x.shape[0], tuple(x.shape[-2:]), self.patch_size, x.device)
        if boxes.shape[1] != self.num_boxes:
            raise ValueError(f"grid sampling gives {boxes.shape[1]} boxes, config asks "
                             f"{self.num_boxes}")
        return shuffle_boxes(boxes, generator)

    def _boxes_scale_aspect(self, x, generator=None):
        return sample_scale_aspect_boxes(x.shape[0], self.num_boxes, tuple(x.shape[-2:]),
                                         self.patch_size, generator=generator, device=x.device)

    # 1D
    def _windows_offgrid(self, x, generator=None):
        return sample_offgrid_windows(x.shape[0], self.num_boxes, x.shape[-1], self.box_size,
                                      generator, x.device)

    def _windows_grid(self, x, generator=None):
        return shuffle_boxes(grid_windows(x.shape[0], x.shape[-1], self.patch_size, x.device),
                             generator)

    def largest_side(self, x: torch.Tensor) -> float:
        """The largest box side (or window length) this sampler draws for ``x``, known
        without reading the boxes: ``box_size`` off the grid, the patch size on it, and
        ``min(2P, H, W)`` for scale/aspect boxes (the bound of eq. 5's draw)."""
        if self.mode == "scale_aspect":
            return float(min(2.0 * self.patch_size, *x.shape[-2:]))
        return self.box_size if self.mode == "offgrid" else float(self.patch_size)

    def extract(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Cut out ``boxes`` drawn by this sampler. roi_align's sub-sampling follows
        :meth:`largest_side` rather than the boxes' actual maximum, which a GPU would have
        to hand to the host in every step. Off and on the grid the two are the same
        number; for scale/aspect boxes they give the same ratio (2) unless every box of
        the batch is at most P wide and high."""
        largest = self.largest_side(x)
        if self.modality == "1d":
            return extract_windows(x, boxes, self.patch_size, largest)
        return extract_patches(x, boxes, self.patch_size, largest)


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` boxes -> ``(..., 2)`` centres ``(x, y)``."""
    return boxes[..., :2] + boxes[..., 2:] / 2


def _sampling_ratio(boxes: torch.Tensor, out_size: int, largest: float | None = None) -> int:
    # One ratio for the whole batch (roi_align takes a scalar): enough sub-samples for
    # the largest box, so a box bigger than the output is averaged rather than aliased.
    # ``largest`` None: read from the boxes (a host read of a device value).
    if largest is None:
        largest = float(boxes[..., 2:].max()) if boxes.numel() else out_size
    return max(1, math.ceil(largest / out_size))


def _rois(boxes: torch.Tensor) -> torch.Tensor:
    """``(B, N, 4)`` boxes -> ``(B*N, 5)`` rows ``(image index, x1, y1, x2, y2)`` for roi_align."""
    b, n, _ = boxes.shape
    xyxy = torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], dim=-1)
    index = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(n)
    return torch.cat([index[:, None], xyxy.reshape(b * n, 4)], dim=1)


def extract_patches(images: torch.Tensor, boxes: torch.Tensor, patch_size: int,
                    largest: float | None = None) -> torch.Tensor:
    """Cut every box out of its image and resize it to ``patch_size``: one batched call.

    images ``(B, C, H, W)``, boxes ``(B, N, 4)`` -> patches ``(B, N, C, P, P)``.
    ``largest``: the largest box side, when the caller knows it (else read from ``boxes``).
    """
    b, n, _ = boxes.shape
    out = roi_align(images, _rois(boxes).to(images.dtype), output_size=patch_size,
                    spatial_scale=1.0, sampling_ratio=_sampling_ratio(boxes, patch_size, largest),
                    aligned=True)
    return out.view(b, n, images.shape[1], patch_size, patch_size)


# ---------------------------------------------------------------------------- 1D signals

def sample_offgrid_windows(batch_size: int, num_windows: int, length: int, window: float,
                           generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Windows of ``window`` samples at uniformly random continuous starts: ``(B, N, 2)``."""
    if window > length:
        raise ValueError(f"window {window} longer than the signal ({length} samples)")
    t0 = _uniform((batch_size, num_windows), 0.0, length - window, generator, device)
    return torch.stack([t0, torch.full_like(t0, float(window))], dim=-1)


def grid_windows(batch_size: int, length: int, window: int, device=None) -> torch.Tensor:
    """Consecutive non-overlapping windows, in time order."""
    t0 = torch.arange(length // window, device=device).float() * window
    wins = torch.stack([t0, torch.full_like(t0, float(window))], dim=-1)
    return wins.unsqueeze(0).expand(batch_size, -1, -1).contiguous()


def extract_windows(signals: torch.Tensor, windows: torch.Tensor, window: int,
                    largest: float | None = None) -> torch.Tensor:
    """signals ``(B, C, T)``, windows ``(B, N, 2)`` -> ``(B, N, C, window)``.

    The 1D analogue of :func:`extract_patches`: a signal is an image of height 1 and a
    window a box of height 1, so the same batched resampling applies. ``largest``: the
    longest window, when the caller knows it (else read from ``windows``).
    """
    b, n, _ = windows.shape
    zeros = torch.zeros_like(windows[..., :1])
    ones = torch.ones_like(windows[..., :1])
    boxes = torch.cat([windows[..., :1], zeros, windows[..., 1:], ones], dim=-1)
    if largest is None:
        largest = float(windows[..., 1].max()) if windows.numel() else window
    ratio = max(1, math.ceil(largest / window))
    out = roi_align(signals.unsqueeze(2), _rois(boxes).to(signals.dtype), output_size=(1, window),
                    spatial_scale=1.0, sampling_ratio=ratio, aligned=True)
    return out.view(b, n, signals.shape[1], window)
