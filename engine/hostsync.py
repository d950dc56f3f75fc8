"""When the training loop reads device values on the host.

Reading a GPU tensor on the host (``.item()``, ``float()``, ``.tolist()``, a boolean
index) waits for every kernel queued before it: the host can no longer run ahead and
queue the next step while the GPU computes this one. The suite's hooks therefore read
the device only at *sync iterations*: every ``log_interval``-th batch of an epoch and an
epoch's last batch, the iterations at which mmengine's ``LoggerHook`` writes its line
(its ``every_n_inner_iters`` or ``end_of_epoch``). Between them they keep what they
must check as device tensors. Sync iterations depend on the batch index and the
loader's length only, which every DDP rank shares, so every rank takes part in the same
collectives at the same steps.

- :class:`DeferredRuntimeInfoHook` replaces mmengine's ``RuntimeInfoHook``: mmengine
  0.10.7's ``after_train_iter`` passes every output of the step (the losses) to
  ``MessageHub.update_scalar``, which calls ``.item()`` on each, every iteration. Ours
  keeps them and hands the same values, in the same order, to the message hub at sync
  iterations (before the log line is written, and before any checkpoint stores the
  message hub), with one host read per device and dtype.
- :class:`DeferredReads`: a hook that reads later. ``flush`` reads what it holds now,
  in this process only (no collective); :class:`engine.resume.SuiteRunner` calls it
  before it writes a checkpoint, so no checkpoint is written past a loss nobody read.

``FiniteLossHook`` (:mod:`engine.runner`) and ``PreemptionHook``
(:mod:`engine.resume`) follow the same rule.
"""
from __future__ import annotations

import abc

import torch
from mmengine.hooks import RuntimeInfoHook
from mmengine.registry import HOOKS

__all__ = ["sync_iteration", "world_size", "read_scalars", "DeferredReads",
           "DeferredRuntimeInfoHook"]


def sync_iteration(runner, batch_idx: int, interval: int) -> bool:
    """Whether the training loop may read the device after batch ``batch_idx`` (0-based,
    within the epoch): every ``interval``-th batch and the epoch's last one."""
    return (batch_idx + 1) % max(1, int(interval)) == 0 or batch_idx + 1 == len(runner.train_dataloader)


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def read_scalars(tensors: list[torch.Tensor]) -> list:
    """Python numbers of one-element tensors, in order; one host read per (device, dtype)
    (a float tensor gives a float, an integer one an int, as ``.item()`` would)."""
    out: list = [None] * len(tensors)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    for idx in groups.values():
        for i, v in zip(idx, torch.stack([tensors[i].reshape(()) for i in idx]).tolist()):
            out[i] = v
    return out


class DeferredReads(abc.ABC):
    """A hook that holds device values until a sync iteration (module docstring)."""

    @abc.abstractmethod
    def flush(self, runner) -> None:
        """Read what is held now, in this process only: no collective."""


@HOOKS.register_module()
class DeferredRuntimeInfoHook(RuntimeInfoHook, DeferredReads):
    """mmengine's ``RuntimeInfoHook`` whose step outputs reach the message hub at sync
    iterations (every ``interval`` batches and an epoch's last), not every iteration."""

    def __init__(self, interval: int = 1):
        super().__init__()
        self.interval = max(1, int(interval))
        self._pending: list[dict] = []

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._pending = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs is not None:
            self._pending.append({k: v.detach() if torch.is_tensor(v) else v
                                  for k, v in outputs.items()})
        if sync_iteration(runner, batch_idx, self.interval):
            self.flush(runner)

    def after_train(self, runner) -> None:
        self.flush(runner)
        super().after_train(runner)

    def flush(self, runner) -> None:
        pending, self._pending = self._pending, []
        values = iter(read_scalars([v for out in pending for v in out.values() if torch.is_tensor(v)]))
        for out in pending:
            for key, v in out.items():
                runner.message_hub.update_scalar(f"train/{key}", next(values) if torch.is_tensor(v) else v)
