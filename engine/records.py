"""Run records: one JSON file per finished (method, variant, task, preset, seed).

A record carries everything needed to trust and reproduce its numbers: metrics, the
resolved configs, package versions, the git commit (and whether the tree was dirty),
the hardware, wall times. It is written atomically, so a killed run leaves none.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from .atomic import atomic_write_json

REPO = Path(__file__).resolve().parents[1]

__all__ = ["build_record", "write_record", "record_path", "read_records", "versions",
           "git_commit", "hardware"]


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "timm", "mmengine", "mmcv", "mmdet", "mne", "numpy",
                "pandas", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> dict:
    """The commit (and uncommitted diff) of the code this process runs: read once, at the
    first call, which :func:`pipeline.cell.run_cell` makes as its first cell starts. A
    table's later cells, finished after someone committed or edited the tree, still name
    the code that was loaded (reading the tree at each record's writing named the tree
    of that moment). Callers must not mutate the dict."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        out = {"commit": git("rev-parse", "HEAD") or None,
               "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
        if out["dirty"]:  # which uncommitted changes: the hash of the tracked files' diff
            import hashlib

            out["diff_sha1"] = hashlib.sha1(git("diff", "HEAD").encode()).hexdigest()
        return out
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict:
    info = {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["gpu_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=.,_-]+", "_", text)


def data_tag(plan) -> str:
    """``@<root folder>-<hash of the roots>`` for a run on real data ("" on embedded
    data), so a run on a user's folder never replaces the record of another data set."""
    from .plan import stable_hash

    roots = [d.root for d in (plan.data, plan.pretrain_data) if d.root]
    if not roots:
        return ""
    return f"@{_slug(Path(roots[0]).name)}-{stable_hash(sorted(set(roots)), 6)}"


def results_dir(preset: str, data_root=None) -> Path:
    """Where a preset's tables, records (``runs/``) and figures go: ``results/<preset>/``,
    or ``results/<preset>/data-<folder>/`` for tables of a user's data root."""
    folder = REPO / "results" / preset
    if data_root:
        folder = folder / f"data-{_slug(Path(data_root).name)}"
    return folder


#: longest variant kept whole in a file name (with the work dir's and lock's suffixes the
#: name stays under the 255 bytes file systems allow)
MAX_VARIANT_IN_NAME = 120


def variant_tag(variant: str) -> str:
    """``[<variant>]`` for a record's file name; a variant longer than
    :data:`MAX_VARIANT_IN_NAME` keeps its start and its end (options are sorted, so e.g.
    ``protocol.name=...`` stays readable) around a hash of the whole (the record itself
    holds every value)."""
    from .plan import stable_hash

    if not variant:
        return ""
    slug = _slug(variant)
    if len(slug) > MAX_VARIANT_IN_NAME:
        keep = (MAX_VARIANT_IN_NAME - 14) // 2
        slug = f"{slug[:keep]}...{stable_hash(variant, 8)}...{slug[-keep:]}"
    return f"[{slug}]"


def record_path(out, plan) -> Path:
    folder = Path(out) if out else results_dir(plan.preset) / "runs"
    variant = variant_tag(plan.variant)
    return folder / f"{plan.method.name}{variant}__{plan.task}{data_tag(plan)}__seed{plan.seed}.json"


def build_record(plan, metrics, pretrained, wall, data: dict, *, failure: dict | None = None,
                 resumes: dict | None = None, invocation: dict | None = None,
                 throughput: dict | None = None, pretrain_health: dict | None = None) -> dict:
    """``data``: the identities of the task's data and of the pretraining images.
    ``status`` is ``"ok"``, or ``"failed"`` with ``failure`` (phase, step, reason) and no
    metrics: readers skip a failed record's metrics (tables show "failed").
    ``resumes``: each phase's resumes (:func:`engine.resume.read_resumes`);
    ``invocation``: the run's arguments (``--explain`` prints them as a command).
    ``metrics["warnings"]`` (a task's sanity warnings, one string each, e.g. a training
    loss still at the class-prior level) becomes the record's ``warnings`` list (empty
    when there are none); tables mark the cells of a record that has any.
    ``throughput``: per phase (``pretrain``, ``finetune``, ``eval``) samples/s, s/iter, peak
    memory and MFU (:func:`engine.throughput.record_phases`); null for a phase not run.
    ``pretrain_health``: the pretraining's collapse monitoring (:mod:`engine.health`),
    without its history (kept beside the checkpoint); null without pretraining."""
    from .plan import plan_to_dict, stable_hash

    metrics = dict(metrics)
    warnings = [str(w) for w in (metrics.pop("warnings", None) or [])]
    return {
        "method": plan.method.name, "variant": plan.variant, "task": plan.task,
        "preset": plan.preset, "seed": plan.seed,
        "status": "failed" if failure else "ok", "failure": failure,
        "metrics": metrics, "warnings": warnings,
        "plan": plan_to_dict(plan), "plan_hash": stable_hash(plan_to_dict(plan)),
        "sources": plan.sources, "invocation": invocation, "resumes": resumes or {},
        "pretrained_checkpoint": str(pretrained) if pretrained else None,
        "data": data, "data_root": plan.data.root or "embedded",
        "versions": versions(), "git": dict(git_commit()), "hardware": hardware(),
        "throughput": {ph: (throughput or {}).get(ph) for ph in ("pretrain", "finetune", "eval")},
        "pretrain_health": ({k: v for k, v in pretrain_health.items() if k != "history"}
                            if pretrain_health else None),
        "wall_time_s": wall, "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def write_record(record: dict, path: Path) -> None:
    atomic_write_json(path, record, indent=1, default=str)


def read_records(folder: Path) -> list[dict]:
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        with open(p) as f:
            rec = json.load(f)
        rec["path"] = str(p)
        out.append(rec)
    return out
