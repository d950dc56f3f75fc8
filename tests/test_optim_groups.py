"""The optimizer's parameter groups as the Runner builds them (``build_runner``, then the
Runner's own ``build_optim_wrapper``), checked parameter by parameter against learning
rates and weight decays written out by hand from the parameter names."""
import dataclasses
import math
import re

import pytest
import torch

from engine.runner import build_runner

LR, WD = 1e-3, 0.05


def _per_param(model, wrapper) -> dict[str, tuple[float, float]]:
    """name -> (lr, weight_decay), every trainable parameter exactly once."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for g in wrapper.optimizer.param_groups:
        for p in g["params"]:
            assert names[id(p)] not in seen, names[id(p)]
            seen[names[id(p)]] = (g["lr"], g["weight_decay"])
    assert set(seen) == {n for n, p in model.named_parameters() if p.requires_grad}
    return seen


def _built(runner):
    """What ``Runner.train()`` builds from the Runner's optimizer config."""
    return runner.build_optim_wrapper(runner.optim_wrapper)


# ------------------------------------------------------------------ classification
def _classification_runner(tmp_path, layer_decay):
    from pipeline.cell import make_plan
    from methods.backbone import build_encoder
    from tasks.classifier import ClassifierModel

    plan = make_plan("part", "cifar100")
    schedule = dataclasses.replace(plan.finetune, base_lr=LR, lr_reference_batch=None, weight_decay=WD,
                                   layer_decay=layer_decay)
    encoder = build_encoder(arch="vit_micro", img_size=32, patch_size=4, num_classes=10, pos_embed="learn")
    model = ClassifierModel(encoder, 10)
    runner = build_runner(model, tmp_path / f"cls{layer_decay}", list(range(8)), schedule=schedule,
                          batch_per_process=4, loader=plan.loader)
    return model, runner


