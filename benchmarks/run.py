"""Run one cell of a table: pretrain a method (cached), transfer it to a task, record.

    python -m benchmarks.run --method part --task cifar100            # tiny preset
    python -m benchmarks.run --method part --task pretext             # pretext errors
    python -m benchmarks.run --method part --task imagenet --preset paper --data-root /data/imagenet
    python -m benchmarks.run --method part --task cifar100 --cfg-options methods.part.num_pairs=512
    python -m benchmarks.run --method part --task coco --preset paper --world-size 8 --dry-run

The run is resolved first into one plan (engine/plan.py); ``--dry-run`` prints it
(every value and where it came from, batches, lr, iterations, checkpoint key, record
path) without training or writing anything. A run writes one JSON record (metrics,
the plan, data identity, versions, git commit, hardware, wall time) to
``results/<preset>/runs/`` atomically, and prints the metrics. A pretrained checkpoint
is reused when everything that changes its weights is the same, data included.
"""
from __future__ import annotations

import argparse
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

    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, help="a registered method, e.g. part, part-grid")
    p.add_argument("--task", required=True, help="cifar100, imagenet, pretext, coco")
    p.add_argument("--preset", default="tiny", help="tiny (default), paper, or a preset file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=os.environ.get("PART_BENCH_DATA"),
                   help="real data set root (default: $PART_BENCH_DATA; none: embedded data)")
    p.add_argument("--out", default=None, help="record folder (default results/<preset>/runs)")
    p.add_argument("--cache", default=None, help="checkpoints and generated data "
                   "(default $PART_BENCH_CACHE or ./cache)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override plan values: methods.<method>.<key>=V or "
                        "tasks.<task>.<section>.<key>=V, e.g. methods.part.num_pairs=512")
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
    try:
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
    from mmengine.dist import is_main_process

    if is_main_process():
        print_metrics(record)
    return 0


def print_metrics(record: dict) -> None:
    head = f"{record['method']}{'[' + record['variant'] + ']' if record['variant'] else ''}"
    print(f"\n== {head} / {record['task']} / preset {record['preset']} / seed {record['seed']} "
          f"({record['wall_time_s']['total']:.0f} s) ==")
    for k, v in record["metrics"].items():
        if isinstance(v, float):
            print(f"  {k:>20s}: {v:.4f}")
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


def describe_plan(plan, cache_root: Path, out=None) -> dict:
    """Everything ``--dry-run`` shows, as one dict (``--json`` prints it as is)."""
    from engine.errors import PartBenchError
    from engine.plan import PUBLISHED_TRAIN_SIZES, iters_per_epoch, plan_to_dict
    from engine.pretrain import is_pretrained, pretrained_folder
    from engine.records import record_path
    from tasks import build_task

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
            n, how = PUBLISHED_TRAIN_SIZES.get(data.dataset), "published size"
        if n is None:
            continue
        per = sched.batch_per_process(plan.world_size)
        ipe = iters_per_epoch(n, per, plan.world_size, n >= per, sched.repeated_aug)
        iterations[phase] = dict(num_images=n, count=how, per_epoch=ipe, epochs=sched.epochs,
                                 total=ipe * sched.epochs,
                                 optimizer_steps=ipe * sched.epochs // sched.grad_accum)
    info["iterations"] = iterations

    data = data_identities(plan)
    if plan.pretrain is not None and data["pretrain"] is not None:
        folder = pretrained_folder(plan, data["pretrain"], cache_root)
        info["checkpoint"] = dict(key=folder.name, cached=is_pretrained(folder), path=str(folder))
    else:
        info["checkpoint"] = dict(key=None, cached=False, path=None)
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

    from engine.records import build_record, record_path, write_record
    from tasks import build_task

    started = time.time()
    plan = make_plan(method, task, preset=preset, seed=seed, data_root=data_root,
                     cfg_options=cfg_options, row=row)
    cache_root = Path(cache) if cache else default_cache()
    task_obj = build_task(plan, cache_root)
    task_obj.prepare_data(log)  # embedded data generated / data preprocessed, once
    task_obj.check_data()  # fail on bad data before any pretraining

    t0 = time.time()
    pretrained = ensure_checkpoint(plan, task_obj, cache_root, log)
    t_pre = time.time() - t0

    path = record_path(out, plan)
    data = data_identities(plan)
    work_dir = work_dir_of(plan, path, data, cache_root)
    resuming = (work_dir / "last_checkpoint").exists()
    log(f"[run] {'resuming' if resuming else 'starting'} {plan.task} in {work_dir}")
    set_random_seed(plan.seed)  # the task's model (heads, fresh position embeddings) follows --seed
    t0 = time.time()
    metrics = task_obj.run(pretrained=pretrained, work_dir=work_dir, log=log)
    t_task = time.time() - t0
    record = build_record(plan, metrics, pretrained,
                          dict(total=time.time() - started, pretrain=t_pre, task=t_task), data)
    if is_main_process():  # under torchrun every rank has the gathered metrics; one writes
        write_record(record, path)
        # The record is written: the finetune state is spent (a rerun trains afresh).
        for spent in [*work_dir.glob("*.pth"), work_dir / "last_checkpoint"]:
            spent.unlink(missing_ok=True)
    barrier()
    record["path"] = str(path)
    return record


if __name__ == "__main__":
    sys.exit(main())
