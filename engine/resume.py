"""Surviving kills, preemption and half-written checkpoints (used by :func:`engine.runner.build_runner`).

- :class:`SuiteRunner`: mmengine's Runner with two changes. Its checkpoints are written
  to a temporary file and renamed (a kill or a full disk mid-write leaves the previous
  checkpoint and ``last_checkpoint`` as they were), and automatic resume validates the
  checkpoint it picks: a truncated or unreadable newest one is named and the previous
  one is used. Every resume is logged on one line and appended to ``resumes.json`` in
  the work dir (the run record reports it).
- :class:`ResumableEpochBasedTrainLoop`: mmengine 0.10.7's ``EpochBasedTrainLoop``
  resumes only at epoch boundaries (``Runner.resume`` sets the loop's epoch and
  iteration counters; ``run_epoch`` then iterates the whole epoch from its first
  batch). This loop also resumes inside an epoch: it skips the batches the checkpoint
  had already trained on (they are loaded and dropped, as mmengine's
  ``IterBasedTrainLoop`` does) and restores the random state, so a resumed run draws
  what the uninterrupted one would have drawn.
- :class:`ResumeStateHook`: puts the random state (torch, numpy, Python, CUDA) into
  every checkpoint: now, and at the start of the current epoch (the DataLoader draws
  its workers' base seed from it when the epoch's iterator is created).
- :class:`PreemptionHook`: SIGTERM (what Slurm sends before preempting or at the time
  limit) sets a flag; after the current iteration the hook saves ``iter_<N>.pth``,
  points ``last_checkpoint`` at it and raises :class:`Preempted`. The command prints
  one line and exits with status 143; the same command resumes from that iteration.
  Under DDP the ranks agree on the flag at the next sync iteration (at most
  ``log_interval`` - 1 iterations later: :mod:`engine.hostsync`), not every iteration:
  the agreement is a collective whose result the host must read.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import signal
import zipfile
from pathlib import Path

import numpy as np
import torch
from mmengine.dist import is_main_process, master_only
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS, LOOPS
from mmengine.runner import EpochBasedTrainLoop, Runner

from .atomic import atomic_path, atomic_write, atomic_write_json
from .hostsync import DeferredReads, sync_iteration, world_size

__all__ = ["SuiteRunner", "ResumableEpochBasedTrainLoop", "ResumeStateHook", "PreemptionHook",
           "Preempted", "pick_resume_checkpoint", "read_resumes", "rng_state", "set_rng_state"]


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint (not an error of the run)."""


