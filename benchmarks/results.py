"""Regenerate every table and figure of a preset with today's code, in one command.

    python -m benchmarks.results              # make results: the tiny preset
    python -m benchmarks.results --only table5 rank

Runs every table of :mod:`benchmarks.tables` (one seed, as ``make tableN``), the frozen
ranking of :mod:`benchmarks.rank` (three seeds) and Figures 4-6, in that order, through
one cache: a pretraining is shared by every table that needs it. A cell whose record
is of today's plan is not run again (:func:`benchmarks.tables.fill`), so a second run
with no code change runs nothing and writes the same tables. Prints the time of each
step and of the whole.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

STEPS = ("table1", "table2", "table3", "table4", "table5", "table6", "table7", "fig8", "rank",
         "figures")


def run_table(name: str, preset: str, cache, data_root=None) -> None:
    from benchmarks.tables import TABLES, fill

    if name in TABLES:
        fill(name, preset, 1, True, data_root, cache)
    elif name == "rank":
        from benchmarks.rank import rank_table

        fill("rank", preset, 3, True, data_root, cache, table=rank_table("cifar100"))
    else:
        raise KeyError(f"unknown step {name!r}; expected one of: {', '.join(STEPS)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.results",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--only", nargs="+", choices=STEPS, default=None,
                   help="these steps only (default: all, in this order: " + ", ".join(STEPS) + ")")
    p.add_argument("--cache", default=None)
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    p.add_argument("--verbose", action="store_true", help="mmengine's whole set-up output")
    args = p.parse_args(argv)
    if args.verbose:
        os.environ["PART_BENCH_VERBOSE"] = "1"  # read by engine.resume.SuiteRunner
    from engine.cli import run_command

    def body():
        times = {}
        started = time.time()
        for name in args.only or STEPS:
            t0 = time.time()
            print(f"\n[results] {name} ...", flush=True)
            if name == "figures":
                from benchmarks.figures import main as figures

                status = figures(["--preset", args.preset]
                                 + (["--cache", args.cache] if args.cache else []))
                if status:
                    return status
            else:
                run_table(name, args.preset, args.cache)
            times[name] = time.time() - t0
            print(f"[results] {name}: {_clock(times[name])}", flush=True)
        print(f"\n[results] preset {args.preset}: "
              + ", ".join(f"{n} {_clock(t)}" for n, t in times.items())
              + f"; total {_clock(time.time() - started)}")
        return 0

    return run_command(body, args.debug)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s"


if __name__ == "__main__":
    sys.exit(main())
