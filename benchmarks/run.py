"""Run one cell of a table: pretrain a method (cached), transfer it to a task, record.

    python -m benchmarks.run --method part --task cifar100            # tiny preset
    python -m benchmarks.run --method part --task pretext             # pretext errors
    python -m benchmarks.run --method part --task imagenet --preset paper --data-root /data/imagenet
    python -m benchmarks.run --method part --task cifar100 --cfg-options methods.part.num_pairs=512

Writes one JSON record (metrics, resolved config, versions, git commit, hardware,
wall time) to ``results/<preset>/runs/`` atomically, and prints the metrics. A
pretrained checkpoint is reused for the same (method, config, preset, seed).
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--task", required=True, help="cifar100, imagenet, pretext, ...")
    p.add_argument("--preset", default="tiny", help="tiny (default), paper, or a preset file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=os.environ.get("PART_BENCH_DATA"),
                   help="real data set root (default: $PART_BENCH_DATA; none: embedded data)")
    p.add_argument("--out", default=None, help="record folder (default results/<preset>/runs)")
    p.add_argument("--cache", default=None, help="checkpoints and generated data "
                   "(default $PART_BENCH_CACHE or ./cache)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override preset values, e.g. methods.part.num_pairs=512")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from engine.errors import PartBenchError

    try:
        record = run_cell(args.method, args.task, preset=args.preset, seed=args.seed,
                          data_root=args.data_root, out=args.out, cache=args.cache,
                          cfg_options=args.cfg_options)
    except PartBenchError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
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


def cell_record_path(method: str, task: str, *, preset: str = "tiny", seed: int = 0,
                     method_overrides: dict | None = None, out=None, cfg_options=None) -> Path:
    """Where the record of a cell is (or will be) written."""
    from engine.config import load_preset, resolve_cell
    from engine.records import record_path
    from tasks import build_task

    cfg = load_preset(preset, cfg_options)
    task_obj = build_task(task, cfg["tasks"], None, default_cache())
    cell = resolve_cell(cfg, method, task_obj, method_overrides)
    return record_path(out, cfg["preset"], cell, task, seed)


def ensure_checkpoint(cfg, cell, task_obj, cache_root: Path, seed: int, log=print):
    """The pretrained folder of a cell (pretraining it if it is not cached), or None."""
    from engine.pretrain import ensure_pretrained

    if not cell["pretrains"]:
        return None
    return ensure_pretrained(cell["method"], cell["method_cfg"], task_obj.pretrain_cfg,
                             task_obj.pretrain_dataset(), cache_root, cfg["preset"], seed, log=log)


def pretrained_method(method: str, task: str = "cifar100", *, preset: str = "tiny", seed: int = 0,
                      data_root=None, cache=None, method_overrides=None, cfg_options=None):
    """(pretrained method in eval mode, task object): pretrains if not cached."""
    from engine.config import load_preset, resolve_cell
    from engine.pretrain import load_method
    from tasks import build_task

    cfg = load_preset(preset, cfg_options)
    cache_root = Path(cache) if cache else default_cache()
    task_obj = build_task(task, cfg["tasks"], data_root, cache_root)
    task_obj.check_data()
    cell = resolve_cell(cfg, method, task_obj, method_overrides)
    folder = ensure_checkpoint(cfg, cell, task_obj, cache_root, seed)
    if folder is None:
        from engine.errors import ConfigError
        raise ConfigError(f"method {method!r} has no pretraining")
    return load_method(folder / "method.pth"), task_obj


def run_cell(method: str, task: str, *, preset: str = "tiny", seed: int = 0, data_root=None,
             out=None, cache=None, cfg_options: dict | None = None,
             method_overrides: dict | None = None, log=print) -> dict:
    """Run (method, task) under a preset and write its record. Returns the record."""
    from engine.config import load_preset, resolve_cell
    from engine.records import build_record, record_path, write_record
    from tasks import build_task

    started = time.time()
    cfg = load_preset(preset, cfg_options)
    cache_root = Path(cache) if cache else default_cache()
    task_obj = build_task(task, cfg["tasks"], data_root, cache_root)
    cell = resolve_cell(cfg, method, task_obj, method_overrides)
    task_obj.check_data()  # fail on bad data before any pretraining

    t0 = time.time()
    pretrained = ensure_checkpoint(cfg, cell, task_obj, cache_root, seed, log)
    t_pre = time.time() - t0

    path = record_path(out, cfg["preset"], cell, task, seed)
    work_dir = cache_root / "runs" / path.stem
    t0 = time.time()
    metrics = task_obj.run(pretrained=pretrained, work_dir=work_dir, seed=seed,
                           method_name=method, finetune_pos_embed=cell["finetune_pos_embed"],
                           log=log)
    t_task = time.time() - t0
    record = build_record(cell, task, cfg, seed, metrics, pretrained,
                          dict(total=time.time() - started, pretrain=t_pre, task=t_task),
                          data_root)
    from mmengine.dist import barrier, is_main_process

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
