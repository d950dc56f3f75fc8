"""ViTDet's attention, against a computation written out by hand: the decomposed
relative position terms (with non-zero tables, on a grid whose height and width differ,
so that a swapped axis or a reversed offset shows), window attention that cannot see
across windows, and global attention that can."""
import math
from pathlib import Path

import pytest
import torch

from timm.models.vision_transformer_sam import Attention as SamAttention

from tasks.vitdet import ViTDetBackbone, ViTDetBlock

DIM, HEADS = 12, 2


def naive_rel_pos_attention(attn: SamAttention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head attention over the ``(H, W)`` grid of ``x`` (B, H, W, C), one query i and
    key j at a time: logit = q_i . k_j / sqrt(d) + q_i . R_h[h_i - h_j + H - 1]
    + q_i . R_w[w_i - w_j + W - 1], softmax over j, then the output projection."""
    b, h, w, c = x.shape
    d = c // HEADS
    qkv = x.reshape(b, h * w, c) @ attn.qkv.weight.t() + attn.qkv.bias  # (B, N, 3C)
    q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
    rh, rw = attn.rel_pos_h, attn.rel_pos_w  # (2H - 1, d), (2W - 1, d)
    pos = [(i // w, i % w) for i in range(h * w)]  # row-major token order
    out = torch.zeros(b, h * w, c)
    for n in range(b):
        for head in range(HEADS):
            sl = slice(head * d, (head + 1) * d)
            for i, (hi, wi) in enumerate(pos):
                qi = q[n, i, sl]
                logits = torch.stack([
                    qi @ k[n, j, sl] / math.sqrt(d) + qi @ rh[hi - hj + h - 1] + qi @ rw[wi - wj + w - 1]
                    for j, (hj, wj) in enumerate(pos)])
                weights = torch.softmax(logits, dim=0)
                out[n, i, sl] = sum(weights[j] * v[n, j, sl] for j in range(h * w))
    return (out @ attn.proj.weight.t() + attn.proj.bias).reshape(b, h, w, c)


@pytest.mark.parametrize("grid", [(3, 5), (4, 4)])
def test_relative_position_attention_equals_the_hand_computation(grid):
    torch.manual_seed(0)
    attn = SamAttention(DIM, HEADS, use_rel_pos=True, input_size=grid).eval()  # the block's
    with torch.no_grad():  # non-zero, asymmetric tables: a reversed offset or swapped axis shows
        attn.rel_pos_h.normal_(0, 1.0)
        attn.rel_pos_w.normal_(0, 1.0)
    x = torch.randn(2, *grid, DIM)
    with torch.no_grad():
        got = attn(x)
        want = naive_rel_pos_attention(attn, x)
        assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
        # and the relative terms matter: without them the output differs
        attn.rel_pos_h.zero_()
        attn.rel_pos_w.zero_()
        assert not torch.allclose(attn(x), want, atol=1e-3)


def _block(window_size: int) -> ViTDetBlock:
    torch.manual_seed(0)
    blk = ViTDetBlock(DIM, HEADS, window_size=window_size, grid=(8, 8)).eval()
    with torch.no_grad():
        blk.attn.rel_pos_h.normal_()
        blk.attn.rel_pos_w.normal_()
    return blk


@pytest.mark.parametrize("size", [(8, 8), (6, 7)])  # 6 x 7: windows padded to 8 x 8
def test_window_attention_cannot_see_across_windows(size):
    blk = _block(window_size=4)
    h, w = size
    x = torch.randn(1, h, w, DIM)
    y = x.clone()
    y[0, 1, 2] += torch.randn(DIM)  # a token of the top-left window (rows 0-3, cols 0-3)
    with torch.no_grad():
        a, b = blk(x), blk(y)
    in_window = torch.zeros(h, w, dtype=torch.bool)
    in_window[:4, :4] = True
    changed = (a - b).abs().amax(-1)[0] > 0
    assert torch.equal(a[0][~in_window], b[0][~in_window])  # every other window: bit for bit
    assert changed[:4, :4].sum() == 16  # every token of its own window sees it


def test_global_attention_sees_every_token():
    blk = _block(window_size=0)
    x = torch.randn(1, 8, 8, DIM)
    y = x.clone()
    y[0, 1, 2] += torch.randn(DIM)  # not a constant shift, which the LayerNorm would remove
    with torch.no_grad():
        changed = (blk(x) - blk(y)).abs().amax(-1)[0] > 0
    assert bool(changed.all())


def test_state_dict_keeps_vitdet_names_and_table_sizes():
    """Checkpoints of earlier runs load: the relative tables are ``attn.rel_pos_h`` /
    ``attn.rel_pos_w``, sized 2 * window - 1 in windowed blocks and 2 * grid - 1 in
    global ones, one row per head dimension."""
    backbone = ViTDetBackbone(arch="vit_micro", img_size=96, patch_size=8, pretrain_img_size=64,
                              window_size=4, global_blocks=(3,), drop_path_rate=0.0)
    sd = backbone.state_dict()
    head_dim = 96 // 3  # vit_micro: width 96, 3 heads
    for i in range(4):
        side = 2 * 12 - 1 if i == 3 else 2 * 4 - 1  # grid 96 / 8 = 12
        assert sd[f"blocks.{i}.attn.rel_pos_h"].shape == (side, head_dim)
        assert sd[f"blocks.{i}.attn.rel_pos_w"].shape == (side, head_dim)
    assert {k.split(".", 2)[-1] for k in sd if k.startswith("blocks.0.")} == {
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "attn.rel_pos_h", "attn.rel_pos_w", "norm2.weight", "norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}


def test_a_backbone_saved_before_timms_parts_loads_and_computes_the_same():
    """tests/data/vitdet_backbone_2026-12-05.pt: a small backbone's weights, an input
    (a non-square grid that windows must pad) and its output, saved by the code before
    the blocks were built from timm's attention and patch embedding."""
    saved = torch.load(Path(__file__).parent / "data" / "vitdet_backbone_2026-12-05.pt",
                       weights_only=True)
    model = ViTDetBackbone(**saved["config"]).eval()
    assert set(model.state_dict()) == set(saved["state_dict"])
    model.load_state_dict(saved["state_dict"], strict=True)
    with torch.no_grad():
        out = model(saved["input"])[0]
    assert torch.allclose(out, saved["output"], atol=1e-5), float((out - saved["output"]).abs().max())
