"""Throughput in every record (engine/throughput.py), and the speed benchmark's ratio
arithmetic (benchmarks/speed.py), checked on numbers worked out by hand."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import speed
from engine.throughput import (KEYS, ThroughputHook, count_samples, device_peak_flops,
                               phase_summary, read_throughput, record_phases)


# ---------------------------------------------------------------- the hook, by hand
def test_count_samples_of_every_batch_layout():
    assert count_samples({"inputs": torch.zeros(5, 3, 8, 8), "data_samples": torch.zeros(5)}) == 5
    assert count_samples({"inputs": [torch.zeros(3, 8, 8)] * 4, "data_samples": list("abcd")}) == 4
    assert count_samples({"inputs": torch.zeros(6, 3, 8, 8)}) == 6
    assert count_samples({"inputs": [torch.zeros(7, 3, 8, 8), torch.zeros(7, 3, 4, 4)]}) == 7
    assert count_samples(torch.zeros(3, 2)) == 3


def test_device_peaks_and_mfu_arithmetic():
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert device_peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert device_peak_flops("NVIDIA H200") == 989.4e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB") == 312.0e12
    assert device_peak_flops("NVIDIA GeForce RTX 4090") is None
    # 100 samples in 4 s over 10 iterations: 25 samples/s, 0.4 s/iter;
    # 1e12 FLOPs per iteration / 0.4 s / 10e12 peak = 0.25
    e = phase_summary(100, 4.0, 10, peak_mb=12.0, flops_per_iter=1e12, peak_flops=10e12)
    assert e["samples_per_second"] == pytest.approx(25.0)
    assert e["seconds_per_iter"] == pytest.approx(0.4)
    assert e["mfu"] == pytest.approx(0.25)
    assert phase_summary(100, 4.0, 10, peak_mb=1.0)["mfu"] is None  # CPU: no peak, no MFU


def test_hook_times_iterations_writes_json_and_logs_samples_per_second(tmp_path, monkeypatch):
    from mmengine.logging import MessageHub

    clock = iter([0.0, 1.0, 1.5, 2.0, 2.5, 10.0, 10.2, 10.4])
    monkeypatch.setattr("engine.throughput.time.perf_counter", lambda: next(clock))
    runner = SimpleNamespace(work_dir=str(tmp_path),
                             message_hub=MessageHub.get_instance("throughput-test"))
    hook = ThroughputHook(window=2)
    batch = {"inputs": torch.zeros(4, 3, 2, 2), "data_samples": torch.zeros(4)}
    hook.before_train(runner)                          # t = 0
    for i in range(4):                                 # ends at 1.0 (skipped), 1.5, 2.0, 2.5
        hook.before_train_iter(runner, i, batch)
        hook.after_train_iter(runner, i, batch)
    hook.after_train(runner)
    train = read_throughput(tmp_path)["train"]
    assert set(KEYS) <= set(train)
    assert train["iterations"] == 3 and train["samples"] == 12
    assert train["seconds_per_iter"] == pytest.approx(0.5)
    assert train["samples_per_second"] == pytest.approx(8.0)
    assert train["mfu"] is None and train["peak_memory_mb"] > 0
    # the log line's scalar: the last two iterations, 8 samples in 1 s
    assert runner.message_hub.get_scalar("train/samples_per_second").current() == pytest.approx(8.0)
    hook.before_test(runner)                           # t = 10
    for i in range(3):                                 # 10.2 (skipped), 10.4, then 10.6
        if i == 2:
            monkeypatch.setattr("engine.throughput.time.perf_counter", lambda: 10.6)
        hook.after_test_iter(runner, i, batch)
    hook.after_test(runner)
    data = read_throughput(tmp_path)
    assert data["test"]["seconds_per_iter"] == pytest.approx(0.2)
    assert data["test"]["samples_per_second"] == pytest.approx(20.0)
    assert data["train"] == train  # one phase's entry does not replace the other's
    phases = record_phases(None, tmp_path)
    assert phases["pretrain"] is None and phases["finetune"] == train
    assert phases["eval"] == data["test"]


# ---------------------------------------------------------------- a tiny real run
def test_record_carries_throughput_of_every_phase_also_from_a_cached_pretraining(tmp_path,
                                                                                 one_torch_thread):
    from pipeline.cell import run_cell

    opts = {"tasks.cifar100.data.embedded.num_train": 128, "tasks.cifar100.data.embedded.num_test": 32,
            "tasks.cifar100.pretrain.epochs": 1, "tasks.cifar100.pretrain.warmup_epochs": 0,
            "tasks.cifar100.finetune.epochs": 1, "tasks.cifar100.finetune.min_steps": 0,
            "tasks.cifar100.loader.num_workers": 0, "methods.part.num_pairs": 64}
    logs = []
    rec = run_cell("part", "cifar100", cache=tmp_path / "cache", out=tmp_path / "runs",
                   cfg_options=opts, log=logs.append)
    on_disk = json.loads(Path(rec["path"]).read_text())
    for phase in ("pretrain", "finetune", "eval"):
        entry = on_disk["throughput"][phase]
        assert set(KEYS) <= set(entry), phase
        assert entry["samples_per_second"] > 0 and entry["seconds_per_iter"] > 0
        assert entry["peak_memory_mb"] > 0
        assert entry["mfu"] is None  # CPU
    folder = Path(on_disk["pretrained_checkpoint"])
    meta = torch.load(folder / "method.pth", weights_only=True)
    assert meta["throughput"] == on_disk["throughput"]["pretrain"]
    # the task's work dir keeps no stale throughput for a rerun
    assert not list((tmp_path / "cache" / "runs").glob("*/throughput.json"))
    # another task on the cached pretraining still reports the pretraining's throughput
    opts["tasks.cifar100.finetune.epochs"] = 2
    rec2 = run_cell("part", "cifar100", cache=tmp_path / "cache", out=tmp_path / "runs2",
                    cfg_options=opts, log=logs.append)
    assert any("reusing cached checkpoint" in line for line in logs)
    assert rec2["throughput"]["pretrain"] == on_disk["throughput"]["pretrain"]
    assert rec2["throughput"]["finetune"]["iterations"] >= 1


# ---------------------------------------------------------------- ratios, by hand
def test_round_ratios_pair_each_method_time_with_its_own_rounds_plain_time():
    # plain 1, 2, 4 s (the machine got slower), method 1.1, 2.2, 4.4 s: every round x1.1
    assert speed.round_ratios([1, 2, 4], [1.1, 2.2, 4.4]) == pytest.approx([1.1, 1.1, 1.1])
    # a median of each side separately would give 2.2 / 2 as well, but not here:
    # plain 1, 1, 4; method 1.2, 4.4, 4.4 -> ratios 1.2, 4.4, 1.1 -> median 1.2
    assert speed.ratio_summary(speed.round_ratios([1, 1, 4], [1.2, 4.4, 4.4]))[0] == pytest.approx(1.2)
    with pytest.raises(ValueError):
        speed.round_ratios([1, 2], [1])


def test_ratio_summary_median_and_inclusive_quartiles():
    assert speed.ratio_summary([1.0, 1.2, 1.1, 1.4, 1.3]) == pytest.approx((1.2, 1.1, 1.3))
    # four values 1, 2, 3, 4: median 2.5, inclusive quartiles 1.75 and 3.25
    assert speed.ratio_summary([4, 1, 3, 2]) == pytest.approx((2.5, 1.75, 3.25))
    assert speed.ratio_summary([1.05]) == (1.05, 1.05, 1.05)


def test_identical_computations_agree_within_three_percent():
    assert speed.same_within(1.02, 1.0) and speed.same_within(1.30, 1.30 * 1.029)
    assert not speed.same_within(1.34, 1.47)  # the 13% a sequential median once read
    rows = [dict(name="plain ViT", ratio=1.01), dict(name="mp3", ratio=1.34),
            dict(name="mp3-nope", ratio=1.35)]
    checks = speed.identity_checks(rows)
    assert [c[0] for c in checks] == ["plain ViT vs itself", "mp3 vs mp3-nope"]
    assert all(ok for *_, ok in checks)
    assert checks[1][1] == pytest.approx(1.34 / 1.35)


def test_interleaved_alternates_the_order_within_rounds():
    calls = []
    plain, method = speed.interleaved(lambda: calls.append("p"), lambda: calls.append("m"), 4,
                                      lambda: None)
    assert calls == ["p", "m", "p", "m", "m", "p", "p", "m", "m", "p"]  # warm-up, then ABBA
    assert len(plain) == len(method) == 4


def test_pairs_growth_against_2048_pairs():
    # ratios to the plain step: x1.1 at 2048 pairs, x1.65 at 4096, x2.75 at 8192
    rows = [dict(img=224, pairs=p, ratio=r) for p, r in ((1024, 1.0), (2048, 1.1), (4096, 1.65),
                                                         (8192, 2.75))]
    growth = speed.pairs_growth(rows)
    assert [g[:2] for g in growth] == [(224, 4096), (224, 8192)]
    assert [g[2:] for g in growth] == [pytest.approx((1.5, 2.0)), pytest.approx((2.5, 4.0))]