# ------------------------------------------------------------------------ random state
def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), python=random.getstate(),
                 numpy=[kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------ checkpoints
def _readable(path: Path) -> str | None:
    """None if ``path`` is a complete torch checkpoint (a zip archive whose every member
    passes its CRC check), else why not."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        return None if bad is None else f"member {bad} fails its checksum"
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"


def pick_resume_checkpoint(work_dir: Path, log=print) -> Path | None:
    """The checkpoint to resume from: the one ``last_checkpoint`` names if it is whole,
    else the newest whole one in ``work_dir``; each one skipped is named in a line."""
    work_dir = Path(work_dir)
    candidates = sorted(list(work_dir.glob("epoch_*.pth")) + list(work_dir.glob("iter_*.pth")),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    marker = work_dir / "last_checkpoint"
    if marker.exists():
        named = Path(marker.read_text().strip())
        if named.name and (work_dir / named.name).exists():
            named = work_dir / named.name
            candidates = [named] + [c for c in candidates if c != named]
        elif named.name:
            log(f"[resume] last_checkpoint names {named}, which does not exist")
    for ckpt in candidates:
        why = _readable(ckpt)
        if why is None:
            return ckpt
        log(f"[resume] checkpoint {ckpt} is truncated or unreadable ({why}); trying the previous one")
    return None


def read_resumes(work_dir) -> list[dict]:
    path = Path(work_dir) / "resumes.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


#: the starts of mmengine's set-up lines a run does not print unless verbose
#: (``PART_BENCH_VERBOSE=1``, ``--verbose``): its environment block, its hook table,
#: the SyncBN note, its config dump, and the deprecation notices its CheckpointHook
#: triggers on every start (it builds a FileClient it does not use) and on resume
SETUP_NOISE = ("\n" + "-" * 60 + "\nSystem environment:", "Hooks will be executed in the following order",
               "Distributed training is not used, all SyncBatchNorm", "Config:\n",
               '"FileClient" will be deprecated', '"HardDiskBackend" is the alias of')


class QuietSetup(logging.Filter):
    """Drops mmengine's set-up lines (:data:`SETUP_NOISE`); training lines pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(SETUP_NOISE)


def verbose() -> bool:
    return os.environ.get("PART_BENCH_VERBOSE", "") not in ("", "0")


class SuiteRunner(Runner):
    """mmengine's Runner with atomic checkpoint writes, a validated resume, the device
    reads its hooks deferred done before a checkpoint is written, ``torch.compile``
    applied to the model's forward only (:meth:`_maybe_compile`), and its set-up lines
    left out of the log unless verbose (:class:`QuietSetup`)."""

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        if not verbose() and not any(isinstance(f, QuietSetup) for f in logger.filters):
            logger.addFilter(QuietSetup())
        return logger

    @master_only
    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        for hook in self.hooks:  # a non-finite loss not yet read stops the save here
            if isinstance(hook, DeferredReads):
                hook.flush(self)
        with atomic_path(Path(out_dir) / filename) as tmp:  # mmengine writes it by name
            super().save_checkpoint(out_dir, tmp.name, *args, **kwargs)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())

    def _maybe_compile(self, target: str) -> None:
        """``cfg.compile`` (True or ``torch.compile`` options): mmengine 0.10.7 compiles the
        wrapped model's ``train_step`` (data preprocessing, forward, loss parsing and the
        optimizer wrapper's backward and update, in one traced function). We compile the
        model's forward only, with ``nn.Module.compile`` (parameter names unchanged, so
        checkpoints load into an eager model); backward runs through the compiled graph's
        autograd, and the optimizer step, loss parsing and hooks stay eager. A compiled
        run's random draws and reduction order need not match an eager run's bit for bit."""
        options = self.cfg.get("compile", None)
        if not options or target != "train_step":
            return
        options = {} if options is True else dict(options)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        model.compile(**options)
        self.logger.info(f"torch.compile: the model's forward ({type(model).__name__}) is compiled "
                         f"on its first call ({options or 'default options'})")

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return None
        if self._resume and self._load_from is None:
            if is_main_process():  # what a killed checkpoint write left behind
                for tmp in Path(self.work_dir).glob(".*.pth.*.tmp"):
                    self.logger.info(f"[resume] removing the unfinished write {tmp}")
                    tmp.unlink(missing_ok=True)
            ckpt = pick_resume_checkpoint(Path(self.work_dir), log=self.logger.info)
            if ckpt is None:
                return None  # nothing (whole) to resume from: a fresh start
            self._load_from = str(ckpt)
        return super().load_or_resume()

    def load_checkpoint(self, filename, *args, **kwargs):
        checkpoint = super().load_checkpoint(filename, *args, **kwargs)
        self._suite_loaded = checkpoint
        return checkpoint

    def resume(self, filename, *args, **kwargs) -> None:
        super().resume(filename, *args, **kwargs)
        checkpoint = getattr(self, "_suite_loaded", None) or {}
        self._suite_loaded = None
        meta = checkpoint.get("meta", {})
        in_epoch = int(meta.get("batch_in_epoch", 0))
        loop = self.train_loop
        if isinstance(loop, ResumableEpochBasedTrainLoop):
            loop.resume_state = dict(rng=checkpoint.get("suite_rng"), skip=in_epoch)
        if self.iter >= loop.max_iters:
            return  # training was over (``test()`` after ``train()`` reloads the last state)
        where = f"epoch {self.epoch + 1}, batch {in_epoch + 1}" if in_epoch else f"the start of epoch {self.epoch + 1}"
        print(f"[resume] {self.experiment_name}: resuming from {filename} (iteration {self.iter}, "
              f"{where})", flush=True)
        if is_main_process():
            entry = dict(checkpoint=Path(filename).name, iteration=self.iter, epoch=self.epoch,
                         batch_in_epoch=in_epoch, at=dt.datetime.now(dt.timezone.utc).isoformat())
            atomic_write_json(Path(self.work_dir) / "resumes.json", read_resumes(self.work_dir) + [entry],
                              indent=1)


