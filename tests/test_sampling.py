"""Box sampling and batched extraction against a naive per-patch reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from methods.backbone import build_encoder
from methods.sampling import (box_centres, extract_patches, extract_windows, grid_boxes,
                              grid_windows, sample_offgrid_boxes, sample_offgrid_windows,
                              sample_scale_aspect_boxes)


def naive_crop_resize(image, box, out_size, ratio):
    """One box at a time: bilinear samples on a ratio x ratio sub-grid of every output
    bin (pixel-centre convention), averaged; computed with grid_sample, not roi_align."""
    c, h, w = image.shape
    x0, y0, bw, bh = [float(v) for v in box]
    sub = (torch.arange(ratio, dtype=torch.float64) + 0.5) / ratio
    u = (torch.arange(out_size, dtype=torch.float64)[:, None] + sub[None]).reshape(-1)
    xs = x0 + u * bw / out_size - 0.5
    ys = y0 + u * bh / out_size - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx / (w - 1) * 2 - 1, gy / (h - 1) * 2 - 1], dim=-1)[None]
    samples = F.grid_sample(image[None].double(), grid, mode="bilinear",
                            padding_mode="border", align_corners=True)[0]
    return samples.view(c, out_size, ratio, out_size, ratio).mean(dim=(2, 4)).to(image.dtype)


@pytest.mark.parametrize("sampler", ["offgrid", "scale_aspect"])
def test_batched_extraction_matches_naive_reference(sampler):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 20, 24, generator=g)
    if sampler == "offgrid":
        boxes = sample_offgrid_boxes(3, 7, (20, 24), box_size=6, generator=g)
    else:
        boxes = sample_scale_aspect_boxes(3, 7, (20, 24), patch_size=5, generator=g)
    out = extract_patches(images, boxes, 5)
    ratio = math.ceil(float(boxes[..., 2:].max()) / 5)
    assert out.shape == (3, 7, 3, 5, 5)
    for b in range(3):
        for n in range(7):
            ref = naive_crop_resize(images[b], boxes[b, n], 5, ratio)
            torch.testing.assert_close(out[b, n], ref, atol=1e-5, rtol=1e-5)


def test_integer_box_of_patch_size_is_an_exact_crop():
    images = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[[3.0, 5.0, 4.0, 4.0]], [[0.0, 12.0, 4.0, 4.0]]])
    out = extract_patches(images, boxes, 4)
    torch.testing.assert_close(out[0, 0], images[0, :, 5:9, 3:7])
    torch.testing.assert_close(out[1, 0], images[1, :, 12:16, 0:4])


def test_boxes_stay_inside_the_image():
    g = torch.Generator().manual_seed(1)
    for boxes in (sample_offgrid_boxes(16, 64, (32, 40), 4, generator=g),
                  sample_scale_aspect_boxes(16, 64, (32, 40), 4, generator=g)):
        assert (boxes[..., :2] >= 0).all()
        assert (boxes[..., 0] + boxes[..., 2] <= 40 + 1e-4).all()
        assert (boxes[..., 1] + boxes[..., 3] <= 32 + 1e-4).all()
    sa = sample_scale_aspect_boxes(16, 64, (32, 40), 4, generator=g)
    assert sa[..., 2:].min() >= 2 - 1e-6 and sa[..., 2:].max() <= 8 + 1e-6
    # off-grid positions are continuous and cover the whole range
    off = sample_offgrid_boxes(64, 64, (32, 32), 4, generator=g)
    assert off[..., 0].min() < 1 and off[..., 0].max() > 27
    assert (off[..., 0] != off[..., 0].round()).float().mean() > 0.9


def test_grid_mode_reproduces_vit_patchification():
    enc = build_encoder("vit_micro", img_size=32, patch_size=4)
    images = torch.randn(2, 3, 32, 32)
    boxes = grid_boxes(2, (32, 32), 4)
    assert boxes.shape == (2, 64, 4)
    ours = enc.embed_patches(extract_patches(images, boxes, 4))
    timm_tokens = enc.patch_embed(images)
    torch.testing.assert_close(ours, timm_tokens, atol=1e-5, rtol=1e-5)
    # centres of the grid, row-major
    torch.testing.assert_close(box_centres(boxes[0, :2]), torch.tensor([[2.0, 2.0], [6.0, 2.0]]))


def test_windows_1d_match_reference_and_grid():
    g = torch.Generator().manual_seed(2)
    signals = torch.randn(2, 3, 50, generator=g)
    wins = sample_offgrid_windows(2, 6, 50, 10, generator=g)
    out = extract_windows(signals, wins, 10)
    assert out.shape == (2, 6, 3, 10)
    for b in range(2):
        for n in range(6):
            t = wins[b, n, 0] + torch.arange(10) + 0.5 - 0.5   # sample centres, pixel convention
            lo = t.floor().long().clamp(0, 49)
            hi = (lo + 1).clamp(max=49)
            frac = t - t.floor()
            ref = signals[b][:, lo] * (1 - frac) + signals[b][:, hi] * frac
            torch.testing.assert_close(out[b, n], ref, atol=1e-5, rtol=1e-5)
    grid = extract_windows(signals, grid_windows(2, 50, 10), 10)
    torch.testing.assert_close(grid, signals.view(2, 3, 5, 10).permute(0, 2, 1, 3))
