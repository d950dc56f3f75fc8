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
import json
import os
import sys

from pipeline.cell import run_cell, with_protocol
from pipeline.describe import dry_run, explain


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
    p.add_argument("--verbose", action="store_true",
                   help="mmengine's whole set-up output (environment, hook table) at each Runner start")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verbose:
        os.environ["PART_BENCH_VERBOSE"] = "1"  # read by engine.resume.SuiteRunner
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


if __name__ == "__main__":
    sys.exit(main())
