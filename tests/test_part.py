"""PART's targets (eq. 1, eq. 5), pairs, heads, loss and variants."""
import pytest
import torch

from methods import METHODS, build_method
from methods.heads import CrossAttentionRelativeHead, MLPRelativeHead, PairwiseMLPHead
from methods.part import relative_targets, sample_pairs

ENC = dict(arch="vit_micro", img_size=32, patch_size=4)


def test_eq1_targets_by_hand():
    # boxes (x0, y0, w, h): centres (6, 2), (10, 14), (4, 4)
    boxes = torch.tensor([[[4.0, 0.0, 4.0, 4.0], [8.0, 12.0, 4.0, 4.0], [2.0, 2.0, 4.0, 4.0]]])
    pairs = torch.tensor([[[0, 1], [1, 0], [2, 0], [1, 2]]])
    got = relative_targets(boxes, pairs)
    want = torch.tensor([[[1.0, 3.0], [-1.0, -3.0], [0.5, -0.5], [-1.5, -2.5]]])
    torch.testing.assert_close(got, want)


def test_eq5_targets_by_hand():
    # ref: x0=0,y0=0,w=4,h=2 -> centre (2,1); tgt: x0=6,y0=3,w=8,h=6 -> centre (10,6)
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 2.0], [6.0, 3.0, 8.0, 6.0]]])
    pairs = torch.tensor([[[0, 1], [1, 0]]])
    got = relative_targets(boxes, pairs, with_scale=True)
    want = torch.tensor([[[8 / 4, 5 / 2, 2.0, 3.0], [-8 / 8, -5 / 6, 0.5, 1 / 3]]])
    torch.testing.assert_close(got, want)
    logs = relative_targets(boxes, pairs, with_scale=True, scale_target="log")
    torch.testing.assert_close(logs[..., 2:], want[..., 2:].log())
    # 1D windows (t0, length): centres 15 and 45, length 10 -> dx = 3
    wins = torch.tensor([[[10.0, 10.0], [40.0, 10.0]]])
    torch.testing.assert_close(relative_targets(wins, torch.tensor([[[0, 1]]])),
                               torch.tensor([[[3.0]]]))


def test_eq1_matrix_is_exactly_antisymmetric():
    model = build_method("part", encoder=ENC, num_pairs=16)
    images = torch.rand(2, 3, 32, 32)
    boxes = model.sample_boxes(images)
    _, true = model.pair_matrices(images, boxes)
    assert torch.equal(true, -true.transpose(1, 2))


def test_pairs_are_distinct_and_in_range():
    pairs = sample_pairs(4, 10, 500)
    assert pairs.shape == (4, 500, 2)
    assert (pairs[..., 0] != pairs[..., 1]).all()
    assert pairs.min() >= 0 and pairs.max() < 10
    assert len(torch.unique(pairs[..., 0])) == 10 and len(torch.unique(pairs[..., 1])) == 10


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_factored_cross_attention_equals_naive_form(heads):
    torch.manual_seed(0)
    head = CrossAttentionRelativeHead(16, out_dim=4, num_heads=heads).double()
    tokens = torch.randn(3, 9, 16, dtype=torch.float64)
    pairs = sample_pairs(3, 9, 25)
    torch.testing.assert_close(head(tokens, pairs), head.forward_naive(tokens, pairs),
                               atol=1e-12, rtol=1e-12)
    # and the gradients agree too
    t1 = tokens.clone().requires_grad_()
    t2 = tokens.clone().requires_grad_()
    head(t1, pairs).square().sum().backward()
    head.forward_naive(t2, pairs).square().sum().backward()
    torch.testing.assert_close(t1.grad, t2.grad, atol=1e-10, rtol=1e-10)


def test_ablation_heads_read_the_right_pairs():
    tokens = torch.randn(2, 5, 8)
    pairs = torch.tensor([[[0, 1], [3, 2]], [[4, 4], [1, 0]]])
    pw = PairwiseMLPHead(8, 2)
    want = pw.fc(torch.cat([tokens[0, 3], tokens[0, 2]]))
    torch.testing.assert_close(pw(tokens, pairs)[0, 1], want)
    mlp = MLPRelativeHead(8, 2, num_tokens=5)
    all_pairs = mlp.fc(tokens[1].flatten()).view(25, 2)
    torch.testing.assert_close(mlp(tokens, pairs)[1, 1], all_pairs[1 * 5 + 0])
    assert sum(p.numel() for p in mlp.parameters()) == 5 * 8 * 25 * 2 + 25 * 2


def test_part_grid_shuffles_grid_boxes():
    model = build_method("part-grid", encoder=ENC, num_pairs=8)
    boxes = model.sample_boxes(torch.rand(2, 3, 32, 32))
    assert boxes.shape == (2, 64, 4)
    assert (boxes[..., :2] % 4 == 0).all()
    # every grid cell exactly once, in a different order per image
    keys = boxes[..., 1] * 100 + boxes[..., 0]
    assert torch.equal(keys[0].sort().values, keys[1].sort().values)
    assert not torch.equal(keys[0], keys[1])


def test_loss_is_eq4_mse():
    model = build_method("part", encoder=ENC, num_pairs=32)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 32, 32)
    out = model(images, generator=g)
    g = torch.Generator().manual_seed(3)
    boxes = model.sample_boxes(images, g)
    pairs = sample_pairs(2, 64, 32, generator=g)
    pred = model.predict(images, boxes, pairs)
    target = relative_targets(boxes, pairs)
    manual = ((target - pred) ** 2).sum() / (2 * 32 * 2)
    torch.testing.assert_close(out["loss"], manual)
    assert set(out) == {"loss", "err_x", "err_y", "err_euclid"}


def test_variants_are_registered_configs_of_one_class():
    assert METHODS["part-grid"].cls is METHODS["part"].cls
    assert METHODS["part-aspect-scale"].cls is METHODS["part"].cls
    model = build_method("part-aspect-scale", encoder=ENC, num_pairs=8)
    assert model.target_dim == 4
    assert torch.isfinite(model(torch.rand(2, 3, 32, 32))["loss"])
    one_d = build_method("part", encoder=dict(arch="vit_micro", img_size=200, patch_size=10,
                                              in_chans=2, modality="1d"), num_pairs=8,
                         num_patches=12)
    out = one_d(torch.randn(2, 2, 200))
    assert one_d.target_dim == 1 and torch.isfinite(out["loss"]) and "err_y" not in out


def test_encoder_state_dict_has_timm_names_and_no_pos_embed():
    model = build_method("part", encoder=ENC, num_pairs=8)
    keys = set(model.encoder_state_dict())
    assert "patch_embed.proj.weight" in keys and "blocks.0.attn.qkv.weight" in keys
    assert "pos_embed" not in keys and not any(k.startswith("head") for k in keys)
