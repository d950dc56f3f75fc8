"""Run one cell of a table: pretrain a method (cached), transfer it to a task, record.

    python -m benchmarks.run --method part --task cifar100            # tiny preset
    python -m benchmarks.run --method part --task pretext             # pretext errors
    python -m benchmarks.run --method part --task imagenet --preset paper --data-root /data/imagenet
    python -m benchmarks.run --method part --task cifar100 --cfg-options methods.part.num_pairs=512
    python -m benchmarks.run --method part --task coco --preset paper --world-size 8 --dry-run
    python -m benchmarks.run --method part --task cifar100 --protocol knn   # frozen encoder
    python -m benchmarks.run --method part --task eeg --protocol linear     # kappa + accuracy

The run is resolved first into one plan (engine/plan.py); ``--dry-run`` prints it
(every value and where it came from, batches, lr, iterations, checkpoint key, record
path) without training or writing anything. A run writes one JSON record (metrics,
the plan, data identity, versions, git commit, hardware, wall time) to
``results/<preset>/runs/`` atomically, and prints the metrics. A pretrained checkpoint
is reused when everything that changes its weights is the same, data included.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "benchmarks" / "presets"


def default_cache() -> Path:
    return Path(os.environ.get("PART_BENCH_CACHE", REPO / "cache"))


def parse_args(argv=None):
    from mmengine.config import DictAction

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message):  # one line, as every other bad input (no usage block)
            self.exit(2, f"error: {' '.join(message.split())} (see --help)\n")

    class CfgOptions(DictAction):
        def __call__(self, parser, namespace, values, option_string=None):
            for kv in values:
                if "=" not in kv or not kv.split("=", 1)[0].strip():
                    parser.error(f"--cfg-options {kv}: expected KEY=VALUE, e.g. "
                                 f"methods.part.num_pairs=512")
            super().__call__(parser, namespace, values, option_string)

    p = OneLineParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    explaining = "--explain" in (sys.argv[1:] if argv is None else argv)
    p.add_argument("--method", required=not explaining, help="a registered method, e.g. part, part-grid")
    p.add_argument("--task", required=not explaining, help="cifar100, imagenet, pretext, coco, eeg")
    p.add_argument("--explain", metavar="RECORD", default=None,
                   help="print the command (and commit) that reproduces a record, and exit")
    p.add_argument("--preset", default="tiny", help="tiny (default), paper, or a preset file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=os.environ.get("PART_BENCH_DATA"),
                   help="real data set root (default: $PART_BENCH_DATA; none: embedded data)")
    p.add_argument("--out", default=None, help="record folder (default results/<preset>/runs)")
    p.add_argument("--cache", default=None, help="checkpoints and generated data "
                   "(default $PART_BENCH_CACHE or ./cache)")
    p.add_argument("--cfg-options", nargs="+", action=CfgOptions, default={},
                   help="override plan values: methods.<method>.<key>=V or "
                        "tasks.<task>.<section>.<key>=V, e.g. methods.part.num_pairs=512")
    p.add_argument("--protocol", choices=("finetune", "linear", "knn"), default=None,
                   help="classification tasks (cifar100, imagenet, eeg): finetune (default), "
                        "linear probe or kNN on the frozen encoder "
                        "(= --cfg-options tasks.<task>.protocol.name=...)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan and exit: trains nothing, writes nothing")
    p.add_argument("--world-size", type=int, default=None,
                   help="processes to plan for with --dry-run (default: $WORLD_SIZE or 1)")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as one JSON object")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from engine.cli import configure_logging, report_user_error, user_errors

    configure_logging()
    from engine.resume import Preempted
    from engine.runner import export_slurm_ranks

    export_slurm_ranks()  # under srun: the world size and rank the plan divides batches by

    try:
        if args.explain:
            print(explain(args.explain))
            return 0
        if args.protocol is not None:
            args.cfg_options = with_protocol(args.task, args.protocol, args.cfg_options,
                                             args.preset)
        if args.dry_run:
            info = dry_run(args.method, args.task, preset=args.preset, seed=args.seed,
                           data_root=args.data_root, out=args.out, cache=args.cache,
                           cfg_options=args.cfg_options, world_size=args.world_size)
            from engine.plan import format_plan

            print(json.dumps(info, indent=1, default=str) if args.json else format_plan(info))
            return 0
        if args.world_size is not None:
            print("error: --world-size plans a dry run; a real run takes the world size from "
                  "torchrun", file=sys.stderr)
            return 2
        record = run_cell(args.method, args.task, preset=args.preset, seed=args.seed,
                          data_root=args.data_root, out=args.out, cache=args.cache,
                          cfg_options=args.cfg_options)
    except user_errors() as exc:
        if args.debug:
            raise
        return report_user_error(exc)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    except Preempted as exc:  # SIGTERM: a checkpoint of this very step is saved
        print(f"preempted: {exc}", file=sys.stderr)
        return 143
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or args.debug:
            raise
        print(f"error: disk full ({exc.strerror}) writing {exc.filename or 'a file'}; the previous "
              f"checkpoints and records are intact: free space and rerun the same command",
              file=sys.stderr)
        return 1
    from mmengine.dist import is_main_process

    if is_main_process():
        print_metrics(record)
    return 0


def with_protocol(task: str, protocol: str, cfg_options: dict | None, preset: str = "tiny") -> dict:
    """``--protocol P``: the command-line option ``tasks.<task>.protocol.name=P`` where P
    is not already the preset's protocol (finetune unless the preset says otherwise), so
    a frozen protocol's record is a variant (``part[protocol.name=knn]__...``) beside the
    finetuning cell, and ``--protocol finetune`` is that cell. A task without protocols
    is one ConfigError line."""
    from engine.config import load_preset
    from engine.errors import ConfigError
    from tasks import TASKS

    if task in TASKS and "protocol" not in TASKS[task].sections:
        with_it = sorted(n for n, t in TASKS.items() if "protocol" in t.sections)
        raise ConfigError(f"task {task} has no --protocol (it has its own evaluation); "
                          f"--protocol is for: {', '.join(with_it)}")
    own = ((load_preset(preset).get("tasks", {}).get(task) or {}).get("protocol") or {})
    if protocol == own.get("name", "finetune"):
        return dict(cfg_options or {})
    return {**(cfg_options or {}), f"tasks.{task}.protocol.name": protocol}


def explain(record_file) -> str:
    """The command (and commit) that reproduces a record, checked by resolving its plan."""
    import shlex

    from engine.errors import ConfigError
    from engine.plan import plan_to_dict, stable_hash

    try:
        rec = json.loads(Path(record_file).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read record {record_file}: {exc}") from exc
    inv = rec.get("invocation")
    if not inv:
        raise ConfigError(f"record {record_file} has no invocation (written by an older version)")
    options = dict(inv.get("cfg_options") or {})
    for key, value in (inv.get("row") or {}).items():  # a table row's overrides
        section, _, rest = key.partition(".")
        options[f"methods.{inv['method']}.{rest}" if section == "method"
                else f"tasks.{inv['task']}.{key}"] = value
    cmd = ["python", "-m", "benchmarks.run", "--method", inv["method"], "--task", inv["task"],
           "--preset", inv["preset"], "--seed", str(inv["seed"])]
    if inv.get("data_root"):
        cmd += ["--data-root", str(inv["data_root"])]
    if options:
        cmd += ["--cfg-options", *(f"{k}={_cli_value(v)}" for k, v in options.items())]
    git = rec.get("git") or {}
    lines = [f"# record {record_file}: status {rec.get('status', 'ok')}, plan {rec.get('plan_hash')}"]
    if git.get("commit"):
        dirty = (f" (the tree was dirty: diff sha1 {git.get('diff_sha1')}; those changes are not "
                 f"in the commit)" if git.get("dirty") else "")
        lines.append(f"git checkout {git['commit']}{dirty}")
    lines.append(" ".join(shlex.quote(c) for c in cmd))
    try:
        plan = make_plan(inv["method"], inv["task"], preset=inv["preset"], seed=inv["seed"],
                         data_root=inv.get("data_root"), cfg_options=options)
        same = stable_hash(plan_to_dict(plan)) == rec.get("plan_hash")
        lines.append("# this command resolves to the record's plan" if same else
                     "# warning: at this commit the command resolves to another plan than the record's")
    except Exception as exc:  # noqa: BLE001 - an explanation still prints the command
        lines.append(f"# warning: the command does not resolve at this commit: {exc}")
    return "\n".join(lines)


def _cli_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_cli_value(x) for x in v) + "]"
    return str(v)


def print_metrics(record: dict) -> None:
    head = f"{record['method']}{'[' + record['variant'] + ']' if record['variant'] else ''}"
    print(f"\n== {head} / {record['task']} / preset {record['preset']} / seed {record['seed']} "
          f"({record['wall_time_s']['total']:.0f} s) ==")
    for k, v in record["metrics"].items():
        if isinstance(v, float):
            print(f"  {k:>20s}: {v:.4f}")
    for w in record.get("warnings") or ():
        print(f"  WARNING: {w}")
    print(f"  record: {record['path']}")


# ---------------------------------------------------------------------------- plans
def make_plan(method: str, task: str, *, preset: str = "tiny", seed: int = 0, data_root=None,
              cfg_options: dict | None = None, row: dict | None = None, world_size=None):
    """The resolved plan of one run (:func:`engine.plan.resolve_plan`)."""
    from engine.config import load_preset, split_cfg_options
    from engine.plan import resolve_plan

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
    from engine.plan import plan_to_dict, stable_hash

    d = plan_to_dict(plan)
    d.pop("loader")
    return stable_hash(dict(plan=d, data=data))


def work_dir_of(plan, record: Path, data: dict, cache_root: Path) -> Path:
    return Path(cache_root) / "runs" / f"{record.stem}-{run_key(plan, data)}"


def cell_record_path(method: str, task: str, *, preset: str = "tiny", seed: int = 0,
                     row: dict | None = None, out=None, cfg_options=None, data_root=None) -> Path:
    """Where the record of a cell is (or will be) written."""
    from engine.records import record_path

    return record_path(out, make_plan(method, task, preset=preset, seed=seed, data_root=data_root,
                                      cfg_options=cfg_options, row=row))


def runtime_here(loader) -> dict:
    """How the loader section's precision and compile switches resolve on this machine
    (a plan made on a login node says what a GPU node would do in ``format_plan``)."""
    from engine.errors import ConfigError
    from engine.precision import DeviceCaps, resolve_precision

    caps = DeviceCaps.probe()
    try:
        resolved = resolve_precision(loader.precision, caps)
    except ConfigError as exc:
        resolved = f"refused here: {exc}"
    return dict(device=caps.name, precision=loader.precision, precision_here=resolved,
                pin_memory=caps.cuda, compile=loader.compile)


def describe_plan(plan, cache_root: Path, out=None) -> dict:
    """Everything ``--dry-run`` shows, as one dict (``--json`` prints it as is)."""
    from engine.errors import PartBenchError
    from engine.plan import iters_per_epoch, plan_to_dict, with_step_floor
    from engine.pretrain import is_pretrained, pretrained_folder
    from engine.records import record_path
    from tasks import TASKS, build_task

    info = plan_to_dict(plan)
    info["sources"] = plan.sources
    missing = []
    sources = [("data", plan.data)]
    if plan.pretrain_data is not plan.data:  # detection pretrains on other images
        sources.append(("pretrain_data", plan.pretrain_data))
    for name, d in sources:
        if d.missing:
            missing.append(f"{name}: no root for {d.dataset} (and no embedded data in preset "
                           f"{plan.preset})" + (": pass --data-root" if name == "data" else
                                                f": set tasks.{plan.task}.pretrain_data.root"))
        elif d.root and not Path(d.root).exists():
            missing.append(f"{name}: {d.root} does not exist")
    sizes = {"pretrain": None, "finetune": None}
    if not missing:
        try:
            sizes = build_task(plan, cache_root).train_sizes()
        except PartBenchError as exc:
            missing.append(str(exc))
    info["missing_data"] = missing

    iterations = {}
    published = TASKS[plan.task].published_sizes(plan)
    phases = (("pretrain", plan.pretrain, plan.pretrain_data), ("finetune", plan.finetune, plan.data))
    for phase, sched, data in phases:
        if sched is None:
            continue
        if data.root:
            n, how = sizes.get(phase), "counted"
        else:  # the generator's train split (a COCO one includes its images without objects)
            n = (data.embedded or {}).get("num_train")
            n, how = (int(n), "embedded") if n else (None, "")
        if n is None:
            n, how = published.get(phase) or (None, "")
        if n is None:
            continue
        per = sched.batch_per_process(plan.world_size)
        ipe = iters_per_epoch(n, per, plan.world_size, n >= per, sched.repeated_aug)
        epochs = with_step_floor(sched, plan.sources, phase).epochs_for(ipe)  # min_steps
        iterations[phase] = dict(num_images=n, count=how, per_epoch=ipe, epochs=epochs,
                                 total=ipe * epochs,
                                 optimizer_steps=ipe * epochs // sched.grad_accum)
    info["iterations"] = iterations

    data = data_identities(plan)
    if plan.pretrain is not None and data["pretrain"] is not None:
        folder = pretrained_folder(plan, data["pretrain"], cache_root)
        info["checkpoint"] = dict(key=folder.name, cached=is_pretrained(folder), path=str(folder))
    else:
        info["checkpoint"] = dict(key=None, cached=False, path=None)
    info["runtime"] = runtime_here(plan.loader)
    rec = record_path(out, plan)
    info["record"] = dict(path=str(rec), exists=rec.exists())
    info["work_dir"] = str(work_dir_of(plan, rec, data, cache_root))
    return info


def dry_run(method: str, task: str, *, preset: str = "tiny", seed: int = 0, data_root=None,
            out=None, cache=None, cfg_options=None, row=None, world_size=None) -> dict:
    plan = make_plan(method, task, preset=preset, seed=seed, data_root=data_root,
                     cfg_options=cfg_options, row=row, world_size=world_size)
    return describe_plan(plan, Path(cache) if cache else default_cache(), out)


# ---------------------------------------------------------------------------- runs
def ensure_checkpoint(plan, task_obj, cache_root: Path, log=print):
    """The pretrained folder of a plan (pretraining it if it is not cached), or None."""
    from engine.pretrain import ensure_pretrained
    from mmengine.runner import set_random_seed

    if not plan.method.pretrains:
        return None
    if plan.pretrain_data.note:
        log(f"[plan] {plan.pretrain_data.note}")
    set_random_seed(plan.seed)  # before any module is built
    from methods import method_entry

    views = method_entry(plan.method.name).cls.pretrain_views(**plan.method.config)
    return ensure_pretrained(plan, task_obj.pretrain_dataset(views),
                             data_identities(plan)["pretrain"], cache_root, log=log)


def pretrained_method(method: str, task: str = "cifar100", *, preset: str = "tiny", seed: int = 0,
                      data_root=None, cache=None, row=None, cfg_options=None):
    """(pretrained method in eval mode, task object): pretrains if not cached."""
    from engine.errors import ConfigError
    from engine.pretrain import load_method
    from tasks import build_task

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
    from engine.records import build_record, git_commit, record_path, write_record
    from tasks import build_task

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

        record = build_record(plan, metrics, pretrained, wall, data,
                              resumes=_resumes(pretrained, work_dir), invocation=invocation,
                              throughput=record_phases(pretrained, work_dir))
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

    from engine.records import build_record, write_record

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


if __name__ == "__main__":
    sys.exit(main())