def _vit_layer(name: str, depth: int) -> int:
    """timm's ViT layers, by hand: embeddings and [CLS] 0, block i i + 1, the final norm
    in the last block's layer (its group_matcher puts ``norm`` with the previous group),
    the head above them all, depth + 1."""
    name = name.removeprefix("encoder.")
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    m = re.match(r"blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith("norm."):
        return depth
    assert name.startswith("head."), name
    return depth + 1


def test_classification_groups_are_timms_layer_decay_with_its_exemptions(tmp_path):
    model, runner = _classification_runner(tmp_path, 0.65)
    got = _per_param(model, _built(runner))
    depth = 4  # vit_micro
    assert len(model.encoder.blocks) == depth
    for name, (lr, wd) in got.items():
        layer = _vit_layer(name, depth)
        assert lr == pytest.approx(LR * 0.65 ** (depth + 1 - layer)), name
        short = name.removeprefix("encoder.")
        exempt = (short.endswith(".bias") or re.search(r"(^|\.)norm\d?\.", short) is not None
                  or short in ("pos_embed", "cls_token"))
        assert wd == (0.0 if exempt else WD), name
    # spelled out for a few, to read the rule off the test
    assert got["encoder.patch_embed.proj.weight"] == (pytest.approx(LR * 0.65 ** 5), WD)
    assert got["encoder.cls_token"] == (pytest.approx(LR * 0.65 ** 5), 0.0)
    assert got["encoder.pos_embed"] == (pytest.approx(LR * 0.65 ** 5), 0.0)
    assert got["encoder.blocks.0.attn.qkv.weight"] == (pytest.approx(LR * 0.65 ** 4), WD)
    assert got["encoder.blocks.0.attn.qkv.bias"] == (pytest.approx(LR * 0.65 ** 4), 0.0)
    assert got["encoder.blocks.3.mlp.fc2.weight"] == (pytest.approx(LR * 0.65), WD)
    assert got["encoder.blocks.3.norm2.weight"] == (pytest.approx(LR * 0.65), 0.0)
    assert got["encoder.norm.weight"] == (pytest.approx(LR * 0.65), 0.0)
    assert got["encoder.head.weight"] == (pytest.approx(LR), WD)
    assert got["encoder.head.bias"] == (pytest.approx(LR), 0.0)


def test_classification_without_layer_decay_has_one_lr(tmp_path):
    model, runner = _classification_runner(tmp_path, None)  # the plan's "no layer decay"
    got = _per_param(model, _built(runner))
    assert {lr for lr, _ in got.values()} == {LR}
    assert got["encoder.blocks.0.attn.qkv.bias"][1] == 0.0 and got["encoder.head.weight"][1] == WD


# ------------------------------------------------------------------ detection
def test_detection_groups_are_vitdets(tmp_path, monkeypatch):
    """The Runner the COCO task builds (captured before it trains): ViTDet's layer ids and
    exemptions (the blocks' norms and the absolute position embedding; biases and the
    relative position tables decayed)."""
    import engine.runner
    from pipeline.cell import make_plan
    from tasks.coco import CocoTask
    from tasks.data.coco_synthetic import write_coco

    class Built(Exception):
        pass

    captured = {}

    def capture(model, *args, **kwargs):
        captured["model"], captured["runner"] = model, build_runner(model, *args, **kwargs)
        raise Built

    root = write_coco(tmp_path / "coco", num_train=4, num_val=2, size=96, num_classes=10, seed=0)
    plan = make_plan("part", "coco", data_root=root, cfg_options={"tasks.coco.finetune.layer_decay": 0.7,
                                                                   "tasks.coco.loader.num_workers": 0})
    monkeypatch.setattr(engine.runner, "build_runner", capture)
    with pytest.raises(Built):
        CocoTask(plan, tmp_path).run(pretrained=None, work_dir=tmp_path / "work", log=lambda *_: None)
    model = captured["model"]
    got = _per_param(model, _built(captured["runner"]))
    lr, wd = plan.finetune.lr, plan.finetune.weight_decay
    depth = model.backbone.depth
    assert depth == 4

    def layer(name):  # ViTDet's ids, by hand
        if name.startswith(("backbone.patch_embed.", "backbone.pos_embed")):
            return 0
        m = re.match(r"backbone\.blocks\.(\d+)\.", name)
        return int(m.group(1)) + 1 if m else depth + 1

    for name, (got_lr, got_wd) in got.items():
        assert got_lr == pytest.approx(lr * 0.7 ** (depth + 1 - layer(name))), name
        exempt = re.fullmatch(r"backbone\.blocks\.\d+\.norm[12]\.(weight|bias)", name) or name == "backbone.pos_embed"
        assert got_wd == (0.0 if exempt else wd), name
    assert got["backbone.patch_embed.proj.weight"] == (pytest.approx(lr * 0.7 ** 5), wd)
    assert got["backbone.patch_embed.proj.bias"] == (pytest.approx(lr * 0.7 ** 5), wd)
    assert got["backbone.pos_embed"] == (pytest.approx(lr * 0.7 ** 5), 0.0)
    assert got["backbone.blocks.0.norm1.weight"] == (pytest.approx(lr * 0.7 ** 4), 0.0)
    assert got["backbone.blocks.0.attn.qkv.bias"] == (pytest.approx(lr * 0.7 ** 4), wd)
    assert got["backbone.blocks.0.attn.rel_pos_h"] == (pytest.approx(lr * 0.7 ** 4), wd)
    assert got["backbone.blocks.3.attn.rel_pos_w"] == (pytest.approx(lr * 0.7), wd)
    assert got["backbone.blocks.3.norm2.bias"] == (pytest.approx(lr * 0.7), 0.0)
    assert got["rpn_head.rpn_cls.weight"] == (pytest.approx(lr), wd)
    neck_norms = [f"neck.{m}.{p}" for m, mod in model.neck.named_modules() if "LayerNorm" in type(mod).__name__
                  for p, _ in mod.named_parameters()]
    assert neck_norms and all(got[n] == (pytest.approx(lr), wd) for n in neck_norms)


# ------------------------------------------------------------------ pretraining
@pytest.mark.parametrize("method", ["mae", "droppos", "part"])
def test_pretraining_groups_follow_maes_and_dropposs_optimizer(tmp_path, method):
    """Pretraining (every method): biases and 1-D parameters undecayed, everything else
    decayed, [CLS] and mask tokens included; frozen sin-cos tables left out; one lr."""
    from pipeline.cell import make_plan
    from engine.pretrain import PretrainModel
    from methods import build_method

    plan = make_plan(method, "cifar100")
    schedule = dataclasses.replace(plan.pretrain, base_lr=LR, lr_reference_batch=None,
                                   weight_decay=WD)
    model = PretrainModel(build_method(method, encoder=plan.encoder.as_kwargs(),
                                       **plan.method.config))
    runner = build_runner(model, tmp_path / method, list(range(8)), schedule=schedule,
                          batch_per_process=4, loader=plan.loader, param_rule="mae")
    got = _per_param(model, _built(runner))
    assert all(lr == LR for lr, _ in got.values())
    for name, (_, wd) in got.items():
        p = dict(model.named_parameters())[name]
        exempt = p.ndim == 1 or name.endswith(".bias")
        assert wd == (0.0 if exempt else WD), name
    assert got["method.encoder.cls_token"][1] == WD
    if method == "mae":
        assert got["method.mask_token"][1] == WD
        assert "method.encoder.pos_embed" not in got                  # fixed sin-cos: frozen
    if method == "droppos":
        assert got["method.mask_pos_token"][1] == WD


def _lrs_through_mmengine(schedule, iters_per_epoch: int) -> list[float]:
    """The lr of every training iteration as mmengine's schedulers set it (built from
    :func:`engine.runner.lr_schedule`, stepped once after each iteration as its
    ParamSchedulerHook does)."""
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS

    from engine.runner import lr_schedule

    opt = OptimWrapper(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=schedule.lr))
    scheds = [PARAM_SCHEDULERS.build({**cfg, "optimizer": opt})
              for cfg in lr_schedule(iters_per_epoch, schedule)]
    lrs = []
    for _ in range(schedule.epochs * iters_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        for s in scheds:
            s.step()
    return lrs


@pytest.mark.parametrize("warmup_epochs,expected_first", [(0.0, 1.0), (0.25, 1.0), (0.75, 1e-3)])
def test_the_lr_schedule_reaches_the_full_lr_whatever_the_warmup_rounds_to(warmup_epochs, expected_first):
    """4 iterations an epoch, 2 epochs, cosine to 0: warmup 0.25 epoch rounds to one
    iteration, which used to keep the whole run at 1e-3 of its lr (mmengine's LinearLR
    needs two iterations to rise); 0.75 epoch is 3 iterations: 1e-3, then halfway
    (0.5005), then the full lr at the warmup's last iteration, and the cosine from there."""
    from dataclasses import replace

    from engine.plan import PretrainPlan

    sched = replace(PretrainPlan(), epochs=2, warmup_epochs=warmup_epochs, min_lr=0.0)
    lr = sched.lr
    lrs = [v / lr for v in _lrs_through_mmengine(sched, 4)]
    assert lrs[0] == pytest.approx(expected_first)
    assert max(lrs) == pytest.approx(1.0)
    if warmup_epochs == 0.75:
        assert lrs[1] == pytest.approx((1e-3 + 1.0) / 2) and lrs[2] == pytest.approx(1.0)
        cosine = [0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]  # iterations 3..7
    else:
        cosine = [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs[-len(cosine):] == pytest.approx(cosine, abs=1e-6)
