"""Throughput of every Runner phase: samples/s, seconds per iteration, peak memory, MFU.

:class:`ThroughputHook` (registered by :func:`engine.runner.build_runner`) times each
training and test iteration, from the end of one iteration to the end of the next (so
data loading, the step and every hook count: what a user waits for), skipping the first
iteration of a phase (allocation, cudnn autotuning) unless it is the only one. It

- puts ``samples_per_second`` (this process, over the last iterations) in the message
  hub, so mmengine's log line shows it beside the ETA;
- writes ``throughput.json`` into the Runner's work dir when a phase ends, one entry per
  Runner mode (``train``, ``test``), with the keys of :data:`KEYS`. The caller names the
  phases: a pretraining's ``train`` is the record's ``pretrain``, a task's ``train`` and
  ``test`` are ``finetune`` and ``eval`` (:func:`record_phases`).

Samples are per process (per device); ``world_size`` is stored beside them.
``peak_memory_mb``: on a GPU ``torch.cuda.max_memory_allocated`` since the phase began;
on a CPU the process's peak resident set (``ru_maxrss``, whole process lifetime).
``mfu`` (GPU only, else null): model FLOPs of one iteration, counted once per phase with
torch's ``FlopCounterMode`` (that iteration is left out of the timing), divided by the
seconds per iteration and the device's dense bf16 peak from :data:`BF16_PEAK_FLOPS`;
``mfu_note`` says "unknown device ..." for a GPU not in the table. ``precision`` and
``compiled`` say how the steps ran (the training precision the plan resolved to on this
device; the test phase is fp32).

Without a host read in every step (:mod:`engine.hostsync`) the host runs ahead of a GPU
by a few iterations and waits at the log intervals' reads: a window of ``window``
iterations between two such reads holds one wait, and the phase's totals hold every one
but the last (bounded by how far the host can run ahead).
"""
from __future__ import annotations

import collections
import json
import resource
import sys
import time
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ["ThroughputHook", "KEYS", "BF16_PEAK_FLOPS", "device_peak_flops", "count_samples",
           "peak_memory_mb", "read_throughput", "record_phases", "phase_summary"]

KEYS = ("samples_per_second", "seconds_per_iter", "peak_memory_mb", "mfu")
FILENAME = "throughput.json"

# Dense bf16 tensor-core peak per device (vendor data sheets), matched on the name
# torch.cuda.get_device_name reports; the first matching row wins.
BF16_PEAK_FLOPS = (
    (("H200",), 989.4e12),
    (("H100", "PCIE"), 756.0e12),
    (("H100", "NVL"), 835.0e12),
    (("H100",), 989.4e12),         # SXM ("NVIDIA H100 80GB HBM3")
    (("A100",), 312.0e12),         # SXM and PCIe
)


