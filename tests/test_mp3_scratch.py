"""MP3 (key masking, position targets, learning, 1D, transfer) and the Scratch baseline."""
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from methods import METHODS, build_method
from methods.backbone import build_encoder
from methods.mp3 import MP3, key_attention_mask, sample_key_mask
from methods.scratch import Scratch

ENC = dict(arch="vit_micro", img_size=32, patch_size=4)
N = 64  # (32 / 4) ** 2


def _masked_and_kept(kept_row):
    masked = torch.nonzero(~kept_row).flatten()
    kept = torch.nonzero(kept_row).flatten()
    return int(masked[0]), int(kept[0])


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9, 0.0])
def test_mask_keeps_round_fraction_of_keys_plus_cls(ratio):
    b = 5
    kept = sample_key_mask(b, N, ratio, generator=torch.Generator().manual_seed(0))
    want = round((1 - ratio) * N)
    assert kept.shape == (b, N) and kept.dtype == torch.bool
    assert (kept.sum(1) == want).all()
    mask = key_attention_mask(kept)
    assert mask.shape == (b, 1, N + 1, N + 1) and mask.dtype == torch.bool
    assert mask[..., 0].all()  # [CLS] is always a key
    assert (mask.sum(-1) == want + 1).all()  # every query row sees the same keys
    assert torch.equal(mask[:, 0, 3, 1:], kept)
    if 0 < want < N:  # a different subset per sample
        assert not all(torch.equal(kept[0], kept[i]) for i in range(1, b))
    model = build_method("mp3", encoder=ENC, mask_ratio=ratio)
    assert model.num_keys == want


@pytest.mark.parametrize("fused", [True, False])
def test_masked_key_does_not_influence_other_tokens_in_a_block(fused):
    torch.manual_seed(0)
    block = build_encoder(**ENC).blocks[0].eval()
    block.attn.fused_attn = fused  # both of timm's attention paths read the bool mask alike
    x = torch.randn(2, N + 1, 96)
    kept = sample_key_mask(2, N, 0.75, generator=torch.Generator().manual_seed(1))
    mask = key_attention_mask(kept)
    m, k = _masked_and_kept(kept[0])
    with torch.no_grad():
        ref = block(x, attn_mask=mask)
        x_m = x.clone()
        x_m[0, 1 + m] += 3 * torch.randn(96)
        out_m = block(x_m, attn_mask=mask)
        x_k = x.clone()
        x_k[0, 1 + k] += 3 * torch.randn(96)
        out_k = block(x_k, attn_mask=mask)
    others = [i for i in range(N + 1) if i != 1 + m]
    torch.testing.assert_close(out_m[:, others], ref[:, others], atol=1e-6, rtol=0)
    assert (out_m[0, 1 + m] - ref[0, 1 + m]).abs().max() > 1e-2  # it is still a query
    # a kept key changes every other token of its sample, and nothing in the other sample
    diff = (out_k[0] - ref[0]).abs().amax(-1)
    assert (diff[[i for i in range(N + 1) if i != 1 + k]] > 1e-6).all()
    torch.testing.assert_close(out_k[1], ref[1], atol=0, rtol=0)
    # and without the mask a masked-out token does influence the others
    with torch.no_grad():
        free = block(x_m) - block(x)
    assert free[0, others].abs().max() > 1e-3


def _cell_pixels(images, cell, p=4, cols=8):
    r, c = divmod(cell, cols)
    return images[..., r * p:(r + 1) * p, c * p:(c + 1) * p]


def test_masked_out_patch_pixels_never_reach_other_tokens_end_to_end():
    torch.manual_seed(0)
    model = build_method("mp3", encoder=ENC).eval()
    images = torch.randn(2, 3, 32, 32)
    order, kept = model.sample(images, torch.Generator().manual_seed(2))
    m, k = _masked_and_kept(kept[0])  # sequence positions
    with torch.no_grad():
        ref = model.encode(images, order, kept)
        pert = images.clone()
        _cell_pixels(pert[0], int(order[0, m])).add_(2 * torch.randn(3, 4, 4))
        out_m = model.encode(pert, order, kept)
        pert = images.clone()
        _cell_pixels(pert[0], int(order[0, k])).add_(2 * torch.randn(3, 4, 4))
        out_k = model.encode(pert, order, kept)
    others = [i for i in range(N + 1) if i != 1 + m]
    torch.testing.assert_close(out_m[:, others], ref[:, others], atol=1e-5, rtol=0)
    assert (out_m[0, 1 + m] - ref[0, 1 + m]).abs().max() > 1e-3
    changed = (out_k[0] - ref[0]).abs().amax(-1) > 1e-4
    assert changed.all()  # [CLS] and every patch token saw the kept patch
    torch.testing.assert_close(out_k[1], ref[1], atol=0, rtol=0)


