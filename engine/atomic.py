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
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_torch_save"]


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """``with atomic_write(path) as f: f.write(...)``; ``path`` appears only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a full disk: say which file could not be written
        if exc.filename is None or str(exc.filename) == tmp:
            exc.filename = str(path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
