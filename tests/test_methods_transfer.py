"""Every registered method goes through the same pipeline: pretrain on the Runner,
then the classification task loads its encoder with only the expected keys new."""
import json
from pathlib import Path

import pytest

from pipeline.cell import run_cell
from pipeline.cell import data_identities, make_plan
from engine.pretrain import pretrain_key
from methods import METHODS

TINY = {
    "tasks.cifar100.data.embedded.num_train": 128, "tasks.cifar100.data.embedded.num_test": 64,
    "tasks.cifar100.pretrain.epochs": 1, 
    "tasks.cifar100.pretrain.global_batch_size": 32,
    "tasks.cifar100.finetune.epochs": 1, "tasks.cifar100.loader.num_workers": 0,
    "tasks.cifar100.finetune.global_batch_size": 32,
}

EXPECTED_NEW = {
    # pretrained without position embeddings: the finetuned model adds them
    "part": ["head.bias", "head.weight", "pos_embed"],
    "part-grid": ["head.bias", "head.weight", "pos_embed"],
    "part-aspect-scale": ["head.bias", "head.weight", "pos_embed"],
    "mp3": ["head.bias", "head.weight", "pos_embed"],
    # w/o PE rows finetune without them
    "mp3-nope": ["head.bias", "head.weight"],
    # pretrained with (fixed sin-cos) position embeddings, which initialise finetuning's
    "mae": ["head.bias", "head.weight"],
    "droppos": ["head.bias", "head.weight"],
}


def test_every_method_has_an_expectation():
    assert set(EXPECTED_NEW) | {"scratch", "scratch-nope"} == set(METHODS)


@pytest.mark.parametrize("method", sorted(EXPECTED_NEW))
def test_method_transfers_to_classification(method, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "shared-cache"  # generated data made once
    out = tmp_path_factory.mktemp("runs")
    rec = run_cell(method, "cifar100", preset="tiny", cache=cache, out=out, cfg_options=TINY,
                   log=lambda *_: None)
    assert rec["metrics"]["new_keys"] == EXPECTED_NEW[method]
    assert 0.0 <= rec["metrics"]["acc1"] <= 100.0
    assert json.loads(Path(rec["path"]).read_text())["method"] == method


@pytest.mark.parametrize("method, has_pos_embed", [("scratch", True), ("scratch-nope", False)])
def test_labelled_baselines_are_ordinary_rows(method, has_pos_embed, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "shared-cache"
    rec = run_cell(method, "cifar100", preset="tiny", cache=cache,
                   out=tmp_path_factory.mktemp("runs"), cfg_options=TINY, log=lambda *_: None)
    assert rec["pretrained_checkpoint"] is None and "new_keys" not in rec["metrics"]
    assert rec["plan"]["finetune"]["epochs"] == 1
    plan = make_plan(method, "cifar100", cfg_options=TINY)
    assert plan.finetune.pos_embed is has_pos_embed and plan.method.pretrains is False


def test_rows_that_differ_only_in_finetuning_share_one_pretraining(tmp_path):
    keys = {}
    for m in ("mp3", "mp3-nope", "part", "part-grid"):
        plan = make_plan(m, "cifar100")
        keys[m] = pretrain_key(plan, data_identities(plan)["pretrain"])
    assert keys["mp3"] == keys["mp3-nope"]
    assert keys["part"] != keys["part-grid"]


def test_imagenet_task_reads_its_imagefolder(tmp_path):
    opts = {"tasks.imagenet.data.embedded.num_train": 64, "tasks.imagenet.data.embedded.num_val": 30,
            "tasks.imagenet.pretrain.epochs": 1, 
            "tasks.imagenet.pretrain.global_batch_size": 32, "tasks.imagenet.finetune.epochs": 1,
            "tasks.imagenet.loader.num_workers": 0, "tasks.imagenet.finetune.global_batch_size": 32}
    rec = run_cell("part", "imagenet", preset="tiny", cache=tmp_path, out=tmp_path / "runs",
                   cfg_options=opts, log=lambda *_: None)
    assert rec["metrics"]["new_keys"] == ["head.bias", "head.weight", "pos_embed"]
    root = next((tmp_path / "data").glob("*imagefolder*"))
    assert len(list((root / "val").glob("*/*.png"))) == 30
