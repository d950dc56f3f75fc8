"""The one interface every downstream task implements.

A task is built from its resolved run plan (:class:`engine.plan.RunPlan`) and the cache
folder. Its life, in the order :func:`pipeline.cell.run_cell` calls it:

1. :meth:`Task.prepare_data`: the explicit step that generates the preset's embedded
   data (once, into the cache) where the plan has no real root. Nothing else writes
   data; reading :attr:`Task.root` never does.
2. :meth:`Task.check_data`: a clear error before any pretraining is spent.
3. :meth:`Task.pretrain_dataset`: the samples a method pretrains on, cut into the views
   the method declares (:meth:`methods.base.PretrainMethod.pretrain_views`). By default
   the plan's ``pretrain_data`` read through the data-set registry
   (:mod:`tasks.data.sources`): the task's own training split, or ImageNet for COCO.
4. :meth:`Task.run`: finetune/evaluate a pretrained folder (or none) and return
   metrics with fixed names.

Also: :meth:`Task.heldout_set` (held-out samples without augmentation, for the pretext
task, the figures and the frozen-feature protocols; modality-agnostic) and
:meth:`Task.train_sizes` (counted in real roots, for ``--dry-run``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch.utils.data as tud

from engine.errors import ConfigError

from .data.sources import data_source

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

    @property
    def metainfo(self) -> dict:
        """What mmengine's loops hand the visualizer and evaluator: the class names
        where the data set has them."""
        classes = getattr(self.base, "classes", None)
        return {"classes": tuple(classes)} if classes is not None else {}


class Task:
    name: str = ""
    #: the plan's task kind: classification | pretext | detection
    kind: str = ""
    metric_names: tuple[str, ...] = ()
    #: the sections a preset's entry for this task may hold: name -> plan dataclass
    #: (:mod:`engine.plan`); names beyond the common ones become ``plan.options[name]``
    sections: dict = {}

    def __init__(self, plan, cache_root: Path):
        self.plan = plan
        self.cache_root = Path(cache_root)
        self._roots: dict[str, Path] = {}

    # ---------------------------------------------------------------- data
    def prepare_data(self, log: Callable[[str], None] = print) -> None:
        """Generate the embedded data of the plan's data sets that have no root (once,
        into the cache; a second call reads the cache)."""
        for d in self._data_plans():
            self._roots[d.dataset] = self._resolve_root(d, generate=True)

    def _data_plans(self):
        plans = [self.plan.data]
        if self.plan.pretrain is not None and self.plan.pretrain_data is not self.plan.data:
            plans.append(self.plan.pretrain_data)
        return plans

    def _resolve_root(self, data, generate: bool) -> Path:
        if data.root is not None:
            return Path(data.root)
        if data.dataset in self._roots:
            return self._roots[data.dataset]
        if not data.embedded:
            where = ("--data-root (or set PART_BENCH_DATA)" if data is self.plan.data else
                     f"tasks.{self.plan.task}.pretrain_data.root (e.g. --cfg-options "
                     f"tasks.{self.plan.task}.pretrain_data.root=/data/{data.dataset})")
            raise ConfigError(f"preset {self.plan.preset} has no embedded {data.dataset} data for "
                              f"task {self.plan.task}: set {where}")
        if not generate:
            raise RuntimeError(f"task {self.plan.task}: call prepare_data() before reading the "
                               f"embedded {data.dataset} data")
        return Path(data_source(data.dataset).write_embedded(self.cache_root / "data",
                                                             **data.embedded))

    @property
    def root(self) -> Path:
        """The task's data folder: ``--data-root``, or the embedded data once prepared."""
        return self._resolve_root(self.plan.data, generate=False)

    @property
    def pretrain_root(self) -> Path:
        return self._resolve_root(self.plan.pretrain_data, generate=False)

    def check_data(self) -> None:
        raise NotImplementedError(f"task {self.name} does not check its data")

    def pretrain_dataset(self, views) -> tud.Dataset:
        """The plan's pretraining data under its augmentation, one transform per view."""
        pre = self.plan.pretrain_data
        src = data_source(pre.dataset)
        return RunnerSamples(src.pretrain_set(self.pretrain_root, self.plan.encoder,
                                              self.plan.pretrain.augment, views))

    def heldout_set(self) -> tud.Dataset:
        """Held-out ``(sample, label)`` pairs of the task's data, unaugmented."""
        return data_source(self.plan.data.dataset).heldout_set(self.root, self.plan.encoder)

    def pretrain_heldout_set(self) -> tud.Dataset:
        """Held-out samples of the data pretraining reads (the task's own held-out split,
        or the pretraining data set's: COCO pretrains on ImageNet-format scenes)."""
        pre = self.plan.pretrain_data
        if pre is self.plan.data or pre == self.plan.data:
            return self.heldout_set()
        return data_source(pre.dataset).heldout_set(self.pretrain_root, self.plan.encoder)

    def health_batch(self, size: int = 256):
        """The fixed held-out batch pretraining's collapse monitoring embeds: the first
        ``size`` held-out samples (:mod:`engine.health`)."""
        import torch

        held = self.pretrain_heldout_set()
        return torch.stack([held[i][0] for i in range(min(size, len(held)))])

    def train_sizes(self) -> dict[str, int | None]:
        """Samples per epoch of ``pretrain`` and ``finetune`` counted in real data roots
        (None where the plan's data has no root); ``--dry-run`` shows them."""
        raise NotImplementedError(f"task {self.name} does not count its data")

    @classmethod
    def published_sizes(cls, plan) -> dict[str, tuple[int, str] | None]:
        """Samples per epoch of ``pretrain`` and ``finetune`` from the data sets' published
        sizes, with how each was obtained, for plans made without the data (dry runs of
        the paper preset)."""
        from engine.plan import PUBLISHED_TRAIN_SIZES

        def size(data):
            n = PUBLISHED_TRAIN_SIZES.get(data.dataset)
            return None if n is None else (n, "published size")

        return {"pretrain": size(plan.pretrain_data), "finetune": size(plan.data)}

    def run(self, *, pretrained: Path | None, work_dir: Path,
            log: Callable[[str], None] = print) -> dict:
        """Finetune/evaluate. ``pretrained``: the folder with ``encoder.pth`` and
        ``method.pth``, or None (from scratch); ``work_dir``: the Runner's folder (a
        rerun resumes from it); ``log``: one line at a time. Returns the metrics."""
        raise NotImplementedError(f"task {self.name} has no run()")

