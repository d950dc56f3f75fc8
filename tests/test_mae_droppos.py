"""MAE and DropPos baselines: masking, targets, losses, schedules, and that they learn."""
import inspect
import math

import pytest
import torch

from methods import METHODS, build_method
from methods.backbone import build_encoder
from methods.droppos import (DropPos, attentive_weights, grid_coordinates, position_loss,
                             smoothed_position_labels)
from methods.layers import gather_tokens, grid_sincos_pos_embed, patchify, random_masking
from methods.layers.init import init_vit_encoder_like_mae
from methods.mae import MAE, masked_mse
from methods.sampling import extract_patches, extract_windows, grid_boxes, grid_windows

ENC = dict(arch="vit_micro", img_size=32, patch_size=4)
ENC_1D = dict(arch="vit_micro", img_size=200, patch_size=10, in_chans=2, modality="1d")
DEC = dict(decoder_dim=64, decoder_depth=1, decoder_heads=4)
N = 64  # 8 x 8 grid


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pixel_mask(mask: torch.Tensor, grid: int = 8, patch: int = 4) -> torch.Tensor:
    """(B, N) patch mask -> (B, 1, H, W) pixel mask."""
    m = mask.view(-1, grid, grid)
    return m.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    a, b = torch.randn(n, 3, 1, 1, generator=g), torch.randn(n, 3, 1, 1, generator=g)
    c = 0.5 * torch.randn(n, 3, 1, 1, generator=g)
    freq = 1 + 2 * torch.rand(n, 1, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, 1, 1, generator=g)
    return a * xx + b * yy + c + 0.5 * torch.sin(freq * math.pi * (xx + yy) + phase)


# ------------------------------------------------------------------------------- MAE

def test_masking_hides_exactly_round_ratio():
    for n, ratio in [(64, 0.75), (10, 0.75), (49, 0.6)]:
        ids_keep, mask, ids_restore = random_masking(5, n, ratio)
        masked = round(ratio * n)
        assert ids_keep.shape == (5, n - masked)
        assert torch.equal(mask.sum(1), torch.full((5,), float(masked)))
        assert (torch.gather(mask, 1, ids_keep) == 0).all()
        # ids_restore undoes the shuffle: visible token j (cell ids_keep[j]) sits at slot j,
        # masked cells at the slots after the visible ones
        keep = n - masked
        assert torch.equal(torch.gather(ids_restore, 1, ids_keep), torch.arange(keep).expand(5, -1))
        assert (ids_restore[mask.bool()] >= keep).all()
    # different images get different masks
    _, mask, _ = random_masking(2, 64, 0.75)
    assert not torch.equal(mask[0], mask[1])
    model = build_method("mae", encoder=ENC, **DEC)
    latent, mask, _ = model.forward_encoder(torch.rand(3, 3, 32, 32))
    assert latent.shape == (3, 1 + 16, 96) and (mask.sum(1) == 48).all()


def test_mae_decoder_puts_each_token_back_at_its_own_cell():
    # identity decoder of the encoder's width, no decoder position table, mask token -1:
    # the output at cell i must be the token that was encoded there, or -1 if masked
    model = build_method("mae", encoder=ENC, decoder_dim=96, decoder_depth=1, decoder_heads=4)
    for name in ("decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred"):
        setattr(model, name, torch.nn.Identity())
    model.decoder_pos_embed.zero_()
    with torch.no_grad():
        model.mask_token.fill_(-1.0)
    g = torch.Generator().manual_seed(3)
    ids_keep, mask, ids_restore = random_masking(4, N, 0.75, generator=g)
    latent = torch.cat([torch.full((4, 1, 96), -7.0),                     # [CLS], dropped
                        ids_keep.float()[..., None].expand(-1, -1, 96)], dim=1)
    with torch.no_grad():
        out = model.forward_decoder(latent, ids_restore)                  # (4, N, 96)
    want = torch.where(mask.bool(), torch.tensor(-1.0), torch.arange(N).float().expand(4, -1))
    assert torch.equal(out, want[..., None].expand(-1, -1, 96))


