"""One cell of a table: make its plan, ensure its pretrained checkpoint, run its task,
write its record (or a failed record that never replaces an ok one).

:func:`run_cell` is what ``python -m benchmarks.run`` and every table call;
:func:`make_plan` resolves a cell's plan from a preset, a table row and the command
line's options (:mod:`pipeline.resolve`); :func:`pretrained_method` gives a pretrained
method for the figures. A pretrained checkpoint is reused when everything that changes
its weights is the same, data included (:mod:`engine.pretrain`); one process runs a cell
at a time (a lock), and a rerun of a killed cell resumes from its work folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from engine.errors import ConfigError
from engine.plan import plan_to_dict, stable_hash
from engine.records import build_record, git_commit, record_path, write_record
from tasks import TASKS, build_task

from .presets import load_preset, split_cfg_options
from .resolve import resolve_plan

REPO = Path(__file__).resolve().parents[1]

__all__ = ["run_cell", "make_plan", "cell_record_path", "pretrained_method", "ensure_checkpoint",
           "run_failures", "with_protocol", "default_cache", "data_identities", "work_dir_of",
           "run_key"]


def default_cache() -> Path:
    return Path(os.environ.get("PART_BENCH_CACHE", REPO / "cache"))


def with_protocol(task: str, protocol: str, cfg_options: dict | None, preset: str = "tiny") -> dict:
    """``--protocol P``: the command-line option ``tasks.<task>.protocol.name=P`` where P
    is not already the preset's protocol (finetune unless the preset says otherwise), so
    a frozen protocol's record is a variant (``part[protocol.name=knn]__...``) beside the
    finetuning cell, and ``--protocol finetune`` is that cell. A task without protocols
    is one ConfigError line."""
    if task in TASKS and "protocol" not in TASKS[task].sections:
        with_it = sorted(n for n, t in TASKS.items() if "protocol" in t.sections)
        raise ConfigError(f"task {task} has no --protocol (it has its own evaluation); "
                          f"--protocol is for: {', '.join(with_it)}")
    own = ((load_preset(preset).get("tasks", {}).get(task) or {}).get("protocol") or {})
    if protocol == own.get("name", "finetune"):
        return dict(cfg_options or {})
    return {**(cfg_options or {}), f"tasks.{task}.protocol.name": protocol}


def make_plan(method: str, task: str, *, preset: str = "tiny", seed: int = 0, data_root=None,
              cfg_options: dict | None = None, row: dict | None = None, world_size=None):
    """The resolved plan of one run (:func:`pipeline.resolve.resolve_plan`)."""
    cli_methods, cli_tasks = split_cfg_options(cfg_options)
    return resolve_plan(load_preset(preset), method, task, seed=seed, world_size=world_size,
                        data_root=data_root, row=row, cli_methods=cli_methods, cli_tasks=cli_tasks)


def data_identities(plan) -> dict:
    from tasks.data.fingerprint import data_identity

    def ident(d):
        return None if d.missing else data_identity(d.dataset, d.root, d.embedded)

    return {"task": ident(plan.data), "pretrain": ident(plan.pretrain_data)}


def run_key(plan, data: dict) -> str:
    """Names a finetuning work folder: everything that changes the run's result (the
    plan without its loader knobs, the data's identity) and the world size (a
    checkpoint taken at another per-process batch does not resume cleanly)."""
    d = plan_to_dict(plan)
    d.pop("loader")
    return stable_hash(dict(plan=d, data=data))


def work_dir_of(plan, record: Path, data: dict, cache_root: Path) -> Path:
    return Path(cache_root) / "runs" / f"{record.stem}-{run_key(plan, data)}"


def cell_record_path(method: str, task: str, *, preset: str = "tiny", seed: int = 0,
                     row: dict | None = None, out=None, cfg_options=None, data_root=None) -> Path:
    """Where the record of a cell is (or will be) written."""
    return record_path(out, make_plan(method, task, preset=preset, seed=seed, data_root=data_root,
                                      cfg_options=cfg_options, row=row))


def ensure_checkpoint(plan, task_obj, cache_root: Path, log=print):
    """The pretrained folder of a plan (pretraining it if it is not cached), or None."""
    from engine.pretrain import ensure_pretrained
    from mmengine.runner import set_random_seed

    if not plan.method.pretrains:
        return None
    if plan.pretrain_data.note:
        log(f"[plan] {plan.pretrain_data.note}")
    health_batch = task_obj.health_batch()  # read before the seed: it draws nothing
    set_random_seed(plan.seed)  # before any module is built
    views = plan.method.entry.cls.pretrain_views(**plan.method.config)
    return ensure_pretrained(plan, task_obj.pretrain_dataset(views),
                             data_identities(plan)["pretrain"], cache_root, log=log,
                             health_batch=health_batch)


def pretrain_health(plan, folder, task_obj, log=print) -> dict | None:
    """The collapse monitoring's report of a pretrained folder (:mod:`engine.health`).
    A checkpoint pretrained before the monitoring existed is measured now, at its end
    only, against a randomly initialised encoder of the run's seed, and the report is
    kept beside it."""
    import torch

    from engine.atomic import atomic_write_json
    from engine.health import encoder_health, health_report
    from engine.pretrain import HEALTH_FILE, load_method
    from methods import build_method

    if folder is None:
        return None
    path = Path(folder) / HEALTH_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    batch = task_obj.health_batch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        random_encoder = build_method(plan.method.name, encoder=plan.encoder.as_kwargs(),
                                      **plan.method.config).encoder
        initial = {"iter": 0, **encoder_health(random_encoder, batch)}
        final = {"iter": None, **encoder_health(load_method(Path(folder) / "method.pth").encoder,
                                                batch)}
    report = health_report([initial, final], note=(
        "measured after pretraining: the checkpoint predates the monitoring; 'initial' is a "
        f"randomly initialised encoder of seed {plan.seed}"))
    atomic_write_json(path, report, indent=1)
    log(f"[health] {folder}: measured after pretraining")
    return report


def pretrained_method(method: str, task: str = "cifar100", *, preset: str = "tiny", seed: int = 0,
                      data_root=None, cache=None, row=None, cfg_options=None):
    """(pretrained method in eval mode, task object): pretrains if not cached."""
    from engine.pretrain import load_method

    plan = make_plan(method, task, preset=preset, seed=seed, data_root=data_root,
                     cfg_options=cfg_options, row=row)
    cache_root = Path(cache) if cache else default_cache()
    task_obj = build_task(plan, cache_root)
    task_obj.prepare_data()
    task_obj.check_data()
    folder = ensure_checkpoint(plan, task_obj, cache_root)
    if folder is None:
        raise ConfigError(f"method {method!r} has no pretraining")
    return load_method(folder / "method.pth"), task_obj


def run_cell(method: str, task: str, *, preset: str = "tiny", seed: int = 0, data_root=None,
             out=None, cache=None, cfg_options: dict | None = None, row: dict | None = None,
             log=print) -> dict:
    """Run (method, task) under a preset and write its record. Returns the record."""
    from mmengine.dist import barrier, is_main_process
    from mmengine.runner import set_random_seed

    from engine.locks import file_lock

    started = time.time()
    git_commit()  # the code this process loaded, before anyone can change the tree under it
    plan = make_plan(method, task, preset=preset, seed=seed, data_root=data_root,
                     cfg_options=cfg_options, row=row)
    cache_root = Path(cache) if cache else default_cache()
    task_obj = build_task(plan, cache_root)
    task_obj.prepare_data(log)  # embedded data generated / data preprocessed, once
    task_obj.check_data()  # fail on bad data before any pretraining

    path = record_path(out, plan)
    data = data_identities(plan)
    work_dir = work_dir_of(plan, path, data, cache_root)
    invocation = dict(method=method, task=task, preset=preset, seed=seed, data_root=data_root,
                      cfg_options=dict(cfg_options or {}), row=dict(row or {}))
    # One process per cell: a second run of the same cell waits, then finds the record.
    lock = (file_lock(work_dir.parent / f"{work_dir.name}.lock", f"cell {path.name}", log=log)
            if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext())
    with lock:
        done = _finished_since(path, started)
        if done is not None:
            log(f"[run] another process finished this cell meanwhile: {path}")
            return done
        phase, pretrained, wall = "pretrain", None, dict(pretrain=0.0, task=0.0)
        try:
            t0 = time.time()
            pretrained = ensure_checkpoint(plan, task_obj, cache_root, log)
            wall["pretrain"] = time.time() - t0

            phase = "task"
            resuming = (work_dir / "last_checkpoint").exists()
            log(f"[run] {'resuming' if resuming else 'starting'} {plan.task} in {work_dir}")
            set_random_seed(plan.seed)  # the task's model (heads, fresh position embeddings) follows --seed
            t0 = time.time()
            metrics = task_obj.run(pretrained=pretrained, work_dir=work_dir, log=log)
            wall["task"] = time.time() - t0
        except run_failures() as exc:
            wall["total"] = time.time() - started
            _record_failure(plan, exc, phase, pretrained, wall, data, path, work_dir, invocation, log)
            raise
        wall["total"] = time.time() - started
        from engine.throughput import record_phases

        health = pretrain_health(plan, pretrained, task_obj, log) if is_main_process() else None
        if health:
            metrics = {**metrics, "warnings": [*(metrics.get("warnings") or ()),
                                               *health["warnings"]]}
            for w in health["warnings"]:
                log(f"[warning] {w}")
        record = build_record(plan, metrics, pretrained, wall, data,
                              resumes=_resumes(pretrained, work_dir), invocation=invocation,
                              throughput=record_phases(pretrained, work_dir),
                              pretrain_health=health)
        if is_main_process():  # under torchrun every rank has the gathered metrics; one writes
            write_record(record, path)
            # The record is written: the finetune state is spent (a rerun trains afresh).
            for spent in [*work_dir.glob("*.pth"), work_dir / "last_checkpoint",
                          work_dir / "resumes.json", work_dir / "throughput.json"]:
                spent.unlink(missing_ok=True)
        barrier()
    record["path"] = str(path)
    return record


def run_failures() -> tuple[type[BaseException], ...]:
    """What ends a run with a failed record: divergence, a data error, out of memory.
    (Bad input stops before anything runs; a kill or SIGTERM is resumed, not failed.)"""
    import torch

    from engine.errors import DataError, TrainingError

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return (TrainingError, DataError, oom, MemoryError)


def _resumes(pretrained, work_dir: Path) -> dict:
    from engine.resume import read_resumes

    return {"pretrain": read_resumes(Path(pretrained) / "work") if pretrained else [],
            "task": read_resumes(work_dir)}


def _current_step():
    """The iteration (1-based) the latest Runner was at, or None before any."""
    from mmengine.logging import MessageHub

    it = MessageHub.get_current_instance().get_info("iter")
    return None if it is None else int(it) + 1


def _record_failure(plan, exc, phase, pretrained, wall, data, path: Path, work_dir, invocation,
                    log) -> None:
    """A failed record in place of the cell's (never over an ok one)."""
    from mmengine.dist import is_main_process

    if not is_main_process():
        return
    from engine.errors import TrainingError

    # a loss read some iterations after it was computed names its own iteration
    step = exc.step if isinstance(exc, TrainingError) and exc.step is not None else _current_step()
    from engine.cli import one_line

    failure = dict(phase=phase, step=step, error=type(exc).__name__, reason=one_line(exc))
    if _status(path) == "ok":
        log(f"[run] failed ({failure['reason']}); the existing ok record {path} is kept")
        return
    record = build_record(plan, {}, pretrained, wall, data, failure=failure,
                          resumes=_resumes(pretrained, work_dir), invocation=invocation)
    write_record(record, path)
    log(f"[run] failed in {phase} at step {failure['step']}: recorded in {path}")


def _status(path: Path) -> str | None:
    try:
        return json.loads(Path(path).read_text()).get("status", "ok")
    except (OSError, ValueError):
        return None


def _finished_since(path: Path, started: float) -> dict | None:
    """The cell's ok record if another process wrote it after ``started``."""
    import datetime as dt

    try:
        rec = json.loads(Path(path).read_text())
        finished = dt.datetime.fromisoformat(rec["finished"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if rec.get("status", "ok") != "ok" or finished < started:
        return None
    rec["path"] = str(path)
    return rec