def test_targets_are_grid_indices_of_the_shuffled_tokens():
    model = build_method("mp3", encoder=ENC)
    images = torch.randn(3, 3, 32, 32)
    order, kept = model.sample(images)
    assert torch.equal(order.sort(1).values, torch.arange(N).expand(3, -1))
    assert not torch.equal(order[0], order[1])
    # the tokens fed to the encoder are the grid tokens in `order`
    grid = model.encoder.patch_embed(images)
    captured = {}

    def grab(module, args, kwargs):
        captured["x"], captured["mask"] = args[0], kwargs["attn_mask"]

    hook = model.encoder.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    model.encode(images, order, kept)
    hook.remove()
    seq = captured["x"][:, 1:]
    torch.testing.assert_close(seq, torch.stack([grid[i, order[i]] for i in range(3)]))
    assert torch.equal(captured["mask"], key_attention_mask(kept))
    # the loss is cross-entropy against those indices
    g = torch.Generator().manual_seed(4)
    out = model(images, generator=g)
    g = torch.Generator().manual_seed(4)
    order, kept = model.sample(images, g)
    logits = model.predict(images, order, kept)
    manual = -logits.log_softmax(-1).gather(-1, order[..., None]).mean()
    torch.testing.assert_close(out["loss"], manual)
    assert set(out) == {"loss", "pos_acc"} and not out["pos_acc"].requires_grad


def _scenes():
    from tasks.data.synthetic import render_scenes

    images, _ = render_scenes(512, 32, 10, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    return (x - mean) / std


def test_position_accuracy_rises_far_above_chance():
    # A short CPU run (30 Adam steps of 32 images; the shared CPU does about one
    # step a second under load): held-out accuracy must exceed 5x chance.
    torch.manual_seed(0)
    x = _scenes()
    train, heldout = x[:448], x[448:]
    model = build_method("mp3", encoder=ENC)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(7)
        before = model.summarize_pretext(model.pretext_outputs(heldout))
    model.train()
    for _ in range(30):
        batch = train[torch.randint(0, len(train), (32,), generator=g)]
        out = model(batch, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(7)
        after = model.summarize_pretext(model.pretext_outputs(heldout))
    assert after["chance_acc"] == pytest.approx(1 / N)
    assert after["num_tokens_evaluated"] == 64 * N
    assert before["pos_acc"] < 3 / N
    assert after["pos_acc"] > 5 / N, (before, after)
    assert after["pos_err_cells"] < before["pos_err_cells"]


def test_1d_forward():
    enc = dict(arch="vit_micro", img_size=200, patch_size=10, in_chans=2, modality="1d")
    model = build_method("mp3", encoder=enc)
    assert model.num_patches == 20 and model.num_keys == 5
    signals = torch.randn(3, 2, 200)
    out = model(signals)
    assert torch.isfinite(out["loss"]) and 0 <= float(out["pos_acc"]) <= 1
    out["loss"].backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None
    model.eval()
    summary = model.summarize_pretext(model.pretext_outputs(signals))
    assert summary["chance_acc"] == pytest.approx(1 / 20)
    assert summary["num_tokens_evaluated"] == 60


def test_encoder_state_dict_transfers_to_a_finetuning_encoder():
    model = build_method("mp3", encoder=ENC)
    assert model.encoder.pos_embed is None
    target = build_encoder(arch="vit_micro", img_size=32, patch_size=4, pos_embed="learn",
                           num_classes=10)
    res = target.load_state_dict(model.encoder_state_dict(), strict=False)
    assert set(res.missing_keys) == {"pos_embed", "head.weight", "head.bias"}
    assert res.unexpected_keys == []


def test_registry_variants_are_finetuning_options():
    from pipeline.cell import make_plan

    assert METHODS["mp3-nope"].cls is MP3 and METHODS["scratch-nope"].cls is Scratch
    for name, pretrains, pe in [("mp3", True, True), ("mp3-nope", True, False),
                                ("scratch", False, True), ("scratch-nope", False, False)]:
        plan = make_plan(name, "cifar100")
        assert plan.method.pretrains is pretrains and plan.finetune.pos_embed is pe, name
        assert plan.sources.get("finetune.pos_embed") == (None if pe else "registry")


def test_scratch_does_not_pretrain():
    model = build_method("scratch", encoder=ENC)
    assert Scratch.pretrains is False and model.pretrains is False
    with pytest.raises(RuntimeError, match="no pretraining"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no pretrained encoder"):
        model.encoder_state_dict()
