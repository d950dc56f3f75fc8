"""Every bad input is answered: a non-zero exit, one readable line on stderr (the
traceback only with ``--debug``), and no earlier result or cached checkpoint touched.

Each case runs ``benchmarks.run``'s command line in its own process. Starting a fresh
interpreter costs ~10 s of imports here (torch, mmengine, timm), so most cases run in a
child forked from a server that imported the suite once, executing the module exactly
as ``python -m benchmarks.run ARGS`` does (:mod:`forked_cli`). Two cases
(:func:`test_real_interpreter`) start a real ``python -m benchmarks.run``.

Plan-time problems are answered by ``--dry-run``; data and checkpoint problems before
any training, except a corrupt image, which is found when it is read: the run stops,
naming the file, in classification (:func:`tasks.data.imagefolder.load_image`) and in
detection alike (:class:`tasks.data.coco_pipeline.CheckedLoadImageFromFile`).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from forked_cli import run_cli

import benchmarks.run  # noqa: F401
from pipeline.describe import dry_run

REPO = Path(__file__).resolve().parents[1]
CIFAR = "tasks.cifar100"
TINY_CIFAR = [f"{CIFAR}.data.embedded.num_train=64", f"{CIFAR}.data.embedded.num_test=16",
              f"{CIFAR}.loader.num_workers=0"]
TINY_CIFAR_VARIANT = "data.embedded.num_test=16,data.embedded.num_train=64"


def _tree_hashes(*folders: Path) -> dict[str, str]:
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def dirs(tmp_path):
    """A results folder with an earlier record and a cache with an earlier checkpoint."""
    out, cache = tmp_path / "runs", tmp_path / "cache"
    (out).mkdir()
    (out / "part__cifar100__seed0.json").write_text('{"metrics": {"acc1": 42.0}}\n')
    # the same cell on TINY_CIFAR's smaller data set (its data options name the record)
    (out / f"part[{TINY_CIFAR_VARIANT}]__cifar100__seed0.json").write_text(
        '{"metrics": {"acc1": 43.0}}\n')
    earlier = cache / "pretrain" / "part-s0-0123456789"
    earlier.mkdir(parents=True)
    (earlier / "encoder.pth").write_bytes(b"earlier weights")
    (earlier / "method.pth").write_bytes(b"earlier method")
    return out, cache


def _write_png(path: Path, seed: int) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


def _imagefolder(root: Path, corrupt: bool = False) -> Path:
    for split in ("train", "val"):
        for c in ("a", "b"):
            for i in range(4):
                _write_png(root / split / c / f"{i}.png", hash((split, c, i)) % 1000)
    if corrupt:
        (root / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def _coco_with_a_truncated_image(root: Path) -> tuple[Path, Path]:
    """Generated COCO 2017 folders (two training scenes, both with objects) whose first
    training image is cut in half, as an interrupted copy leaves it: (root, that image)."""
    from tasks.data.coco_synthetic import write_coco

    write_coco(root, num_train=2, num_val=1, size=64, empty_fraction=0.0)
    ann = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    image = root / "train2017" / ann["images"][0]["file_name"]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return root, image


# ------------------------------------------------------------------ the data roots
def _root(kind: str, tmp: Path) -> Path:
    if kind == "missing":
        return tmp / "no" / "such" / "root"
    if kind == "cifar100":  # the archive's folder holds something else
        folder = tmp / "cifar" / "cifar-100-python"
        folder.mkdir(parents=True)
        for name in ("train", "test", "meta"):
            (folder / name).write_bytes(pickle.dumps({"data": [1, 2, 3]}))
        return folder.parent
    if kind == "imagenet":  # train/ only: no val/
        root = _imagefolder(tmp / "imagenet")
        for p in sorted((root / "val").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (root / "val").rmdir()
        return root
    if kind == "coco":  # images but no annotations/
        root = tmp / "coco"
        for split in ("train2017", "val2017"):
            _write_png(root / split / "000000000001.png", 1)
        return root
    if kind == "eeg":  # pointed at training/ itself: record folders at the top
        root = tmp / "physionet" / "training"
        (root / "tr03-0005").mkdir(parents=True)
        (root / "tr03-0005" / "tr03-0005.hea").write_text("tr03-0005 13 200 100\n")
        return root
    raise AssertionError(kind)


def _cached_checkpoint_path(opts: list[str], cache: Path) -> Path:
    from mmengine.config import DictAction  # the command line's parser of key=value

    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    cfg = p.parse_args(["--cfg-options", *opts]).cfg_options
    info = dry_run("part", "cifar100", cfg_options=cfg, cache=cache)
    return Path(info["checkpoint"]["path"])


def _foreign_checkpoint(folder: Path) -> None:
    import torch

    from methods.backbone import build_encoder

    other = build_encoder("vit_micro", img_size=32, patch_size=4, embed_dim=48)
    for name in ("encoder.pth", "method.pth"):
        torch.save({"state_dict": other.state_dict()}, folder / name)


# ------------------------------------------------------------------ the cases
PLAN = ["--method", "part", "--task", "cifar100"]

CASES = {
    # name: (arguments, expected start of the one line, after "error: ")
    "unknown method": (["--method", "nope", "--task", "cifar100", "--dry-run"],
                       "unknown method 'nope'; expected one of:"),
    "unknown task": (["--method", "part", "--task", "nope", "--dry-run"],
                     "unknown task 'nope'; expected one of:"),
    "unknown preset": ([*PLAN, "--preset", "nope", "--dry-run"], "unknown preset 'nope'"),
    "method not for the task": (["--method", "part-aspect-scale", "--task", "eeg", "--dry-run"],
                                "method 'part-aspect-scale' does not apply to task eeg"),
    "negative pairs": ([*PLAN, "--dry-run", "--cfg-options", "methods.part.num_pairs=-5"],
                       "method 'part' does not apply to task cifar100"),
    "mask ratio 1": (["--method", "mae", "--task", "cifar100", "--dry-run",
                      "--cfg-options", "methods.mae.mask_ratio=1.0"],
                     "method 'mae' does not apply to task cifar100"),
    "patch size": ([*PLAN, "--dry-run", "--cfg-options", f"{CIFAR}.encoder.patch_size=5"],
                   "encoder.img_size 32 is not a multiple of encoder.patch_size 5"),
    "zero epochs": ([*PLAN, "--dry-run", "--cfg-options", f"{CIFAR}.pretrain.epochs=0"],
                    "pretrain.epochs must be an integer >= 1, got 0 (set at command line"),
    "batch vs world size": ([*PLAN, "--dry-run", "--world-size", "3"],
                            "global batch 64 does not divide over world size 3"),
    "cfg-options without =": ([*PLAN, "--dry-run", "--cfg-options", "methods.part.num_pairs"],
                              "--cfg-options methods.part.num_pairs: expected KEY=VALUE"),
    "cfg-options not a number": ([*PLAN, "--dry-run", "--cfg-options", f"{CIFAR}.pretrain.epochs=ten"],
                                 "pretrain.epochs must be a number, got 'ten' (set at command line"),
    "cfg-options unknown key": ([*PLAN, "--dry-run", "--cfg-options", f"{CIFAR}.pretrain.epoch=3"],
                                "unknown key 'epoch' in pretrain section"),
    "cfg-options outside the plan": ([*PLAN, "--dry-run", "--cfg-options", "model.depth=3"],
                                     "--cfg-options model.depth=3: expected methods."),
    "missing option": (["--task", "cifar100"], "the following arguments are required: --method"),
    # data: answered before any training (check_data), except the corrupt image
    "missing data root": ([*PLAN, "--data-root", "{missing}"], "CIFAR-100 root "),
    "cifar100 layout": ([*PLAN, "--data-root", "{cifar100}"], "CIFAR-100 file "),
    "imagenet layout": (["--method", "scratch", "--task", "imagenet", "--data-root", "{imagenet}"],
                        "ImageFolder root "),
    "coco layout": (["--method", "scratch", "--task", "coco", "--data-root", "{coco}"],
                    "COCO data root "),
    "eeg layout": (["--method", "scratch", "--task", "eeg", "--data-root", "{eeg}"],
                   "{eeg}/training: no training/ folder in the PhysioNet 2018 root"),
    "corrupt image": (["--method", "scratch", "--task", "imagenet", "--data-root", "{corrupt}",
                       "--cfg-options", "tasks.imagenet.finetune.epochs=1",
                       "tasks.imagenet.finetune.global_batch_size=4"],
                      "cannot read image {corrupt}/train/a/broken.jpg"),
    "corrupt coco image": (["--method", "scratch", "--task", "coco", "--data-root", "{corrupt_coco}",
                            "--cfg-options", "tasks.coco.finetune.epochs=1",
                            "tasks.coco.finetune.global_batch_size=2"],
                           "cannot read image {corrupt_coco_image} (a JPEG that ends before its "
                           "end-of-image marker"),
    # a cached checkpoint that is garbage, or of another architecture: named, left alone
    "garbage cached checkpoint": ([*PLAN, "--cfg-options", *TINY_CIFAR],
                                  "cannot read encoder checkpoint "),
    "foreign cached checkpoint": ([*PLAN, "--cfg-options", *TINY_CIFAR], "checkpoint "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(case, dirs, tmp_path):
    out, cache = dirs
    args, expected = CASES[case]
    roots = {}
    for kind in ("missing", "cifar100", "imagenet", "coco", "eeg"):
        if any(f"{{{kind}}}" in a for a in args):
            roots[kind] = str(_root(kind, tmp_path / "data"))
    if any("{corrupt}" in a for a in args):
        roots["corrupt"] = str(_imagefolder(tmp_path / "data" / "corrupt", corrupt=True))
    if any("{corrupt_coco}" in a for a in args):
        root, image = _coco_with_a_truncated_image(tmp_path / "data" / "coco")
        roots.update(corrupt_coco=str(root), corrupt_coco_image=str(image))
    if case.endswith("cached checkpoint"):
        folder = _cached_checkpoint_path(TINY_CIFAR, cache)
        folder.mkdir(parents=True)
        if case.startswith("garbage"):
            for name in ("encoder.pth", "method.pth"):
                (folder / name).write_bytes(b"\x00garbage, not a checkpoint")
        else:
            _foreign_checkpoint(folder)
        expected += str(folder / "encoder.pth")
    args = [a.format(**roots) for a in args]
    expected = expected.format(**roots)

    before = _tree_hashes(out, cache)
    code, stdout, stderr = run_cli([*args, "--cache", str(cache), "--out", str(out)], tmp_path)
    lines = stderr.strip().splitlines()
    assert code != 0, (case, stdout[-2000:], stderr[-2000:])
    assert len(lines) == 1, (case, stderr[-3000:])
    assert lines[0].startswith("error: " + expected), (case, lines[0])
    assert "Traceback" not in stdout + stderr
    after = _tree_hashes(out, cache)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"{case}: changed {changed}"
    # no result: at most the cell's failed record (a data error found mid-run)
    new = [json.loads(p.read_text()) for p in out.rglob("*.json") if str(p) not in before]
    assert all(r.get("status") == "failed" and not r.get("metrics") for r in new), (case, new)
    # the failed record's reason is the same one line (not a DataLoader worker's traceback)
    assert all(lines[0] == "error: " + r["failure"]["reason"] for r in new), (case, new)
    assert not new or case in ("corrupt image", "corrupt coco image"), (case, new)


def test_debug_shows_the_traceback(dirs, tmp_path):
    out, cache = dirs
    code, _, stderr = run_cli([*PLAN, "--dry-run", "--debug", "--cfg-options",
                               f"{CIFAR}.pretrain.epochs=0", "--cache", str(cache), "--out", str(out)],
                              tmp_path)
    assert code != 0 and "Traceback (most recent call last)" in stderr
    assert "pretrain.epochs must be an integer >= 1" in stderr


@pytest.mark.parametrize("args, expected", [
    ([*PLAN, "--dry-run", "--cfg-options", "methods.part.num_pairs"],
     "error: --cfg-options methods.part.num_pairs: expected KEY=VALUE"),
    ([*PLAN, "--dry-run", "--debug", "--cfg-options", "methods.part.num_pairs=0"], "Traceback"),
])
def test_real_interpreter(args, expected, dirs):
    """The same answers from a fresh ``python -m benchmarks.run``."""
    out, cache = dirs
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "benchmarks.run", *args, "--cache", str(cache),
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode != 0
    if expected == "Traceback":
        assert "Traceback (most recent call last)" in res.stderr
        assert "num_pairs must be >= 1, got 0" in res.stderr
    else:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), res.stderr


def test_help_names_every_task(capsys):
    """The --task help is what a user reads first; it must list every registered task."""
    from benchmarks.run import parse_args
    from tasks import TASKS

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    options = shown[shown.index("options:"):]
    task_help = options[options.index("--task TASK"):options.index("--explain RECORD")]
    assert all(name in task_help for name in TASKS), (sorted(TASKS), task_help)