# ------------------------------------------------------------------------ the loop
@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes mid-epoch (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_state: dict | None = None
        self.epoch_rng: dict | None = None

    def run_epoch(self) -> None:
        self.runner.call_hook("before_train_epoch")
        self.runner.model.train()
        resume, self.resume_state = self.resume_state, None
        rng = (resume or {}).get("rng") or {}
        skip = (resume or {}).get("skip", 0)
        if rng:
            set_rng_state(rng.get("epoch_start") or rng["now"])
        self.epoch_rng = rng_state()  # the DataLoader's iterator draws its base seed next
        if rng and not skip:
            set_rng_state(rng["now"])
        for idx, data_batch in enumerate(self.dataloader):
            if idx < skip:  # trained on before the checkpoint: loaded and dropped
                if idx == skip - 1 and rng:
                    set_rng_state(rng["now"])
                continue
            self.run_iter(idx, data_batch)
        self.runner.call_hook("after_train_epoch")
        self._epoch += 1


# ------------------------------------------------------------------------ hooks
@HOOKS.register_module()
class ResumeStateHook(Hook):
    """Saves the random state with every checkpoint (restored by the loop on resume)."""

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        now = rng_state()
        loop = runner.train_loop
        start = getattr(loop, "epoch_rng", None)
        mid_epoch = int(checkpoint.get("meta", {}).get("batch_in_epoch", 0)) > 0
        checkpoint["suite_rng"] = dict(now=now, epoch_start=start if mid_epoch and start else now)


@HOOKS.register_module()
class PreemptionHook(Hook):
    """On SIGTERM: finish the current iteration, save a checkpoint, stop (module docstring).
    One process stops after the iteration the signal arrived in (the flag is a host
    value); under DDP the flag is reduced over the ranks at sync iterations (every
    ``interval`` batches and an epoch's last), so every rank stops at the same step."""

    priority = "LOWEST"  # after every other hook of the iteration (scheduler step, logging)

    def __init__(self, interval: int = 1):
        self.interval = max(1, int(interval))
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        self.requested = True

    def before_train(self, runner) -> None:
        self.requested = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None

    def after_train(self, runner) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if world_size() > 1:
            if not sync_iteration(runner, batch_idx, self.interval):
                return
            import torch.distributed as dist

            flag = torch.tensor([1.0 if self.requested else 0.0],
                                device=next(runner.model.parameters()).device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
            stop = flag.item() > 0
        else:
            stop = self.requested
        if not stop:
            return
        done, in_epoch = runner.iter + 1, batch_idx + 1
        name = f"iter_{done}.pth"
        runner.save_checkpoint(runner.work_dir, name, save_optimizer=True, save_param_scheduler=True,
                               meta=dict(epoch=runner.epoch, iter=done, batch_in_epoch=in_epoch))
        if is_main_process():
            with atomic_write(Path(runner.work_dir) / "last_checkpoint", "w") as f:
                f.write(str(Path(runner.work_dir) / name))
        from mmengine.dist import barrier

        barrier()
        self.after_train(runner)
        raise Preempted(f"SIGTERM: saved {Path(runner.work_dir) / name} after iteration {done} "
                        f"(epoch {runner.epoch + 1}, batch {in_epoch}); rerun the same command to "
                        f"resume from there")