def device_peak_flops(name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name, or None for a device not in the table."""
    upper = name.upper()
    for parts, flops in BF16_PEAK_FLOPS:
        if all(p in upper for p in parts):
            return flops
    return None


def count_samples(batch) -> int:
    """Samples in one Runner batch: a dict of ``inputs``/``data_samples`` (collated tensors,
    or pseudo-collated lists), a tensor, or a list/tuple of either."""
    if isinstance(batch, dict):
        samples = batch.get("data_samples")
        if isinstance(samples, (list, tuple)) and samples:
            return len(samples)
        if torch.is_tensor(samples) and samples.ndim >= 1:
            return int(samples.shape[0])
        return count_samples(batch.get("inputs"))
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, dict) or (torch.is_tensor(first) and first.ndim >= 4):
            return count_samples(first)  # views of one batch, each (B, ...)
        return len(batch)
    return 0


def peak_memory_mb(cuda: bool | None = None) -> float:
    """Peak memory of this process: CUDA allocations since the last reset, else the
    peak resident set (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    if cuda if cuda is not None else torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def phase_summary(samples: int, seconds: float, iters: int, *, peak_mb: float,
                  flops_per_iter: float | None = None, peak_flops: float | None = None,
                  world_size: int = 1, device: str = "cpu", note: str | None = None,
                  precision: str | None = None, compiled: bool | None = None) -> dict:
    """The record's entry for one phase (``None`` where nothing was timed). ``precision``:
    the training step's resolved precision (bf16, fp16, fp32; :mod:`engine.precision`),
    ``compiled``: whether the model's forward was compiled."""
    sps = samples / seconds if seconds > 0 else None
    spi = seconds / iters if iters else None
    mfu = (flops_per_iter / spi / peak_flops if flops_per_iter and peak_flops and spi else None)
    return dict(samples_per_second=sps, seconds_per_iter=spi, peak_memory_mb=peak_mb, mfu=mfu,
                mfu_note=note, flops_per_iter=flops_per_iter, iterations=iters, samples=samples,
                world_size=world_size, device=device, precision=precision, compiled=compiled)


@HOOKS.register_module()
class ThroughputHook(Hook):
    """See the module docstring. ``window``: iterations the logged samples/s covers;
    ``precision``/``compiled``: how the Runner's steps run, stored in each entry (the
    test phase runs in fp32 whatever the training precision: :mod:`engine.precision`)."""

    priority = "HIGHEST"  # before the RuntimeInfoHook: samples/s comes first in the log line

    def __init__(self, window: int = 20, skip: int = 1, precision: str | None = None,
                 compiled: bool | None = None):
        self.window, self.skip = int(window), int(skip)
        self.precision, self.compiled = precision, compiled
        self._state: dict[str, dict] = {}

    # -------------------------------------------------------------- generic per mode
    def _begin(self, mode: str) -> None:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        self._state[mode] = dict(last=time.perf_counter(), seen=0, samples=0, seconds=0.0,
                                 iters=0, recent=collections.deque(maxlen=self.window),
                                 flops=None, counter=None, cuda=cuda, skipped=(0, 0.0, 0))

    def _before_iter(self, mode: str) -> None:
        s = self._state.get(mode)
        if s is None or not s["cuda"] or s["flops"] is not None or s["seen"] != self.skip:
            return
        from torch.utils.flop_counter import FlopCounterMode

        s["counter"] = FlopCounterMode(display=False)
        s["counter"].__enter__()

    def _after_iter(self, runner, mode: str, data_batch) -> None:
        s = self._state.get(mode)
        if s is None:
            return
        now = time.perf_counter()
        dt, s["last"] = now - s["last"], now
        s["seen"] += 1
        if s["counter"] is not None:  # the counted iteration is not timed
            s["counter"].__exit__(None, None, None)
            s["flops"] = float(s["counter"].get_total_flops())
            s["counter"] = None
            return
        n = count_samples(data_batch)
        if s["seen"] <= self.skip:  # kept apart: used only if no other iteration comes
            s["skipped"] = (s["skipped"][0] + n, s["skipped"][1] + dt, s["skipped"][2] + 1)
            if mode == "train" and dt > 0:  # the log line has the rate from the start
                runner.message_hub.update_scalar("train/samples_per_second", n / dt)
            return
        s["samples"] += n
        s["seconds"] += dt
        s["iters"] += 1
        s["recent"].append((n, dt))
        if mode == "train":
            seconds = sum(t for _, t in s["recent"])
            if seconds > 0:
                runner.message_hub.update_scalar(
                    "train/samples_per_second", sum(k for k, _ in s["recent"]) / seconds)

    def _end(self, runner, mode: str) -> None:
        s = self._state.pop(mode, None)
        if s is None:
            return
        if s["counter"] is not None:
            s["counter"].__exit__(None, None, None)
        cuda = s["cuda"]
        note, peak, device = None, None, "cpu"
        if cuda:
            torch.cuda.synchronize()
            device = torch.cuda.get_device_name()
            peak = device_peak_flops(device)
            if peak is None:
                note = f"unknown device {device}: no bf16 peak to divide by"
        from mmengine.dist import get_world_size, is_main_process

        if not s["iters"]:  # a phase of only warm-up iterations: time those
            s["samples"], s["seconds"], s["iters"] = s["skipped"]
        entry = phase_summary(s["samples"], s["seconds"], s["iters"], peak_mb=peak_memory_mb(cuda),
                              flops_per_iter=s["flops"], peak_flops=peak,
                              world_size=get_world_size(), device=device, note=note,
                              precision=self.precision if mode == "train" else "fp32",
                              compiled=self.compiled)
        if is_main_process():
            write_throughput(Path(runner.work_dir), mode, entry)

    # -------------------------------------------------------------- mmengine's events
    def before_train(self, runner) -> None:
        self._begin("train")

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._before_iter("train")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._after_iter(runner, "train", data_batch)

    def after_train(self, runner) -> None:
        self._end(runner, "train")

    def before_test(self, runner) -> None:
        self._begin("test")

    def before_test_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._before_iter("test")

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._after_iter(runner, "test", data_batch)

    def after_test(self, runner) -> None:
        self._end(runner, "test")


def write_throughput(folder: Path, mode: str, entry: dict) -> None:
    from .atomic import atomic_write_json

    data = read_throughput(folder)
    data[mode] = entry
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / FILENAME, data, indent=1)


def read_throughput(folder) -> dict:
    """``throughput.json`` of a folder as written by the hook ({} when there is none)."""
    try:
        return json.loads((Path(folder) / FILENAME).read_text())
    except (OSError, ValueError):
        return {}


def record_phases(pretrain_folder=None, task_work_dir=None) -> dict:
    """The record's ``throughput``: ``pretrain`` from the pretrained folder (its
    ``throughput.json``, written next to the checkpoint, so a cached pretraining reports
    it), ``finetune`` and ``eval`` from the task's Runner work dir; a phase that did not
    run (no pretraining, a frozen protocol's training) is null."""
    pre = read_throughput(pretrain_folder).get("train") if pretrain_folder else None
    task = read_throughput(task_work_dir) if task_work_dir else {}
    return {"pretrain": pre, "finetune": task.get("train"), "eval": task.get("test")}
