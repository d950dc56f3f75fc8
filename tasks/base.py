"""The one interface every downstream task implements.

A task is built from its config (a section of the preset), a data root (``None``:
the embedded generated data of the tiny preset) and the cache folder. It

- checks its data up front (:meth:`Task.check_data`: a clear error before any
  pretraining is spent),
- says which encoder it needs (:attr:`Task.encoder_cfg`) and which images pretraining
  uses for it (:meth:`Task.pretrain_dataset`, e.g. ImageNet for COCO),
- finetunes/evaluates an encoder checkpoint (or none) and returns metrics with fixed
  names (:meth:`Task.run`).
"""
from __future__ import annotations

from pathlib import Path

import torch.utils.data as tud

__all__ = ["Task", "RunnerSamples"]


class RunnerSamples(tud.Dataset):
    """(x, label) samples -> the dict mmengine's models receive: inputs, data_samples."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {"inputs": x, "data_samples": y}


class Task:
    name: str = ""
    metric_names: tuple[str, ...] = ()

    def __init__(self, cfg: dict, data_root: str | Path | None, cache_root: Path):
        self.cfg = cfg
        self.data_root = Path(data_root) if data_root else None
        self.cache_root = Path(cache_root)
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        """``--data-root``, or else the preset's embedded data, written once into the cache."""
        if self._root is None:
            if self.data_root is not None:
                self._root = self.data_root
            elif not self.cfg.get("embedded"):
                from engine.errors import ConfigError

                raise ConfigError(f"this preset has no embedded data for {self.name}: pass "
                                  f"--data-root (or set PART_BENCH_DATA)")
            else:
                self._root = self.write_embedded(self.cache_root / "data",
                                                 **self.cfg["embedded"])
        return self._root

    def write_embedded(self, data_cache: Path, **embedded) -> Path:
        """Generate the embedded data set into ``data_cache`` (first use only); its root."""
        raise NotImplementedError  # abstract

    @property
    def encoder_cfg(self) -> dict:
        return dict(self.cfg["encoder"])

    @property
    def pretrain_cfg(self) -> dict:
        return dict(self.cfg["pretrain"])

    def check_data(self) -> None:
        raise NotImplementedError  # abstract

    def pretrain_dataset(self):
        raise NotImplementedError  # abstract

    def run(self, *, pretrained: Path | None, work_dir: Path, seed: int,
            method_name: str) -> dict:
        """``pretrained``: the folder with encoder.pth/method.pth, or None (from scratch)."""
        raise NotImplementedError  # abstract
