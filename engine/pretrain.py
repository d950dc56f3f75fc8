"""Pretraining one method on mmengine's Runner, cached by what determines the result.

A pretrained checkpoint is identified by (method name, resolved method config,
resolved pretraining config, preset, seed); its folder holds the Runner's work dir
(per-epoch checkpoints, logs: a killed run resumes from there) and, once finished,

- ``method.pth``:  the whole method (encoder + pretext head), for pretext evaluation
  and figures;
- ``encoder.pth``: the encoder only, with timm's parameter names, for every task.

Both are written atomically (temporary file + rename), by the main process only.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from mmengine.dist import is_main_process, barrier

from methods import build_method

from .runner import SuiteModel, build_runner

__all__ = ["PretrainModel", "pretrain_key", "ensure_pretrained", "atomic_torch_save",
           "load_method"]


class PretrainModel(SuiteModel):
    """Adapts a method (images -> dict of loss and metrics) to mmengine's model API."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, inputs, data_samples=None, mode: str = "loss"):
        if mode != "loss":
            raise ValueError(f"pretraining has only the 'loss' mode, got {mode!r}")
        return self.method(inputs)


# Config keys that only change finetuning: rows that differ only in them (mp3 and
# mp3-nope) share one pretrained checkpoint.
FINETUNE_ONLY_KEYS = ("finetune_pos_embed",)


def pretrain_key(method_name: str, method_cfg: dict, pretrain_cfg: dict, preset: str,
                 seed: int) -> str:
    from methods import METHODS

    cls, defaults = METHODS[method_name]
    effective = {k: v for k, v in {**defaults, **method_cfg}.items() if k not in FINETUNE_ONLY_KEYS}
    blob = json.dumps(dict(method=cls.__name__, method_cfg=effective, pretrain=pretrain_cfg,
                           preset=preset, seed=seed), sort_keys=True, default=str)
    return f"{cls.__name__.lower()}-{preset}-s{seed}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_method(method_ckpt: Path, map_location="cpu"):
    """Rebuild a pretrained method (encoder + head) from its ``method.pth``."""
    ckpt = torch.load(method_ckpt, map_location=map_location, weights_only=True)
    method = build_method(ckpt["method"], **ckpt["method_cfg"])
    method.load_state_dict(ckpt["state_dict"])
    return method.eval()


def ensure_pretrained(method_name: str, method_cfg: dict, pretrain_cfg: dict, dataset,
                      cache_root: Path, preset: str, seed: int, log=print) -> Path:
    """Return the folder holding ``encoder.pth``/``method.pth``, pretraining if needed."""
    key = pretrain_key(method_name, method_cfg, pretrain_cfg, preset, seed)
    folder = Path(cache_root) / "pretrain" / key
    if (folder / "encoder.pth").exists() and (folder / "method.pth").exists():
        log(f"[pretrain] reusing cached checkpoint {folder}")
        return folder
    log(f"[pretrain] {method_name}: {pretrain_cfg['epochs']} epochs on {len(dataset)} images "
        f"-> {folder}")
    method = build_method(method_name, **method_cfg)
    schedule = {k: v for k, v in pretrain_cfg.items() if k not in ("augment",)}
    runner = build_runner(PretrainModel(method), folder / "work", dataset, seed=seed,
                          experiment_name="pretrain", **schedule)
    runner.train()
    if is_main_process():
        meta = dict(method=method_name, method_cfg=method_cfg, pretrain_cfg=pretrain_cfg,
                    preset=preset, seed=seed, encoder_cfg=method.encoder_cfg)
        atomic_torch_save(dict(meta, state_dict=method.state_dict()), folder / "method.pth")
        atomic_torch_save(dict(meta, state_dict=method.encoder_state_dict()),
                          folder / "encoder.pth")
    barrier()
    return folder
