"""Scale out: two processes (torchrun, gloo on CPU) train and evaluate as one.

:mod:`tests.scale_out_worker` runs a few pretraining steps of PART and of MAE and one
classifier evaluation on mmengine's Runner, once as a single process and once as two
DDP ranks on the same global batch. After every step the two ranks hold bitwise the
same weights, and the weights and the loss (the mean of the ranks' losses) equal the
single process's to float32 round-off: the runs differ only in the order gradients are
summed (two half-batch sums averaged by the all-reduce, against one sum), which changes
the last bits of the gradients (the losses agree to 1e-5 relative). AdamW then divides
each gradient entry by its running magnitude, so where a gradient is near AdamW's eps
those last bits move a weight by a visible fraction of the lr: we allow 2 % of the lr
(2e-5; measured: 3e-6), and 10 % for attention key biases, whose true gradient is zero
(measured: 2.5e-5), against steps of ~1e-3. The evaluation gathers every rank's predictions (13 images over 2
ranks, one padded): the metric is the whole set's, 9/13, on both ranks.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.runner import export_slurm_ranks, launcher_from_env

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "scale_out_worker.py"
STEPS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale_out")
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_PROCID")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    torchrun = Path(sys.executable).parent / "torchrun"
    # both at once: most of their time is importing, which overlaps well
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
             for cmd in ([sys.executable, str(WORKER), str(out)],
                         [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533",
                          str(WORKER), str(out)])]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return out


def _load(out: Path, name: str):
    return torch.load(out / f"{name}.pt", weights_only=True)


LR = 1e-3  # the worker's


def _tolerances(key: str, a: torch.Tensor, b: torch.Tensor):
    """(difference, tolerance) pieces of one parameter. AdamW normalises every gradient
    entry, so an entry whose gradient is near its eps (1e-8) steps by an lr-sized amount
    that round-off shifts: 2 % of the lr. The key part of an attention's in-projection
    bias has no gradient at all (softmax ignores a shift shared by all keys), only
    round-off, which AdamW turns into steps of up to lr x noise / eps: 10 % of the lr."""
    diff = (a.float() - b.float())
    if key.endswith(("qkv.bias", "in_proj_bias")):
        n = diff.shape[0] // 3
        return [(torch.cat([diff[:n], diff[2 * n:]]), 0.02 * LR), (diff[n:2 * n], 0.1 * LR)]
    return [(diff, 0.02 * LR)]


@pytest.mark.parametrize("method", ["part", "mae"])
def test_two_ranks_step_as_one_process_on_the_same_global_batch(runs, method):
    start = None
    for step in range(STEPS):
        r0 = _load(runs, f"{method}_ws2_r0_s{step}")
        r1 = _load(runs, f"{method}_ws2_r1_s{step}")
        one = _load(runs, f"{method}_ws1_r0_s{step}")
        assert r0["state"].keys() == one["state"].keys()
        for k, v in r0["state"].items():
            assert torch.equal(v, r1["state"][k]), f"step {step}: ranks differ in {k}"
            for part, tol in _tolerances(k, v, one["state"][k]):
                err = part.abs().max().item()
                assert err <= tol, f"step {step}: {k} differs from one process by {err:.3g}"
        # each rank's loss is its half's mean; their mean is the global batch's loss
        assert abs((r0["loss"] + r1["loss"]) / 2 - one["loss"]) <= 1e-5 * abs(one["loss"])
        assert r0["loss"] != r1["loss"], "the ranks trained on the same half"
        if start is None:
            start = one["state"]
    moved = max((start[k] - one["state"][k]).abs().max().item() for k in start
                if start[k].is_floating_point())
    assert moved > 1e-4, "the weights did not change: the comparison would be vacuous"


def test_ddp_evaluation_gathers_every_rank(runs):
    one = _load(runs, "eval_ws1_r0")
    expected = 100.0 * 9 / 13
    assert one["metrics"]["acc1"] == pytest.approx(expected)
    for rank in (0, 1):
        assert _load(runs, f"eval_ws2_r{rank}")["metrics"] == one["metrics"]


SRUN_TASK = {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16",
             "SLURM_STEP_NUM_TASKS": "16", "SLURM_NODELIST": "gpu[01-02]"}


@pytest.mark.parametrize("env, launcher", [
    ({}, "none"),
    ({"WORLD_SIZE": "1"}, "none"),
    ({"WORLD_SIZE": "8", "RANK": "3", "TORCHELASTIC_RUN_ID": "x"}, "pytorch"),
    (SRUN_TASK, "slurm"),
    # a batch script outside srun: SLURM_PROCID and SLURM_NTASKS, no step
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "16"}, "none"),
    # srun of one task that runs torchrun: torchrun's ranks
    ({**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1", "WORLD_SIZE": "8",
      "TORCHELASTIC_RUN_ID": "x"}, "pytorch"),
    ({**SRUN_TASK, "WORLD_SIZE": "16", "TORCHELASTIC_RUN_ID": "x"}, "pytorch"),
])
def test_launcher_from_env(env, launcher):
    env = dict(env)
    assert launcher_from_env(env) == launcher
    export_slurm_ranks(env)
    if launcher == "slurm":  # what mmengine's slurm launcher sets, before the plan divides
        assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_RANK"]) == ("16", "9", "1")
        assert launcher_from_env(env) == "slurm"
    else:
        assert "RANK" not in env or env["RANK"] != "9"


def test_plan_under_srun_divides_the_batch_by_slurm_tasks(monkeypatch):
    from pipeline.cell import make_plan

    for k, v in SRUN_TASK.items():
        monkeypatch.setenv(k, v)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.setenv(k, "0")  # so that monkeypatch restores what export_slurm_ranks sets
        monkeypatch.delenv(k)
    export_slurm_ranks()
    plan = make_plan("part", "cifar100", preset="paper", data_root="/nonexistent")
    assert plan.world_size == 16
    assert plan.pretrain_batch() == plan.pretrain.global_batch_size // 16
