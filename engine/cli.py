"""The command-line boundary: logging set up once, and user errors as one line.

Library code raises :class:`engine.errors.PartBenchError` (or ``ValueError`` /
``KeyError`` from ``methods/`` and ``tasks/``, which know nothing of the CLI); a command
turns them into one ``error: ...`` line on stderr and exit status 2, with the traceback
only under ``--debug``.
"""
from __future__ import annotations

import logging
import os
import sys

__all__ = ["configure_logging", "user_errors", "one_line", "report_user_error", "run_command"]


def configure_logging() -> None:
    """Where a command starts: our lines on stdout; mmengine's logger prints its own
    (it is not repeated through the root logger)."""
    logging.basicConfig(level=os.environ.get("PART_BENCH_LOG_LEVEL", "INFO"),
                        format="%(message)s", stream=sys.stdout)
    logging.getLogger("mmengine").propagate = False


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a command reports as one line."""
    from .errors import PartBenchError

    return (PartBenchError, ValueError, KeyError)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line: a KeyError's own text (not its repr), and for an
    error re-raised from a DataLoader worker (torch appends the worker's traceback) the
    worker's error line alone."""
    msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    if "\nOriginal Traceback" in msg:
        last = msg.rstrip().splitlines()[-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(msg.split())


def report_user_error(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr; the exit status (2)."""
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return 2


def run_command(body, debug: bool = False) -> int:
    """A command's body with logging set up and user errors as one line; its exit status
    (``body``'s return value, 0 when it returns None)."""
    configure_logging()
    try:
        return body() or 0
    except user_errors() as exc:
        if debug:
            raise
        return report_user_error(exc)
