"""Pretraining one method on mmengine's Runner, cached by what determines the result.

A pretrained checkpoint is identified by everything that changes its weights
(:func:`pretrain_identity`: the method's class and values, the encoder, the schedule,
the pretraining data's identity, the seed); its folder holds the Runner's work dir
(per-epoch checkpoints, logs: a killed run resumes from there) and, once finished,

- ``method.pth``:  the whole method (encoder + pretext head), for pretext evaluation
  and figures;
- ``encoder.pth``: the encoder only, with timm's parameter names, for every task.

Both are written atomically (temporary file + rename), by the main process only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from mmengine.dist import is_main_process, barrier

from methods import build_method

from .atomic import atomic_torch_save, atomic_write_json
from .health import PretrainHealthHook
from .locks import file_lock
from .runner import SuiteModel, build_runner, trust_suite_checkpoints
from .throughput import read_throughput

__all__ = ["PretrainModel", "pretrain_key", "pretrain_identity", "pretrained_folder",
           "is_pretrained", "ensure_pretrained", "atomic_torch_save", "load_method"]


#: the collapse monitoring's report beside a pretrained checkpoint (engine.health)
HEALTH_FILE = "pretrain_health.json"

# Weight-decay groups of every pretraining: MAE's and DropPos's rule (engine.optim).
PRETRAIN_PARAM_RULE = "mae"
# How loader workers are seeded (engine.runner.seed_worker_per_epoch); part of the key, so
# checkpoints pretrained under mmengine's per-run worker seeds (the same augmentation
# draws every epoch) are not reused as if they were these.
WORKER_SEEDING = "per-epoch"


class PretrainModel(SuiteModel):
    """Adapts a method (images -> dict of loss and metrics) to mmengine's model API."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    @property
    def encoder(self):
        """The method's encoder (the optimizer constructor groups its parameters)."""
        return self.method.encoder

    def on_train_progress(self, fraction: float) -> None:
        self.method.on_train_progress(fraction)

    def on_train_iter_end(self) -> None:
        self.method.on_train_iter_end()

    def forward(self, inputs, data_samples=None, mode: str = "loss"):
        if mode != "loss":
            raise ValueError(f"pretraining has only the 'loss' mode, got {mode!r}")
        return self.method(inputs)


def pretrain_identity(plan, data_id: dict) -> dict:
    """Everything that changes the pretrained weights, and nothing that does not: the
    method's class, code version and constructor values, the weight-decay rule and worker
    seeding of the pretraining loop, the encoder, the schedule (without the
    gradient-accumulation split of the same global batch), the pretraining data's
    identity and the seed. Loader knobs, the world size and the method's *name* are
    left out, so ``mp3`` and ``mp3-nope`` share a checkpoint."""
    from dataclasses import asdict

    schedule = asdict(plan.pretrain)
    schedule.pop("grad_accum", None)
    return dict(method=plan.method.cls, version=plan.method.version,
                method_cfg=plan.method.config, param_rule=PRETRAIN_PARAM_RULE,
                worker_seeding=WORKER_SEEDING,
                encoder=asdict(plan.encoder), pretrain=schedule, data=data_id, seed=plan.seed)


def pretrain_key(plan, data_id: dict) -> str:
    from engine.plan import stable_hash

    return f"{plan.method.cls.lower()}-s{plan.seed}-{stable_hash(pretrain_identity(plan, data_id))}"


def load_method(method_ckpt: Path, map_location="cpu"):
    """Rebuild a pretrained method (encoder + head) from its ``method.pth``."""
    trust_suite_checkpoints()
    ckpt = torch.load(method_ckpt, map_location=map_location, weights_only=True)
    method = build_method(ckpt["method"], encoder=ckpt["encoder_cfg"], **ckpt["method_cfg"])
    method.load_state_dict(ckpt["state_dict"])
    return method.eval()


def pretrained_folder(plan, data_id: dict, cache_root: Path) -> Path:
    return Path(cache_root) / "pretrain" / pretrain_key(plan, data_id)


def is_pretrained(folder: Path) -> bool:
    return (folder / "encoder.pth").exists() and (folder / "method.pth").exists()


def ensure_pretrained(plan, dataset, data_id: dict, cache_root: Path, log=print,
                      health_batch=None) -> Path:
    """Return the folder holding ``encoder.pth``/``method.pth``, pretraining if needed.
    ``health_batch``: held-out samples the pretraining's collapse monitoring embeds
    (:mod:`engine.health`; its report is ``pretrain_health.json`` beside the checkpoint)."""
    folder = pretrained_folder(plan, data_id, cache_root)
    if is_pretrained(folder):
        log(f"[pretrain] reusing cached checkpoint {folder}")
        return folder
    if int(os.environ.get("RANK", "0")) != 0:  # the job's rank 0 holds the lock; others follow
        return _pretrain(plan, dataset, data_id, folder, log, health_batch)
    # One process per pretraining: a second run of the same key (another cell, another
    # user) waits here, then reuses what the first one wrote.
    with file_lock(folder.parent / f"{folder.name}.lock", f"pretraining {folder.name}", log=log):
        if is_pretrained(folder):
            log(f"[pretrain] reusing cached checkpoint {folder} (written by the lock's previous owner)")
            return folder
        return _pretrain(plan, dataset, data_id, folder, log, health_batch)


def _pretrain(plan, dataset, data_id: dict, folder: Path, log=print, health_batch=None) -> Path:
    pre = plan.pretrain
    log(f"[pretrain] {plan.method.name}: {pre.epochs} epochs on {len(dataset)} images, global "
        f"batch {pre.global_batch_size} ({plan.pretrain_batch()} per process), lr {pre.lr:g} "
        f"-> {folder}")
    method = build_method(plan.method.name, encoder=plan.encoder.as_kwargs(), **plan.method.config)
    runner = build_runner(PretrainModel(method), folder / "work", dataset, schedule=pre,
                          batch_per_process=plan.pretrain_batch(), loader=plan.loader,
                          seed=plan.seed, experiment_name="pretrain",
                          param_rule=PRETRAIN_PARAM_RULE,
                          extra_hooks=[] if health_batch is None else [
                              PretrainHealthHook(health_batch, plan.loader.log_interval)])
    runner.train()
    if is_main_process():
        if health_batch is not None:  # the collapse monitoring's report, beside the weights
            report = json.loads((folder / "work" / "health.json").read_text())
            atomic_write_json(folder / HEALTH_FILE, report, indent=1)
        meta = dict(method=plan.method.name, method_cfg=plan.method.config,
                    identity=pretrain_identity(plan, data_id), preset=plan.preset,
                    seed=plan.seed, encoder_cfg=method.encoder_cfg)
        # the pretraining's samples/s, s/iter, memory, MFU, next to the checkpoint: a
        # run that reuses the cache still reports them (engine.throughput)
        meta["throughput"] = read_throughput(folder / "work").get("train")
        atomic_write_json(folder / "throughput.json", {"train": meta["throughput"]}, indent=1)
        atomic_torch_save(dict(meta, state_dict=method.state_dict()), folder / "method.pth")
        atomic_torch_save(dict(meta, state_dict=method.encoder_state_dict()),
                          folder / "encoder.pth")
    barrier()
    return folder
