"""Atomic writes: a reader sees the old file or the whole new one, never a part.

Every file the suite writes that something later trusts (records, checkpoints, cached
features, generated data sets) goes through :func:`atomic_write`: the content is written
to a temporary file in the destination folder and renamed over the target
(``os.replace`` is atomic on one file system); on any failure the temporary file is
removed and the previous file, if any, is untouched.
"""
from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_json",
           "atomic_torch_save", "remove_dead_writers"]


def _temporary_name(path: Path) -> Path:
    """``.<name>.<host>.<pid>.tmp`` beside ``path``: which process on which host writes it."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path):
    """``with atomic_path(path) as tmp: <write the file tmp>``: ``tmp`` is renamed over
    ``path`` when the block ends without error and removed otherwise (the one rename
    every atomic write of the suite goes through; one writer of a target per process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a full disk: say which file could not be written
        if exc.filename is None or str(exc.filename) == str(tmp):
            exc.filename = str(path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """``with atomic_write(path) as f: f.write(...)``; ``path`` appears only on success,
    its content flushed to the disk."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def remove_dead_writers(folder) -> list[Path]:
    """Remove the temporary files in ``folder`` left by writers on this host whose
    process is gone (a killed build); another live process's files stay. Returns the
    removed paths."""
    host, removed = socket.gethostname(), []
    for p in Path(folder).glob(".*.tmp"):
        head, _, pid = p.name[: -len(".tmp")].rpartition(".")
        if not pid.isdigit() or not head.endswith("." + host):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
            removed.append(p)
        except OSError:
            pass
    return removed


def atomic_write_bytes(path, payload: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(payload)


def atomic_write_json(path, obj, **dump_kwargs) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, **dump_kwargs)


def atomic_torch_save(obj, path) -> None:
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
