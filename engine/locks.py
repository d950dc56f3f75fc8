"""A lock file per pretraining and per cell, so that two runs sharing a cache and a
results folder never train the same thing at the same time.

``<name>.lock`` holds the owner's pid, host and start time, and the owner holds an
exclusive ``flock`` on it: the kernel releases it when the owner dies, however it dies,
so a lock left behind by a killed run is stale by construction. A waiter names the
owner once and polls; a taker of a stale lock (a file whose owner no longer holds it)
says whose it was. On NFS, ``flock`` is carried by the server's byte-range locks
(Linux >= 2.6.12).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["file_lock", "lock_owner"]


def lock_owner(path) -> dict | None:
    """What the lock file says about its (last) owner, or None."""
    try:
        return json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None


def _describe(owner: dict | None) -> str:
    if not owner:
        return "an unknown process"
    return f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('started')})"


@contextmanager
def file_lock(path, what: str, log=print, poll_s: float = 1.0, timeout_s: float | None = None):
    """Hold ``path`` (``what`` names the work in messages) for the ``with`` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited_for = None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = lock_owner(path)
            if waited_for != owner:
                log(f"[lock] waiting for {_describe(owner)}, which holds {what} ({path})")
                waited_for = owner
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{path} is still held by {_describe(owner)}")
            time.sleep(poll_s)
            continue
        try:  # the file we locked may have been removed by its previous owner meanwhile
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        break
    try:
        stale = lock_owner(path)
        if stale:
            log(f"[lock] taking over the stale lock of {_describe(stale)} on {what} "
                f"(it no longer runs)")
        mine = dict(pid=os.getpid(), host=socket.gethostname(),
                    started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), what=what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        yield mine
    finally:
        try:
            path.unlink(missing_ok=True)  # while still held: a waiter then re-checks the inode
        finally:
            os.close(fd)