def test_mae_encoder_sees_only_visible_patches():
    model = build_method("mae", encoder=ENC, **DEC).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        latent, mask, _ = model.forward_encoder(images, torch.Generator().manual_seed(0))
        hidden = pixel_mask(mask)
        noisy = images + 5 * torch.randn_like(images) * hidden
        assert not torch.equal(noisy, images)
        latent2, mask2, _ = model.forward_encoder(noisy, torch.Generator().manual_seed(0))
        assert torch.equal(mask, mask2)
        torch.testing.assert_close(latent2, latent, atol=1e-6, rtol=0)
        # ... while changing one visible patch changes the output
        k = int((mask[0] == 0).nonzero()[0])
        one = torch.zeros_like(mask)
        one[0, k] = 1
        poked = images + pixel_mask(one)
        latent3, _, _ = model.forward_encoder(poked, torch.Generator().manual_seed(0))
        assert (latent3[0] - latent[0]).abs().max() > 1e-3


def test_mae_loss_counts_masked_patches_only():
    model = build_method("mae", encoder=ENC, **DEC)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(images, generator=torch.Generator().manual_seed(1))
        pred, target, mask = model.reconstruct(images, torch.Generator().manual_seed(1))
    assert pred.shape == target.shape == (2, N, 48) and set(out) == {"loss"}
    loss = masked_mse(pred, target, mask)
    torch.testing.assert_close(out["loss"], loss)
    manual = ((pred - target) ** 2).mean(-1)[mask.bool()].mean()
    torch.testing.assert_close(loss, manual)
    visible = (1 - mask)[..., None]
    torch.testing.assert_close(masked_mse(pred, target + 100 * torch.randn_like(target) * visible,
                                          mask), loss)
    torch.testing.assert_close(masked_mse(pred + 100 * torch.randn_like(pred) * visible, target,
                                          mask), loss)
    changed = masked_mse(pred, target + mask[..., None], mask)
    assert abs(float(changed - loss)) > 0.1


def test_norm_pix_target_by_hand():
    images = torch.rand(2, 3, 32, 32)
    model = build_method("mae", encoder=ENC, **DEC)
    target = model.targets(images)
    row, col = 2, 5
    patch = images[1, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4]  # (C, P, P)
    values = patch.reshape(-1)  # C-major
    mean = values.sum() / 48
    var = ((values - mean) ** 2).sum() / 47  # unbiased, as in the public code
    torch.testing.assert_close(target[1, row * 8 + col], (values - mean) / torch.sqrt(var + 1e-6))
    # the raw target follows the model's patch flattening (extract_patches on grid boxes)
    raw = build_method("mae", encoder=ENC, norm_pix_loss=False, **DEC).targets(images)
    cut = extract_patches(images, grid_boxes(2, (32, 32), 4), 4)
    torch.testing.assert_close(raw, cut.flatten(2))
    torch.testing.assert_close(model.encoder.embed_patches(patchify(images, 4)),
                               model.encoder.patch_embed(images), atol=1e-5, rtol=1e-5)
    signals = torch.randn(2, 2, 200)
    torch.testing.assert_close(patchify(signals, 10),
                               extract_windows(signals, grid_windows(2, 200, 10), 10))


