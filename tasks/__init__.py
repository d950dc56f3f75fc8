"""The task registry: ``TASKS`` and ``build_task(plan, cache_root)``.

A task's class declares its kind (``classification``, ``pretext``, ``detection``,
``sleep_staging``) and the sections its preset entry holds (``Task.sections``); adding a
task is its module plus one line here. The ``pretext`` task reads its ``source`` task's
data and encoder, resolved into its plan.
"""
from __future__ import annotations

from .base import Task
from .classification import ClassificationTask
from .coco import CocoTask
from .eeg import EEGTask
from .pretext import PretextTask

TASKS: dict[str, type[Task]] = {
    "cifar100": ClassificationTask,
    "imagenet": ClassificationTask,
    "pretext": PretextTask,
    "coco": CocoTask,
    "eeg": EEGTask,
}


def build_task(plan, cache_root) -> Task:
    """The task of a resolved plan (:func:`engine.plan.resolve_plan`)."""
    return TASKS[plan.task](plan, cache_root)


__all__ = ["TASKS", "build_task", "Task"]
