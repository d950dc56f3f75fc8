"""``python -m benchmarks.run ARGS`` in a child process, without a fresh interpreter's
~10 s of imports (torch, mmengine, timm).

Children fork from a forkserver that imported the suite once but never ran a torch op
(forking the pytest process itself, after other tests used torch's OpenMP pool, can
deadlock). A child executes the module exactly as ``python -m benchmarks.run ARGS``
does: ``runpy`` as ``__main__``, the exit status from ``SystemExit``, an escaping
exception printed as a traceback with status 1; stdout and stderr go to files. It
trains on one thread (``OMP_NUM_THREADS=1``, as the tests' in-process runs), so its
results can be compared bit for bit with theirs. ``fault`` installs
``tests/faults/sitecustomize.py``'s fault injection (``PART_BENCH_TEST_FAULT``) in the
child only; a child killed by a signal has the negative signal number as its status.

Used by tests/test_bad_input.py and tests/test_faults.py (one server for both).
"""
from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "faults" / "sitecustomize.py"

__all__ = ["start_cli", "finish_cli", "run_cli"]


def _child(args: list[str], out: str, err: str, fault: str) -> None:
    code = 1
    try:
        for fd, path in ((1, out), (2, err)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PART_BENCH_TEST_FAULT=fault)
        import torch

        torch.set_num_threads(1)
        if fault:
            runpy.run_path(str(FAULTS), run_name="part_bench_test_faults")
        sys.argv = ["benchmarks.run", *args]
        multiprocessing.set_start_method("fork", force=True)  # as in a fresh interpreter
        sys.modules.pop("benchmarks.run", None)  # run as a fresh __main__, as python -m does
        try:
            runpy.run_module("benchmarks.run", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["benchmarks.run", "engine.runner", "tasks"])


def start_cli(args: list[str], log_dir: Path, name: str = "cli", fault: str = ""):
    """Start ``python -m benchmarks.run ARGS`` in a child; its output goes to
    ``log_dir/<name>.stdout`` and ``.stderr``. Returns the process (see :func:`finish_cli`)."""
    out, err = Path(log_dir) / f"{name}.stdout", Path(log_dir) / f"{name}.stderr"
    child = _FORKSERVER.Process(target=_child, args=(list(map(str, args)), str(out), str(err), fault))
    child.start()
    child.paths = (out, err)
    return child


def finish_cli(child, timeout: float = 300) -> tuple[int, str, str]:
    """Wait for a child of :func:`start_cli`: (status, stdout, stderr)."""
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        child.join()
        raise TimeoutError(f"benchmarks.run did not finish in {timeout} s")
    out, err = child.paths
    return child.exitcode, out.read_text(), err.read_text()


def run_cli(args: list[str], log_dir: Path, fault: str = "", timeout: float = 300) -> tuple[int, str, str]:
    """``python -m benchmarks.run ARGS`` in a child: (status, stdout, stderr)."""
    return finish_cli(start_cli(args, log_dir, fault=fault), timeout)