def test_pos_embed_is_fixed_sincos():
    for method in ("mae", "droppos"):
        model = build_method(method, encoder=ENC, **DEC)
        pe = model.encoder.pos_embed
        assert not pe.requires_grad
        assert torch.equal(pe[0, 0], torch.zeros(96))
        torch.testing.assert_close(pe, grid_sincos_pos_embed(96, (8, 8), cls_token=True))
        model(torch.rand(2, 3, 32, 32))["loss"].backward()
        assert pe.grad is None
    table = grid_sincos_pos_embed(8, (2, 3))[0]
    # cell (row 1, col 2), timm's layout: [sin(y w) | sin(x w) | cos(y w) | cos(x w)], w = 1, 1/100
    want = [math.sin(1), math.sin(1 / 100), math.sin(2), math.sin(2 / 100),
            math.cos(1), math.cos(1 / 100), math.cos(2), math.cos(2 / 100)]
    torch.testing.assert_close(table[1 * 3 + 2], torch.tensor(want))
    one_d = build_method("mae", encoder=ENC_1D, **DEC).encoder.pos_embed
    torch.testing.assert_close(one_d, grid_sincos_pos_embed(96, (20,), cls_token=True))


def test_mae_reconstructs_smooth_images():
    torch.manual_seed(0)
    model = build_method("mae", encoder=ENC, **DEC)
    images = smooth_images(16)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(150):
        loss = model(images, generator=torch.Generator().manual_seed(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < first / 3, (first, last)
    model.eval()
    summary = model.summarize_pretext(model.pretext_outputs(images))
    assert summary["num_images_evaluated"] == 16
    assert summary["recon_mse"] < 0.5 * summary["zero_mse"], summary


def test_mae_1d():
    model = build_method("mae", encoder=ENC_1D, **DEC)
    signals = torch.randn(3, 2, 200)
    out = model(signals)
    assert torch.isfinite(out["loss"])
    pred, target, mask = model.reconstruct(signals)
    assert pred.shape == target.shape == (3, 20, 2 * 10)
    assert (mask.sum(1) == 15).all()
    out["loss"].backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None


# ------------------------------------------------------------------------------- DropPos

def test_position_loss_counts_dropped_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 10)
    labels = torch.randn(2, 6, 10).softmax(-1)
    dropped = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    weights = torch.rand(2, 6) + 0.5
    for w in (None, weights):
        loss = position_loss(logits, labels, dropped, w)
        ce = -(labels * logits.log_softmax(-1)).sum(-1)
        ww = torch.ones(2, 6) if w is None else w
        torch.testing.assert_close(loss, (ce * ww)[dropped].sum() / ww[dropped].sum())
        junk_w = None if w is None else torch.where(dropped, w, 1e3 * torch.rand(2, 6))
        torch.testing.assert_close(position_loss(logits, labels, dropped, junk_w), loss)
        other = (~dropped)[..., None]
        junk_logits = logits + 50 * torch.randn_like(logits) * other
        junk_labels = torch.where(other, torch.rand_like(labels), labels)
        torch.testing.assert_close(position_loss(junk_logits, junk_labels, dropped, w), loss)
        moved = position_loss(logits + 5 * torch.randn_like(logits) * dropped[..., None],
                              labels, dropped, w)
        assert abs(float(moved - loss)) > 1e-3


def test_droppos_forward_uses_dropped_tokens_and_mask_pos_token():
    model = build_method("droppos", encoder=ENC, **DEC).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model.predict(images, torch.Generator().manual_seed(0))
        k = 16
        assert out["logits"].shape == (2, k, N) and out["positions"].shape == (2, k)
        assert (out["dropped"].sum(1) == 12).all()  # round(0.75 * 16)
        labels = model.label_table()[out["positions"]]
        cls_full, tokens_full = model.full_image_features(images)
        w = attentive_weights(cls_full, gather_tokens(tokens_full, out["positions"]), 0.1)
        want = position_loss(out["logits"], labels, out["dropped"], w)
        got = model(images, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got["loss"], want)
        assert set(got) == {"loss", "pos_acc"}
        # dropped tokens never read their position embedding; kept ones do
        cells_dropped = out["positions"][0][out["dropped"][0]]
        cells_kept = out["positions"][0][~out["dropped"][0]]
        pe = model.encoder.pos_embed
        saved = pe.detach().clone()
        # (a random vector: a constant shift of all channels would vanish in LayerNorm)
        pe[0, 1 + cells_dropped] += torch.randn(len(cells_dropped), 96)
        again = model.predict(images, torch.Generator().manual_seed(0))
        assert torch.equal(again["dropped"], out["dropped"])
        torch.testing.assert_close(again["logits"], out["logits"], atol=1e-5, rtol=0)
        pe[0, 1 + cells_kept[:1]] += torch.randn(1, 96)
        moved = model.predict(images, torch.Generator().manual_seed(0))
        assert (moved["logits"][0] - out["logits"][0]).abs().max() > 1e-3
        pe.copy_(saved)


def test_smoothed_labels_rows_and_schedule():
    coords = grid_coordinates((8, 8))
    labels = smoothed_position_labels(coords, 1.0)
    torch.testing.assert_close(labels.sum(1), torch.ones(N), atol=1e-6, rtol=0)
    assert torch.equal(labels.argmax(1), torch.arange(N))
    # (row 3, col 3) -> neighbours at distance 1, sqrt(2), 2
    i = 3 * 8 + 3
    ratio = labels[i] / labels[i, i]
    torch.testing.assert_close(ratio[3 * 8 + 4], torch.tensor(math.exp(-1.0)))
    torch.testing.assert_close(ratio[4 * 8 + 4], torch.tensor(math.exp(-2.0)))
    torch.testing.assert_close(ratio[3 * 8 + 5], torch.tensor(math.exp(-4.0)))
    one_hot = smoothed_position_labels(coords, 0.0)
    assert torch.isfinite(one_hot).all() and torch.equal(one_hot, torch.eye(N))
    line = smoothed_position_labels(grid_coordinates((20,)), 2.0)
    torch.testing.assert_close(line[5, 7] / line[5, 5], torch.tensor(math.exp(-1.0)))
    # on a 14 x 14 grid (224 / 16) the nearest cells of (1, 0) = 14 are (0, 0), (1, 1) and
    # (2, 0), not 13 = (0, 13) or 30 (the public 16-wide map's neighbours)
    grid14 = smoothed_position_labels(grid_coordinates((14, 14)), 1.0)
    torch.testing.assert_close(grid14.sum(1), torch.ones(196), atol=1e-6, rtol=0)
    assert set(grid14[14].topk(4).indices.tolist()) == {14, 0, 15, 28}
    assert grid14[14, 13] < 1e-6 * grid14[14, 14]
    assert inspect.signature(DropPos).parameters["sigma_start"].default == 1.0  # public value

    model = build_method("droppos", encoder=ENC, sigma_start=2.0, **DEC)
    assert float(model.sigma) == 2.0
    model.on_train_progress(0.25)
    assert float(model.sigma) == pytest.approx(1.5)
    model.on_train_progress(1.0)
    assert float(model.sigma) == 0.0
    assert torch.equal(model.label_table(), torch.eye(N))
    assert float(model.progress) == 1.0 and "progress" in model.state_dict()
    plain = build_method("droppos", encoder=ENC, position_smoothing=False, **DEC)
    assert torch.equal(plain.label_table(), torch.eye(N))


def test_attentive_weights_softmax_over_visible_tokens():
    torch.manual_seed(0)
    cls = torch.randn(2, 8, requires_grad=True)
    tokens = torch.randn(2, 5, 8, requires_grad=True)
    w = attentive_weights(cls, tokens, temperature=0.1)
    assert not w.requires_grad and w.grad_fn is None
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    cos = torch.nn.functional.cosine_similarity(tokens[1], cls[1][None], dim=-1)
    torch.testing.assert_close(w[1], (cos / 0.1).softmax(0).detach())
    # = the public order: softmax over all N, gathered at the visible ones, renormalised
    full = torch.randn(2, 9, 8)
    keep = torch.tensor([[0, 4, 7], [8, 2, 3]])
    over_all = attentive_weights(cls.detach(), full, 0.1).gather(1, keep)
    torch.testing.assert_close(over_all / over_all.sum(1, keepdim=True),
                               attentive_weights(cls.detach(), gather_tokens(full, keep), 0.1))


def _differ_in_masked_pixels(model, images, seed):
    """Images equal on the patches the masked pass sees (same seed), different elsewhere."""
    with torch.no_grad():
        out = model.predict(images, torch.Generator().manual_seed(seed))
    seen = torch.zeros(images.shape[0], N)
    seen.scatter_(1, out["positions"], 1.0)
    return images + 3 * torch.randn_like(images) * pixel_mask(1 - seen)


@pytest.mark.parametrize("source", ["full_image", "masked"])
def test_droppos_attentive_weights_source(source):
    torch.manual_seed(0)
    model = build_method("droppos", encoder=ENC, attentive_source=source, **DEC)
    images = torch.rand(2, 3, 32, 32)
    other = _differ_in_masked_pixels(model, images, seed=4)
    outs, weights = [], []
    for x in (images, other):
        out = model.predict(x, torch.Generator().manual_seed(4))  # training mode, with grad
        outs.append(out)
        weights.append(model.token_weights(x, out))
    assert torch.equal(outs[0]["positions"], outs[1]["positions"])
    # the masked pass itself never sees the masked-out pixels
    torch.testing.assert_close(outs[0]["logits"], outs[1]["logits"], atol=1e-5, rtol=0)
    for w in weights:
        assert w.shape == (2, 16) and not w.requires_grad and w.grad_fn is None
        torch.testing.assert_close(w.sum(1), torch.ones(2))
    if source == "full_image":   # the separate pass sees the whole image
        assert (weights[0] - weights[1]).abs().max() > 1e-4
        cls_full, tokens_full = model.full_image_features(images)
        want = attentive_weights(cls_full, gather_tokens(tokens_full, outs[0]["positions"]))
        torch.testing.assert_close(weights[0], want)
    else:
        torch.testing.assert_close(weights[0], weights[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(
            weights[0], attentive_weights(outs[0]["cls_out"], outs[0]["tokens_out"]))
    # no gradient reaches the encoder through the weights: the loss's gradient equals
    # that of the same loss with the weights given as constants
    out = outs[0]
    labels = model.label_table()[out["positions"]]
    loss = position_loss(out["logits"], labels, out["dropped"], weights[0])
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    again = model.predict(images, torch.Generator().manual_seed(4))
    const = position_loss(again["logits"], labels, again["dropped"], weights[0].clone())
    grads2 = torch.autograd.grad(const, params, allow_unused=True)
    for a, b in zip(grads, grads2):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b)
    # the forward uses the configured source
    got = model(images, generator=torch.Generator().manual_seed(4))["loss"]
    torch.testing.assert_close(got, loss)


def test_droppos_full_image_pass_gives_every_patch_its_position():
    model = build_method("droppos", encoder=ENC, **DEC).eval()
    images = torch.rand(2, 3, 32, 32)
    enc = model.encoder
    with torch.no_grad():
        cls_out, tokens_out = model.full_image_features(images)
        ref = enc.forward_features(images)   # timm's own full forward: pos_embed on all
    torch.testing.assert_close(cls_out, ref[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens_out, ref[:, 1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attentive_source"):
        build_method("droppos", encoder=ENC, attentive_source="nope", **DEC)
    assert DropPos.version >= 2 and MAE.version >= 2


@pytest.mark.parametrize("name", ["mae", "droppos"])
@torch.no_grad()
def test_encoder_init_as_public_mae(name):
    torch.manual_seed(0)
    enc_cfg = dict(arch="vit_small", img_size=64, patch_size=16)      # 16 patches of 3x16x16
    model = build_method(name, encoder=enc_cfg, **DEC)
    enc = model.encoder
    w = enc.patch_embed.proj.weight.detach()                          # (384, 3, 16, 16)
    fan_in, fan_out = 3 * 16 * 16, 384
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.98 * bound
    # uniform(-a, a): std a / sqrt(3). PyTorch's conv default (kaiming_uniform, a=sqrt(5))
    # would give bound 1 / sqrt(fan_in) = 0.036 instead of 0.0395 here
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert float(w.mean()).__abs__() < 0.05 * bound
    for mod_name, m in enc.named_modules():
        if isinstance(m, torch.nn.Linear):
            b = math.sqrt(6.0 / (m.in_features + m.out_features))
            assert float(m.weight.abs().max()) <= b, mod_name
            assert float(m.weight.std()) == pytest.approx(b / math.sqrt(3), rel=0.05), mod_name
            assert m.bias is None or not m.bias.any(), mod_name
        elif isinstance(m, torch.nn.LayerNorm):
            assert (m.weight == 1).all() and not m.bias.any(), mod_name
    qkv = enc.blocks[0].attn.qkv.weight                               # one (3d, d) matrix
    assert float(qkv.abs().max()) > 0.98 * math.sqrt(6.0 / (384 + 3 * 384))
    assert float(enc.cls_token.std()) == pytest.approx(0.02, rel=0.25)
    token = model.mask_token if name == "mae" else model.mask_pos_token
    assert float(token.std()) == pytest.approx(0.02, rel=0.25)
    # 1D: the Conv1d patch projection as a linear map of in_chans * patch_size inputs
    one_d = build_method(name, encoder=dict(ENC_1D, arch="vit_small"), **DEC).encoder
    w1 = one_d.patch_embed.proj.weight.detach()                       # (384, 2, 10)
    b1 = math.sqrt(6.0 / (2 * 10 + 384))
    assert b1 * 0.95 < float(w1.abs().max()) <= b1
    # the helper on a bare encoder gives the same as the method
    bare = build_encoder(**enc_cfg, pos_embed="learn")
    init_vit_encoder_like_mae(bare)
    assert float(bare.patch_embed.proj.weight.abs().max()) <= bound


def test_droppos_finds_positions_on_scenes():
    from tasks.data.synthetic import render_scenes

    torch.manual_seed(0)
    images, _ = render_scenes(512, 32, 10, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    train, held_out = x[:448], x[448:]
    model = build_method("droppos", encoder=ENC, **DEC)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    steps = 100
    for step in range(steps):
        model.on_train_progress(step / steps)
        out = model(train[torch.randint(0, 448, (64,), generator=g)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    summary = model.summarize_pretext(model.pretext_outputs(held_out))
    assert summary["chance_acc"] == 1 / N and summary["num_tokens_evaluated"] == 64 * 12
    assert summary["pos_acc"] > 3 / N, summary


def test_droppos_1d():
    model = build_method("droppos", encoder=ENC_1D, **DEC)
    out = model(torch.randn(3, 2, 200))
    assert torch.isfinite(out["loss"]) and 0 <= float(out["pos_acc"]) <= 1
    pred = model.predict(torch.randn(3, 2, 200))
    assert pred["logits"].shape == (3, 5, 20) and (pred["dropped"].sum(1) == 4).all()
    out["loss"].backward()
    assert model.mask_pos_token.grad is not None


# ------------------------------------------------------------------------------- both

@pytest.mark.parametrize("name,cls", [("mae", MAE), ("droppos", DropPos)])
def test_registered_and_encoder_loads_for_finetuning(name, cls):
    assert METHODS[name].cls is cls and cls.pretrain_pos_embed
    model = build_method(name, encoder=ENC, **DEC)
    state = model.encoder_state_dict()
    assert "pos_embed" in state and not any(k.startswith("head") for k in state)
    target = build_encoder(arch="vit_micro", img_size=32, patch_size=4, pos_embed="learn",
                           num_classes=10)
    result = target.load_state_dict(state, strict=False)
    assert set(result.missing_keys) == {"head.weight", "head.bias"}
    assert result.unexpected_keys == []
    assert target.pos_embed.requires_grad
    torch.testing.assert_close(target.pos_embed.detach(), state["pos_embed"])
