"""Everything that trains runs on mmengine's Runner; this module is the glue.

- :func:`build_runner` turns the suite's small schedule config (epochs, batch, lr,
  warmup, ...) into a Runner with AdamW, linear warmup + cosine decay per iteration,
  the plan's precision resolved on this device (bf16 autocast on a GPU that has it,
  fp16 with loss scaling on an older one, fp32 on a CPU: :mod:`engine.precision`),
  pinned-memory loaders on a GPU, an optional ``torch.compile`` of the model's forward,
  DDP when started by ``torchrun``, a log line with ETA every few iterations, a
  checkpoint per epoch (the last two kept, written atomically), a checkpoint on
  SIGTERM, and automatic resume from the last whole checkpoint in its work dir,
  mid-epoch included (:mod:`engine.resume`).
- :class:`LayerDecayOptimWrapperConstructor` gives mmengine timm's layer-wise lr decay
  parameter groups (each group's lr is the base lr times timm's ``lr_scale``; mmengine's
  schedulers then scale every group alike).
- :class:`FiniteLossHook` stops a run whose loss is NaN/inf with one clear error. Like
  every hook of the suite it reads the device only at log intervals
  (:mod:`engine.hostsync`), so a step never waits for the GPU on its account.
- :func:`trust_suite_checkpoints`: mmengine 0.10.7 calls ``torch.load`` without
  ``weights_only``, which torch >= 2.6 defaults to True, so its own resume fails on the
  objects it pickles (message-hub history buffers, numpy scalars). We allow exactly
  those types for the weights-only unpickler, once, here, instead of turning safe
  loading off: a foreign checkpoint with anything else still fails to load. (Its
  history buffers would also pickle functions; ours are written without them.)
"""
from __future__ import annotations

import os
import uuid
import random
from pathlib import Path

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.registry import DATA_SAMPLERS, FUNCTIONS, HOOKS
from mmengine.runner import Runner
from timm.data.distributed_sampler import RepeatAugSampler

from .errors import TrainingError
from .hostsync import DeferredReads, DeferredRuntimeInfoHook, sync_iteration, world_size
from .optim import LayerDecayOptimWrapperConstructor  # registered there; re-exported
from .plan import LoaderPlan
from .precision import DeviceCaps, optim_wrapper_type, resolve_precision
from .resume import SuiteRunner  # registers the resumable loop and the resume hooks
from .throughput import ThroughputHook  # registered there: samples/s, memory, MFU per phase

__all__ = ["SuiteModel", "build_runner", "trust_suite_checkpoints", "LayerDecayOptimWrapperConstructor",
           "FiniteLossHook", "TrainingProgressHook", "launcher_from_env", "export_slurm_ranks",
           "DeferredRuntimeInfoHook", "DeviceCaps"]


_TRUSTED = False


