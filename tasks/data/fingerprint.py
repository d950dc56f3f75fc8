"""The identity of a data set, for cache keys: which images a checkpoint was trained on.

A real root is identified by its resolved path and a cheap fingerprint of its files:
(name, size, mtime) of every file in the top two levels, and the number of entries of
every folder at the second level (an ImageNet class folder is counted, not stat'ed:
~1.3M names, no per-image system call). Replacing, adding or removing a data file or a
class's images changes it; reading the root does not. The embedded data is identified
by its generator's parameters and version.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["data_identity", "root_fingerprint"]


def root_fingerprint(root: Path, depth: int = 2) -> str:
    root = Path(root)
    h = hashlib.sha1()

    def walk(folder: Path, level: int):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            rel = os.path.relpath(e.path, root)
            if e.is_dir(follow_symlinks=True):
                if level < depth:
                    h.update(f"d {rel}\n".encode())
                    walk(Path(e.path), level + 1)
                else:
                    with os.scandir(e.path) as it:
                        h.update(f"d {rel} {sum(1 for _ in it)}\n".encode())
            else:
                st = e.stat(follow_symlinks=True)
                h.update(f"f {rel} {st.st_size} {st.st_mtime_ns}\n".encode())

    walk(root, 1)
    return h.hexdigest()[:16]


def data_identity(dataset: str, root: str | None, embedded: dict | None) -> dict:
    """What names the images of a :class:`engine.plan.DataPlan` (root or embedded)."""
    if root:
        return {"dataset": dataset, "root": str(Path(root).resolve()),
                "fingerprint": root_fingerprint(Path(root))}
    from . import coco_synthetic, physionet_synthetic, synthetic

    # each embedded data set is named by its own generator's version
    version = {"coco": coco_synthetic.DETECTION_GENERATOR_VERSION,
               "physionet2018": physionet_synthetic.GENERATOR_VERSION}.get(dataset,
                                                                          synthetic.GENERATOR_VERSION)
    return {"dataset": dataset, "embedded": dict(embedded or {}), "generator_version": version}
