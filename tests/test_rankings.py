"""Rankings a user can trust: protocols through the task, sanity warnings, step floors,
and the intervals and significance marks of the tables (hand-computed values)."""
import hashlib
import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cell import cell_record_path, make_plan, run_cell, with_protocol
from pipeline.describe import dry_run
from benchmarks.stats import format_mean_ci
from benchmarks.tables import Column, Row, Table, fill
from engine.errors import ConfigError
from engine.plan import FinetunePlan, with_step_floor
from encoder_watch import state_hash, watch_probe_encoder
from table_records import write_cell_record
from tasks.protocols import (LinearProbePlan, accuracy_interval, accuracy_warning,
                             class_prior_loss, loss_warning, majority_rate)


def quiet(*_):
    pass


def write_digits(root, n_train: int, n_test: int):
    """scikit-learn's digits (8x8, 0..16) as CIFAR-100's on-disk format: 32x32 RGB,
    ``data`` uint8 (N, 3072) channel-major, ``fine_labels``, ``coarse_labels``, meta."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images / 16.0 * 255).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BICUBIC)) for im in imgs])
    rgb = np.repeat(big[:, None], 3, axis=1).reshape(len(big), 3 * 32 * 32)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, sl in (("train", slice(0, n_train)), ("test", slice(n_train, n_train + n_test))):
        y = [int(t) for t in d.target[sl]]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rgb[sl], "fine_labels": y, "coarse_labels": [0] * len(y)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"digit_{i}" for i in range(10)],
                     "coarse_label_names": ["digit"]}, f)
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"), 200, 100)


def file_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------ warnings
def test_accuracy_interval_by_hand():
    # k = n: the lower Clopper-Pearson end solves p^n = 0.025
    low, high = accuracy_interval(10, 10)
    assert low == pytest.approx(0.025 ** (1 / 10), rel=1e-9) and high == 1.0   # 0.69150
    low, high = accuracy_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    low, _ = accuracy_interval(20, 20)
    assert low == pytest.approx(0.831566, abs=1e-6)        # exp(ln(0.025) / 20)
    with pytest.raises(ValueError):
        accuracy_interval(11, 10)


def test_accuracy_within_noise_of_the_majority_rate():
    # 10/10 right: the interval's lower end is 0.6915, so a majority rate of 69 % is beaten
    assert accuracy_warning("acc1", 100.0, 10, 0.69) is None
    w = accuracy_warning("acc1", 100.0, 10, 0.70)
    assert w.startswith("acc1: 100.0% is within noise of the majority-class rate 70.0%")
    # the digits test split of the issue: 36/306 right, largest class 33/306
    w = accuracy_warning("acc1", 100 * 36 / 306, 306, 33 / 306)
    assert w is not None and "36/306" in w
    assert accuracy_warning("knn_acc1_cls", 50.0, 306, 33 / 306) is None
    assert majority_rate([0, 0, 1, 2]) == 0.5
    assert majority_rate(torch.tensor([3, 3, 3, 1])) == 0.75


def test_class_prior_loss_by_hand():
    assert class_prior_loss(list(range(10)) * 3, 10) == pytest.approx(math.log(10))
    # smoothing keeps a uniform prior uniform
    assert class_prior_loss(list(range(10)), 10, smoothing=0.1) == pytest.approx(math.log(10))
    # p = (3/4, 1/4): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
    assert class_prior_loss([0, 0, 0, 1], 2) == pytest.approx(0.562335, abs=1e-6)
    # smoothing 0.2: q = 0.8 p + 0.1 = (0.7, 0.3), H = 0.610864
    assert class_prior_loss([0, 0, 0, 1], 2, smoothing=0.2) == pytest.approx(0.610864, abs=1e-6)
    # 2 of 4 classes present, smoothing 0.1: q = (0.475, 0.475, 0.025, 0.025)
    q = (0.475, 0.475, 0.025, 0.025)
    assert class_prior_loss([0, 1], 4, smoothing=0.1) == pytest.approx(-sum(x * math.log(x) for x in q))


def test_loss_at_the_class_prior_level():
    prior = math.log(10)                                  # 2.302585; 95 % of it: 2.187456
    assert loss_warning(2.301, prior).startswith("training: final training loss 2.301")
    assert loss_warning(2.19, prior) is not None
    assert loss_warning(2.18, prior) is None
    assert loss_warning(None, prior) is None


# ------------------------------------------------------------------------ step floor
def test_min_steps_raises_epochs_on_small_data():
    ft = FinetunePlan(epochs=6)
    assert ft.epochs_for(23) == 6                         # no floor
    ft = FinetunePlan(epochs=6, min_steps=500)
    assert ft.epochs_for(23) == 22                        # ceil(500 / 23)
    assert ft.epochs_for(62) == 9                         # ceil(500 / 62)
    assert ft.epochs_for(100) == 6                        # enough steps already
    assert FinetunePlan(epochs=6, min_steps=500, grad_accum=2).epochs_for(23) == 44  # 11.5 / epoch
    assert LinearProbePlan(epochs=100, min_steps=1000).epochs_for(6) == 167


def test_explicit_epochs_are_taken_as_given():
    # the tiny preset's floor (500 steps) holds unless a row or the command line sets the
    # epochs alone; setting both keeps the floor
    plan = make_plan("part", "cifar100")
    assert with_step_floor(plan.finetune, plan.sources, "finetune").min_steps == 500
    plan = make_plan("part", "cifar100", cfg_options={"tasks.cifar100.finetune.epochs": 1})
    assert with_step_floor(plan.finetune, plan.sources, "finetune").min_steps is None
    plan = make_plan("part", "cifar100", row={"finetune.epochs": 1})
    assert with_step_floor(plan.finetune, plan.sources, "finetune").min_steps is None
    plan = make_plan("part", "cifar100", cfg_options={"tasks.cifar100.finetune.epochs": 1,
                                                      "tasks.cifar100.finetune.min_steps": 20})
    assert with_step_floor(plan.finetune, plan.sources, "finetune").min_steps == 20
    assert with_step_floor(plan.pretrain, plan.sources, "pretrain") is plan.pretrain


# ------------------------------------------------------------------------ protocol in the plan
def test_protocol_option_names_the_record_and_the_plan(tmp_path):
    opts = with_protocol("cifar100", "knn", {})
    plan = make_plan("part", "cifar100", cfg_options=opts)
    assert plan.options["protocol"].name == "knn" and plan.variant == "protocol.name=knn"
    paths = {p: cell_record_path("part", "cifar100", out=tmp_path,
                                 cfg_options=with_protocol("cifar100", p, {}))
             for p in ("finetune", "linear", "knn")}
    assert paths["finetune"].name == "part__cifar100__seed0.json"   # the default cell
    assert paths["knn"].name == "part[protocol.name=knn]__cifar100__seed0.json"
    assert len(set(paths.values())) == 3
    info = dry_run("part", "cifar100", cfg_options=opts, out=tmp_path)
    assert info["protocol"]["name"] == "knn" and "knn" in info["record"]["path"]
    with pytest.raises(ConfigError, match="protocol"):
        with_protocol("coco", "knn", {})
    with pytest.raises(ConfigError, match="unknown protocol"):
        from tasks import build_task

        build_task(make_plan("part", "cifar100",
                             cfg_options={"tasks.cifar100.protocol.name": "svm"}), tmp_path)


# ------------------------------------------------------------------------ through the task
def test_frozen_protocols_through_the_task(tmp_path, digits, monkeypatch):
    """A pretrained encoder.pth is evaluated frozen by kNN and by the linear probe: the
    weights in memory and on disk do not change, features are cached and reused."""
    from methods.backbone import build_encoder
    from tasks import build_task

    torch.manual_seed(0)
    folder = tmp_path / "pretrained"
    folder.mkdir()
    enc = build_encoder("vit_micro", img_size=32, patch_size=4, pos_embed="none")
    torch.save({"state_dict": enc.state_dict()}, folder / "encoder.pth")
    on_disk = file_hash(folder / "encoder.pth")

    hashes = watch_probe_encoder(monkeypatch)
    cache = tmp_path / "cache"
    results = {}
    for protocol in ("knn", "linear"):
        opts = with_protocol("cifar100", protocol, {"tasks.cifar100.probe.epochs": 3})
        plan = make_plan("part", "cifar100", data_root=digits, cfg_options=opts)
        task = build_task(plan, cache)
        task.prepare_data(quiet)
        results[protocol] = task.run(pretrained=folder, work_dir=tmp_path / protocol, log=quiet)
    assert set(results["knn"]) >= {"knn_acc1_cls", "knn_acc1_avg", "warnings"}
    assert set(results["linear"]) >= {"linear_acc1", "final_train_loss", "warnings"}
    assert results["knn"]["frozen_encoder"].startswith("pretrained")
    assert all(before == after for before, after in hashes) and len(hashes) == 2
    assert hashes[0][0] == state_hash(enc)                  # the checkpoint's weights, exactly
    assert file_hash(folder / "encoder.pth") == on_disk
    # one extraction: cls and avg of both splits, read back by the second protocol
    assert len(list((cache / "features").glob("*.pt"))) == 4
    # a random encoder's features on 200 real digits are above chance (10 %) already
    assert results["knn"]["knn_acc1_avg"] > 20.0
    assert not any(w.startswith("knn_acc1_avg") for w in results["knn"]["warnings"])


def test_run_cell_records_protocols_apart(tmp_path, digits):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    common = dict(data_root=digits, out=out, cache=cache, log=quiet)
    knn = run_cell("scratch", "cifar100", cfg_options=with_protocol("cifar100", "knn", {}), **common)
    lin = run_cell("scratch", "cifar100",
                   cfg_options=with_protocol("cifar100", "linear", {"tasks.cifar100.probe.epochs": 2}),
                   **common)
    # finetuning: 200 images at batch 64 are 3 steps an epoch; the floor raises 2 epochs to 4
    ft = run_cell("scratch", "cifar100", cfg_options={"tasks.cifar100.finetune.epochs": 2,
                                                      "tasks.cifar100.finetune.min_steps": 10},
                  **common)
    names = {r["path"] for r in (knn, lin, ft)}
    assert len(names) == 3
    assert json.loads(open(knn["path"]).read())["plan"]["protocol"]["name"] == "knn"
    assert "random initialisation" in knn["metrics"]["frozen_encoder"]
    assert isinstance(knn["warnings"], list) and "warnings" not in knn["metrics"]
    assert ft["metrics"]["finetune_epochs"] == 4 and ft["metrics"]["finetune_steps"] == 12
    # 12 steps from scratch learn nothing: the record says so
    assert any(w.startswith("training:") for w in ft["warnings"])
    assert any(w.startswith("acc1:") for w in ft["warnings"])


# ------------------------------------------------------------------------ tables
def _record(runs, method, seed, metrics, protocol=None, warnings=()):
    row = {"protocol.name": protocol} if protocol else {}
    write_cell_record(runs, method, "cifar100", seed, metrics, row=row, warnings=warnings)


TABLE = Table(
    title="test", reference="Ref",
    rows=(Row("Ref", "scratch"), Row("A", "mae"), Row("B", "mp3")),
    columns=(Column("kNN", "cifar100", "knn_acc1_cls", "", protocol="knn"),
             Column("ft", "cifar100", "acc1", "")))


def test_intervals_and_paired_significance_by_hand(tmp_path):
    runs = tmp_path / "runs"
    ref, a, b = (80.0, 82.0, 84.0), (85.0, 86.0, 88.0), (83.0, 80.0, 85.0)
    for seed in range(3):
        _record(runs, "scratch", seed, {"knn_acc1_cls": ref[seed]}, "knn")
        _record(runs, "mae", seed, {"knn_acc1_cls": a[seed]}, "knn")
        _record(runs, "mp3", seed, {"knn_acc1_cls": b[seed]}, "knn")
    _record(runs, "mae", 0, {"acc1": 70.0}, warnings=["acc1: 70.0% is within noise of ..."])
    _record(runs, "mae", 1, {"acc1": 71.0}, warnings=["knn_acc1_cls: not this column"])
    fill("test", "tiny", seeds=3, run=False, out_root=tmp_path, table=TABLE)
    df = pd.read_csv(tmp_path / "test.csv").set_index("row")
    t = 4.302652729911275                                  # t_{0.975, 2}
    # Ref: mean 82, std 2, half width t x 2 / sqrt(3) = 4.968
    assert df.loc["Ref", "kNN (ours, std)"] == pytest.approx(2.0)
    assert df.loc["Ref", "kNN (ours, ci95)"] == pytest.approx(t * 2 / math.sqrt(3))
    # A - Ref = (5, 4, 4): mean 4.333, std 0.57735, half width 1.434 -> [2.899, 5.768]
    assert df.loc["A", "kNN (ours, diff to reference)"] == pytest.approx(13 / 3)
    assert df.loc["A", "kNN (ours, diff ci low)"] == pytest.approx(13 / 3 - t * 0.5773503 / math.sqrt(3))
    assert bool(df.loc["A", "kNN (ours, significant)"])
    # B - Ref = (3, -2, 1): mean 0.667, std 2.517, half width 6.25: not significant
    assert not bool(df.loc["B", "kNN (ours, significant)"])
    md = (tmp_path / "test.md").read_text()
    assert "| Ref | 82.00 ± 2.00 [77.03, 86.97] |" in md
    assert format_mean_ci(ref, digits=2) == "82.00 ± 2.00 [77.03, 86.97]"
    assert f"| A | {format_mean_ci(a, digits=2)} * | 70.50 ± 0.71 [64.15, 76.85] ⚠ |" in md
    assert f"| B | {format_mean_ci(b, digits=2)} |" in md
    assert "A, kNN: +4.33 [+2.90, +5.77]" in md
    assert "- ⚠ A, ft, seed 0: acc1: 70.0% is within noise of ..." in md
    assert "not this column" not in md