def trust_suite_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read the Runner's checkpoints (their message
    hub and numpy scalars). Called by :func:`build_runner` and the checkpoint loaders,
    not at import: importing this module changes no global state. Idempotent."""
    global _TRUSTED
    if _TRUSTED:
        return
    from mmengine.logging.history_buffer import HistoryBuffer

    # HistoryBuffer pickles its table of statistics *functions* (via getattr), which no
    # safe unpickler may accept. The table is class-level and rebuilt on import, so
    # the checkpoints we write leave it out; mmengine's __setstate__ accepts that.
    def state_without_functions(self):
        state = dict(self.__dict__)
        state.pop("statistics_methods", None)
        return state

    HistoryBuffer.__getstate__ = state_without_functions
    for name in ("min", "max", "current", "mean"):
        HistoryBuffer._statistics_methods.setdefault(name, getattr(HistoryBuffer, name))

    multiarray = np._core.multiarray  # numpy >= 2 (numpy.core is its deprecated alias)
    safe = [HistoryBuffer, np.dtype, np.ndarray, multiarray._reconstruct, multiarray.scalar,
            np.float64, np.float32, np.int64]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals(safe)
    _TRUSTED = True


class SuiteModel(BaseModel):
    """Base of every model the suite hands to a Runner.

    Weights are final when the model is built: timm's initialisation, fixed sin-cos
    tables, or a pretrained checkpoint loaded by a task. The Runner calls
    ``init_weights()`` before training, and mmengine's default would call timm's own
    ``init_weights`` on the encoder, silently replacing loaded weights with random
    ones. So this is a no-op; the Runner still broadcasts the parameters from rank 0
    right after it, which keeps DDP replicas identical.

    The data preprocessor copies each batch to the device with ``non_blocking=True``
    (mmengine's default is blocking): from the pinned memory the loaders use on a GPU
    the copy then queues behind the previous step instead of waiting for it.
    """

    def __init__(self):
        super().__init__(data_preprocessor=dict(type="BaseDataPreprocessor", non_blocking=True))

    def init_weights(self):
        pass

    def on_train_progress(self, fraction: float) -> None:
        """Before each training step: ``fraction`` of training done (no-op by default)."""

    def on_train_iter_end(self) -> None:
        """After each optimizer step (no-op by default)."""


def launcher_from_env(env=None) -> str:
    """mmengine's launcher for how this process was started: ``slurm`` for a task of an
    ``srun`` step of several tasks (SLURM_PROCID and SLURM_STEP_NUM_TASKS set, which a
    batch script alone does not set) that torchrun did not start (no
    TORCHELASTIC_RUN_ID); ``pytorch`` under torchrun (WORLD_SIZE > 1); else ``none``."""
    env = os.environ if env is None else env
    if ("SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1
            and "TORCHELASTIC_RUN_ID" not in env):
        return "slurm"
    return "pytorch" if int(env.get("WORLD_SIZE", "1")) > 1 else "none"


def export_slurm_ranks(env=None) -> None:
    """Under ``srun`` (launcher ``slurm``): WORLD_SIZE, RANK and LOCAL_RANK from
    SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID, before anything reads them (the plan's
    per-process batch, rank-0-only writes). mmengine's slurm launcher sets the same three
    from the same variables when the Runner starts the process group (its address:
    the first host of SLURM_NODELIST, MASTER_PORT or 29500). Elsewhere: nothing."""
    env = os.environ if env is None else env
    if launcher_from_env(env) == "slurm":
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["RANK"] = env["SLURM_PROCID"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")


@FUNCTIONS.register_module()
def seed_worker_per_epoch(worker_id: int, rank: int = 0) -> None:
    """A DataLoader worker's seeds (torch, numpy, Python) from the base seed torch gives
    it, which the DataLoader draws from the main process's random state each time an
    epoch's iterator is created, offset by the rank (every rank starts from the same
    seed). mmengine 0.10.7's default ``worker_init_fn`` seeds a worker with (seed, rank,
    worker id) alone: with workers started afresh each epoch, a worker's k-th sample then
    had the same augmentation draws in every epoch (only the image changed)."""
    seed = (torch.initial_seed() + 1_000_003 * int(rank)) % 2**32  # base seed + worker id
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@HOOKS.register_module()
class FiniteLossHook(Hook, DeferredReads):
    """Stop at a non-finite loss with a :class:`TrainingError`, on every rank at once.

    The losses are kept on the device and read at sync iterations only (every
    ``interval`` batches and an epoch's last: :mod:`engine.hostsync`), so a NaN at
    iteration k stops the run at the next sync iteration; the error names iteration k
    (the first non-finite one) and the range read together. Under DDP the first bad
    iteration is reduced (minimum) over the process group at that sync iteration, so
    every rank raises there and none is left waiting in a collective. Before any
    checkpoint is written, the losses held are read (:meth:`flush`), so no checkpoint
    holds weights past a non-finite loss."""

    priority = "VERY_HIGH"

    def __init__(self, interval: int = 1):
        self.interval = max(1, int(interval))
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (iteration, epoch, loss), 1-based

    def before_train(self, runner) -> None:
        self._pending = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        loss = (outputs or {}).get("loss")
        if loss is not None:
            self._pending.append((runner.iter + 1, runner.epoch + 1, torch.as_tensor(loss).detach()))
        if sync_iteration(runner, batch_idx, self.interval):
            self._check(runner, collective=True)

    def flush(self, runner) -> None:
        self._check(runner, collective=False)

    def _check(self, runner, collective: bool) -> None:
        pending, self._pending = self._pending, []
        first = None  # this rank's first non-finite (iteration, epoch, loss)
        if pending:
            finite = torch.stack([torch.isfinite(loss).all() for _, _, loss in pending]).tolist()
            first = next((p for p, ok in zip(pending, finite) if not ok), None)
        bad_iter = first[0] if first else None
        if collective and world_size() > 1:
            import torch.distributed as dist

            none = runner.max_iters + 1
            t = torch.tensor([bad_iter or none], dtype=torch.int64,
                             device=next(runner.model.parameters()).device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            got = int(t.item())
            bad_iter = got if got != none else None
        if bad_iter is None:
            return
        epochs = {it: ep for it, ep, _ in pending}
        where = f"iteration {bad_iter} (epoch {epochs.get(bad_iter, runner.epoch + 1)})"
        what = (f"loss became {float(first[2])} at {where}" if first and first[0] == bad_iter
                else f"loss became non-finite on another rank at {where}")
        read = f"{pending[0][0]}-{runner.iter + 1}" if pending else f"{runner.iter + 1}"
        raise TrainingError(f"{what}; stopped at iteration {runner.iter + 1} (losses are read from the "
                            f"device every {self.interval} iterations: iterations {read} read together); "
                            f"lower the learning rate or check the data. Work dir: {runner.work_dir}",
                            step=bad_iter)


@DATA_SAMPLERS.register_module()
class SeededRepeatAugSampler(RepeatAugSampler):
    """timm's repeated-augmentation sampler (DeiT's): each image appears
    ``num_repeats`` times per epoch, the copies on different ranks, and an epoch keeps
    about N samples. timm seeds the shuffle with the epoch alone; the run's seed is
    folded in here so two seeds draw different orders."""

    def __init__(self, dataset, num_repeats: int = 3, seed: int = 0):
        from mmengine.dist import get_dist_info

        rank, world = get_dist_info()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True,
                         num_repeats=num_repeats)
        self.seed = int(seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.seed * 1_000_003 + epoch  # timm's generator seed


@HOOKS.register_module()
class TrainingProgressHook(Hook):
    """Calls the model's lifecycle hooks (:class:`SuiteModel`): ``on_train_progress``
    with the fraction of training done before each step (schedules inside a method,
    such as DropPos's decaying sigma) and ``on_train_iter_end`` after each optimizer
    step (e.g. an EMA teacher). Models from other libraries (mmdet's detectors) have no
    lifecycle and are left alone."""

    @staticmethod
    def _model(runner) -> "SuiteModel | None":
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        return model if isinstance(model, SuiteModel) else None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = self._model(runner)
        if model is not None:  # 0 at the first step, exactly 1 at the last
            model.on_train_progress(min(1.0, runner.iter / max(1, runner.max_iters - 1)))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = self._model(runner)
        if model is not None:
            model.on_train_iter_end()


def lr_schedule(iters_per_epoch: int, schedule) -> list[dict]:
    """mmengine param schedulers, per iteration, for ``schedule`` (a plan section):
    linear warmup from 1e-3 of the lr over ``warmup_epochs`` (may be fractional), then
    cosine decay to ``min_lr``, or, with ``lr_steps``, drops by 0.1 at those fractions
    of training."""
    warmup_iters = int(round(schedule.warmup_epochs * iters_per_epoch))
    total_iters = schedule.epochs * iters_per_epoch
    schedulers = []
    # mmengine's LinearLR over [0, w) reaches the full lr at iteration w - 1 and the
    # cosine continues from the value it finds (chainable form): with w = 1 the warmup
    # never rises and the whole run would train at 1e-3 of its lr. A warmup that rounds
    # to one iteration is therefore no warmup (our choice).
    if warmup_iters > 1:
        schedulers.append(dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0,
                               end=warmup_iters))
    if schedule.lr_steps:
        schedulers.append(dict(type="MultiStepLR", by_epoch=False, begin=0, end=total_iters,
                               milestones=[int(round(f * total_iters)) for f in schedule.lr_steps],
                               gamma=0.1))
    else:
        schedulers.append(dict(type="CosineAnnealingLR", by_epoch=False,
                               begin=warmup_iters if warmup_iters > 1 else 0,
                               end=max(total_iters, warmup_iters + 1), eta_min=schedule.min_lr))
    return schedulers


def build_runner(model, work_dir: str | Path, train_dataset, *, schedule, batch_per_process: int,
                 loader, seed: int = 0, test_dataset=None, test_evaluator=None,
                 test_batch_size: int | None = None, collate_fn: str = "default_collate",
                 experiment_name: str | None = None,
                 optim_constructor: str = "LayerDecayOptimWrapperConstructor",
                 param_rule: str = "timm",
                 default_scope: str = "mmengine", device: DeviceCaps | None = None,
                 checkpoint_every: int = 1, extra_hooks=None) -> Runner:
    """A Runner for one training job (see module docstring).

    ``schedule`` is a plan section (:class:`engine.plan.PretrainPlan`, ``FinetunePlan``
    or ``DetectionFinetunePlan``): epochs, the lr after its scaling rule, warmup, decay
    or ``lr_steps`` (fractions of training for step drops), ``layer_decay`` (parameter
    groups by ``optim_constructor`` under ``param_rule``: :mod:`engine.optim`'s ``mae``
    for pretraining, ``timm`` for classification, ``vitdet`` for the detector),
    ``grad_accum``, ``repeated_aug``.
    ``batch_per_process`` is the plan's global batch / (world size x grad_accum);
    ``loader`` the plan's loader section: workers, log interval, ``precision``
    (resolved here against ``device``, by default this process's device:
    :mod:`engine.precision`) and ``compile``. ``default_scope`` is the registry scope the
    Runner builds its parts in (``mmdet`` for detectors). ``checkpoint_every``: epochs
    between checkpoints (the last epoch is always saved).
    """
    from .plan import iters_per_epoch

    if not isinstance(loader, LoaderPlan):
        # a loader given as workers and log interval only (the linear probe's, in
        # tasks/protocols.py): the plan section's defaults for everything else
        loader = LoaderPlan(num_workers=loader.num_workers, log_interval=loader.log_interval)
    device = device or DeviceCaps.probe()
    precision = resolve_precision(loader.precision, device)
    trust_suite_checkpoints()  # the Runner resumes from its own checkpoints
    work_dir = Path(work_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    repeats = int(schedule.repeated_aug)
    drop_last = len(train_dataset) >= batch_per_process
    iters = iters_per_epoch(len(train_dataset), batch_per_process, world, drop_last, repeats)
    schedulers = lr_schedule(iters, schedule)

    optimizer = dict(type="AdamW", lr=schedule.lr, weight_decay=schedule.weight_decay,
                     betas=tuple(schedule.betas))
    optim_wrapper = dict(optim_wrapper_type(precision), optimizer=optimizer)
    if schedule.grad_accum > 1:
        optim_wrapper["accumulative_counts"] = int(schedule.grad_accum)
    if schedule.grad_clip:
        optim_wrapper["clip_grad"] = dict(max_norm=schedule.grad_clip)
    # The constructor also owns the weight-decay exemptions, so it runs without layer
    # decay too (decay 1.0).
    optim_wrapper["constructor"] = optim_constructor
    optim_wrapper["paramwise_cfg"] = dict(layer_decay=schedule.layer_decay or 1.0, rule=param_rule)

    sampler = (dict(type="SeededRepeatAugSampler", num_repeats=repeats, seed=seed) if repeats > 1
               else dict(type="DefaultSampler", shuffle=True))
    # Workers end with each epoch, for two reasons. Persistent ones outlive the Runner
    # (mmengine keeps global references to it), and a table run would pile them up cell
    # after cell. And each epoch's workers are seeded from that epoch's base seed
    # (seed_worker_per_epoch), which the resume restores; persistent workers would carry
    # their random streams across epochs, which a resume (new workers) cannot reproduce.
    # What this costs is the workers' start-up once per epoch (benchmarks.speed's data
    # table, "first batch s"). Pinned memory on a GPU: the batch's copy to the device is
    # then asynchronous (SuiteModel's preprocessor copies with non_blocking=True).
    pin = bool(device.cuda)
    train_loader = dict(dataset=train_dataset, batch_size=batch_per_process,
                        num_workers=loader.num_workers, persistent_workers=False, pin_memory=pin,
                        drop_last=drop_last, sampler=sampler, collate_fn=dict(type=collate_fn),
                        worker_init_fn=dict(type="seed_worker_per_epoch",
                                            rank=int(os.environ.get("RANK", "0"))))
    cfg = {}
    if loader.compile:
        cfg["compile"] = True  # the model's forward (SuiteRunner._maybe_compile)
    kwargs = {}
    if launcher_from_env() == "pytorch" and not device.cuda:
        # mmengine's own init_dist always selects a CUDA device; on CPU (gloo) the suite
        # starts the process group itself and wraps the model without device ids.
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        cfg["model_wrapper_cfg"] = dict(type="MMDistributedDataParallel", device_ids=None,
                                        broadcast_buffers=False)
    if cfg:
        kwargs["cfg"] = cfg
    if test_dataset is not None:
        kwargs.update(
            test_dataloader=dict(dataset=test_dataset, batch_size=test_batch_size or batch_per_process,
                                 num_workers=loader.num_workers, persistent_workers=False,
                                 pin_memory=pin, sampler=dict(type="DefaultSampler", shuffle=False),
                                 collate_fn=dict(type=collate_fn)),
            test_evaluator=test_evaluator, test_cfg=dict())

    runner = SuiteRunner(
        model=model,
        work_dir=str(work_dir),
        train_dataloader=train_loader,
        train_cfg=dict(type="ResumableEpochBasedTrainLoop", max_epochs=schedule.epochs),
        optim_wrapper=optim_wrapper,
        param_scheduler=schedulers,
        default_hooks=dict(
            # step outputs read from the device at log intervals only (engine.hostsync)
            runtime_info=dict(type="DeferredRuntimeInfoHook", interval=loader.log_interval),
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=loader.log_interval),
            param_scheduler=dict(type="ParamSchedulerHook"),
            # two kept: a truncated newest checkpoint falls back on the previous one
            checkpoint=dict(type="CheckpointHook", interval=max(1, int(checkpoint_every)),
                            max_keep_ckpts=2,
                            save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        custom_hooks=[dict(type="FiniteLossHook", interval=loader.log_interval),
                      dict(type="TrainingProgressHook"), dict(type="ResumeStateHook"),
                      dict(type="PreemptionHook", interval=loader.log_interval),
                      dict(type="ThroughputHook", window=loader.log_interval, precision=precision,
                           compiled=bool(loader.compile)), *(extra_hooks or ())],
        launcher=launcher_from_env(),
        env_cfg=dict(cudnn_benchmark=device.cuda, dist_cfg=dict(backend="nccl" if device.cuda else "gloo")),
        randomness=dict(seed=seed, deterministic=False),
        resume=True,
        log_level=os.environ.get("PART_BENCH_LOG_LEVEL", "INFO"),
        # unique: mmengine names its logger, scope, visualizer and message hub (the loss
        # history) after the experiment and shares them between Runners of one name
        # started in one second (with a warning)
        experiment_name=f"{experiment_name or 'run'}_{uuid.uuid4().hex[:8]}",
        default_scope=default_scope,
        **kwargs,
    )
    return runner
