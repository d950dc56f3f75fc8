"""The paper preset's method configurations, value by value, and the modules they build
(decoder sizes, ratios, pairs, patches), for every task the methods pretrain for."""
import pytest

from pipeline.cell import make_plan
from engine.errors import ConfigError
from methods import build_method

MICRO = dict(arch="vit_micro")  # the paper's configs on a small encoder: same heads, fast

PART_PAIRS = {"cifar100": 2048, "imagenet": 4802, "coco": 4802, "eeg": 1560}


@pytest.mark.parametrize("task", ["cifar100", "imagenet", "coco", "eeg"])
@pytest.mark.parametrize("method, sampling", [("part", "offgrid"), ("part-grid", "grid"),
                                              ("part-aspect-scale", "scale_aspect")])
def test_paper_part_configs(task, method, sampling):
    if task == "eeg" and method == "part-aspect-scale":   # 2D only: the plan refuses it
        with pytest.raises(ConfigError, match="2D images only"):
            make_plan(method, task, preset="paper")
        return
    plan = make_plan(method, task, preset="paper")
    cfg = plan.method.config
    assert (cfg["sampling"], cfg["head"], cfg["head_num_heads"]) == (sampling, "cross_attention", 1)
    assert cfg["pairs_with_replacement"] is False and cfg["box_size"] is None
    if task != "eeg":
        assert cfg["num_pairs"] == PART_PAIRS[task] and cfg["num_patches"] is None
        model = build_method(method, encoder={**plan.encoder.as_kwargs(), **MICRO}, **cfg)
        n = (plan.encoder.img_size // plan.encoder.patch_size) ** 2
        assert model.num_patches == n                        # N = HW / P^2
        assert model.target_dim == (4 if sampling == "scale_aspect" else 2)
    else:
        # 40 random 1 s windows per 30 s window (the paper); the grid's 30 patches
        want = (40, 1560) if method == "part" else (30, 870)
        assert (cfg["num_patches"], cfg["num_pairs"]) == want
        model = build_method(method, encoder={**plan.encoder.as_kwargs(), **MICRO}, **cfg)
        assert (model.num_patches, model.target_dim, model.patch_size) == (want[0], 1, 100)


@pytest.mark.parametrize("task", ["cifar100", "imagenet", "eeg"])
def test_paper_mae_droppos_mp3_configs(task):
    enc = {**make_plan("mae", task, preset="paper").encoder.as_kwargs(), **MICRO}
    mae = make_plan("mae", task, preset="paper").method.config
    assert mae == dict(mask_ratio=0.75, decoder_dim=512, decoder_depth=8, decoder_heads=16,
                       decoder_mlp_ratio=4.0, norm_pix_loss=True)
    model = build_method("mae", encoder=enc, **mae)
    assert len(model.decoder_blocks) == 8 and model.decoder_embed.out_features == 512
    assert model.decoder_blocks[0].attn.num_heads == 16

    dp = make_plan("droppos", task, preset="paper").method.config
    assert dp == dict(mask_ratio=0.75, pos_mask_ratio=0.75, decoder_dim=512, decoder_depth=2,
                      decoder_heads=16, decoder_mlp_ratio=4.0, position_smoothing=True,
                      sigma_start=1.0, attentive_reconstruction=True,
                      attentive_source="full_image", attn_temperature=0.1)
    model = build_method("droppos", encoder=enc, **dp)
    n = model.num_patches
    assert len(model.decoder_blocks) == 2 and model.decoder_pred.out_features == n
    assert model.num_visible == n - round(0.75 * n)
    assert model.num_dropped == round(0.75 * model.num_visible)

    mp3 = make_plan("mp3", task, preset="paper").method.config
    assert mp3 == dict(mask_ratio=0.75)
    assert make_plan("mp3-nope", task, preset="paper").method.config == mp3
