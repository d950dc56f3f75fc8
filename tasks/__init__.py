"""The task registry: ``TASKS`` and ``build_task(name, cfg, data_root, cache_root)``.

``cfg`` is the preset's ``tasks`` section (all tasks), so that a task built on another
(``pretext`` evaluates on its ``source`` task's data) can reach it.
"""
from __future__ import annotations

from engine.errors import ConfigError

from .base import Task
from .classification import ClassificationTask
from .coco import CocoTask
from .pretext import PretextTask

TASKS = {
    "cifar100": ClassificationTask,
    "imagenet": ClassificationTask,
    "pretext": PretextTask,
    "coco": CocoTask,
}


def build_task(name: str, tasks_cfg: dict, data_root=None, cache_root=None) -> Task:
    if name not in TASKS or name not in tasks_cfg:
        known = sorted(set(TASKS) & set(tasks_cfg))
        raise ConfigError(f"unknown task {name!r}; expected one of: {', '.join(known)}")
    cfg = dict(tasks_cfg[name])
    if TASKS[name] is PretextTask:
        source = build_task(cfg["source"], tasks_cfg, data_root, cache_root)
        return PretextTask(cfg, data_root, cache_root, source)
    return TASKS[name](cfg, data_root, cache_root)


__all__ = ["TASKS", "build_task", "Task"]
