"""The one interface every downstream task implements.

A task is built from its resolved run plan (:class:`engine.plan.RunPlan`) and the cache
folder. It

- checks its data up front (:meth:`Task.check_data`: a clear error before any
  pretraining is spent),
- gives the images pretraining reads for it (:meth:`Task.pretrain_dataset`: its own
  train split, or ImageNet for COCO, as ``plan.pretrain_data`` says),
- counts the images of its training phases for a plan (:meth:`Task.train_sizes`),
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
    #: the plan's task kind: classification | pretext | detection
    kind: str = ""
    metric_names: tuple[str, ...] = ()

    def __init__(self, plan, cache_root: Path):
        self.plan = plan
        self.cache_root = Path(cache_root)
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        """``--data-root``, or else the preset's embedded data, written once into the cache."""
        if self._root is None:
            self._root = self.resolve_root(self.plan.data)
        return self._root

    def resolve_root(self, data) -> Path:
        """The folder of a :class:`engine.plan.DataPlan`: its root, or its embedded data
        generated (once) into the cache."""
        if data.root is not None:
            return Path(data.root)
        if not data.embedded:
            from engine.errors import ConfigError

            raise ConfigError(f"preset {self.plan.preset} has no embedded {data.dataset} data for "
                              f"task {self.plan.task}: pass --data-root (or set PART_BENCH_DATA)")
        return self.write_embedded(data.dataset, self.cache_root / "data", **data.embedded)

    def write_embedded(self, dataset: str, data_cache: Path, **embedded) -> Path:
        """Generate the embedded data set into ``data_cache`` (first use only); its root."""
        raise NotImplementedError  # abstract

    def check_data(self) -> None:
        raise NotImplementedError  # abstract

    def pretrain_dataset(self):
        raise NotImplementedError  # abstract

    def train_sizes(self) -> dict[str, int | None]:
        """Images per epoch of ``pretrain`` and ``finetune`` counted in real data roots
        (None where the plan's data has no root); ``--dry-run`` shows them."""
        raise NotImplementedError  # abstract

    def run(self, *, pretrained: Path | None, work_dir: Path, log=print) -> dict:
        """``pretrained``: the folder with encoder.pth/method.pth, or None (from scratch)."""
        raise NotImplementedError  # abstract
