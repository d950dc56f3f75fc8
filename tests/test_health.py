"""Collapse monitoring (engine.health): the statistics against hand-computed values, the
warning rule, and a deliberately collapsed encoder flagged through the command line."""
import json
import math

import pytest
import torch
from forked_cli import run_cli

from engine.health import (COLLAPSE_FRACTION, effective_rank, embedding_health, health_warnings,
                           normalized_std)


def test_constant_features_have_zero_spread_and_rank_one():
    x = torch.tensor([[1.0, 2.0, 3.0]]).repeat(50, 1)
    assert normalized_std(x) == 0.0
    assert effective_rank(x) == pytest.approx(1.0)


def test_two_points_by_hand():
    # rows (3, 0) and (0, 1): normalised (1, 0), (0, 1); each column's std (ddof 0) is 0.5;
    # singular values 3 and 1 -> p = (3/4, 1/4), exp(entropy) = exp(0.5623) = 1.7548
    x = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    h = embedding_health(x)
    assert h["std"] == pytest.approx(0.5)
    assert h["std_ratio"] == pytest.approx(0.5 * math.sqrt(2))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert h["effective_rank"] == pytest.approx(math.exp(entropy))
    assert h["effective_rank"] == pytest.approx(1.7548, abs=1e-4)


def test_isotropic_gaussian_features_use_every_direction():
    d = 16
    x = torch.randn(20000, d, generator=torch.Generator().manual_seed(0))
    h = embedding_health(x)
    assert h["std"] == pytest.approx(1 / math.sqrt(d), rel=0.02)  # a unit vector's coordinate
    assert h["std_ratio"] == pytest.approx(1.0, rel=0.02)
    assert d - 0.5 < h["effective_rank"] <= d
    # the same features squeezed onto 2 directions lose both
    squeezed = x[:, :2] @ torch.randn(2, d, generator=torch.Generator().manual_seed(1))
    assert effective_rank(squeezed) < 2.0 + 1e-6


def test_the_warning_rule():
    start = {t: {"std_ratio": 0.8, "effective_rank": 40.0} for t in ("cls", "avg")}
    fine = {"cls": {"std_ratio": 0.1, "effective_rank": 4.0},  # [CLS] is not judged
            "avg": {"std_ratio": 0.8 * COLLAPSE_FRACTION + 0.01, "effective_rank": 30.0}}
    assert health_warnings(start, fine) == []
    low = {"cls": start["cls"],
           "avg": {"std_ratio": 0.8 * COLLAPSE_FRACTION - 0.01,
                   "effective_rank": 40.0 * COLLAPSE_FRACTION - 1}}
    lines = health_warnings(start, low)
    assert len(lines) == 2 and all(w.startswith("pretraining:") for w in lines)
    assert "mean token std" in lines[0] and "mean token effective rank" in lines[1]


def test_a_collapsed_encoder_is_flagged_through_the_command_line(tmp_path):
    cifar = "tasks.cifar100"
    args = ["--method", "part", "--task", "cifar100", "--out", str(tmp_path / "runs"),
            "--cache", str(tmp_path / "cache"), "--cfg-options",
            f"{cifar}.data.embedded.num_train=64", f"{cifar}.data.embedded.num_test=32",
            f"{cifar}.loader.num_workers=0", f"{cifar}.loader.log_interval=2",
            f"{cifar}.pretrain.epochs=1", f"{cifar}.pretrain.global_batch_size=16",
            f"{cifar}.finetune.epochs=1", f"{cifar}.finetune.min_steps=2",
            f"{cifar}.finetune.global_batch_size=16"]
    status, out, err = run_cli(args, tmp_path, fault="collapse@pretrain")
    assert status == 0, err[-2000:]
    assert "[health] iter 0:" in out + err
    record = json.loads(next((tmp_path / "runs").glob("part*__cifar100__seed0.json")).read_text())
    health = record["pretrain_health"]
    assert health["final"]["avg"]["std_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert health["final"]["avg"]["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert health["initial"]["avg"]["effective_rank"] > 5  # the random encoder's
    flagged = [w for w in record["warnings"] if w.startswith("pretraining:")]
    assert len(flagged) == 2, record["warnings"]  # both statistics of the mean token
    assert "WARNING: pretraining:" in out
    # the same run without the fault: no such warning
    (tmp_path / "runs2").mkdir()
    status, out, err = run_cli([a.replace(str(tmp_path / "runs"), str(tmp_path / "runs2"))
                                .replace(str(tmp_path / "cache"), str(tmp_path / "cache2"))
                                for a in args], tmp_path / "runs2")
    assert status == 0, err[-2000:]
    record = json.loads(next((tmp_path / "runs2").glob("part*__cifar100__seed0.json")).read_text())
    assert not [w for w in record["warnings"] if w.startswith("pretraining:")]
