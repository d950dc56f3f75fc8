"""Surviving faults: SIGKILL mid-epoch and mid-checkpoint-write (pretraining and
finetuning, detection, EEG), SIGTERM, failed runs, a full disk, two runs sharing a
cache, and the provenance that reproduces a record.

The killed and concurrent runs are ``python -m benchmarks.run`` in child processes
forked from a server that imported the suite once (:mod:`forked_cli`; a fresh
interpreter would spend ~10 s on imports each time), with the fault injected by
``tests/faults/sitecustomize.py``. They train on one thread, as the uninterrupted
references in this process do (:func:`_one_thread`), so that a resumed run can be
compared with a reference bit for bit: on one CPU thread every operation runs in the
same order, and the resume restores the weights, the optimizer and scheduler state, the
data order and every random generator, so nothing may differ (a tolerance would hide a
resume that lost, say, one optimizer step at a small learning rate).
"""
import contextlib
import errno
import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from forked_cli import finish_cli, run_cli, start_cli

from pipeline.cell import run_cell
from pipeline.describe import explain
from benchmarks.run import main
from engine.errors import TrainingError
from engine.locks import file_lock
from engine.resume import SuiteRunner, pick_resume_checkpoint
# part / cifar100: 4 pretraining iterations per epoch (2 epochs), 4 finetuning ones (3
# epochs), of 8 images each
OPTS = {
    "tasks.cifar100.data.embedded.num_train": 32, "tasks.cifar100.data.embedded.num_test": 16,
    "tasks.cifar100.pretrain.epochs": 2, "tasks.cifar100.pretrain.global_batch_size": 8,
    "tasks.cifar100.pretrain.warmup_epochs": 0, "tasks.cifar100.finetune.epochs": 3,
    "tasks.cifar100.finetune.global_batch_size": 8, "tasks.cifar100.loader.num_workers": 0,
}
CLI = ["--method", "part", "--task", "cifar100", "--cfg-options",
       *(f"{k}={v}" for k, v in OPTS.items())]


def _cli(tmp: Path, fault: str = ""):
    """The cifar100 cell's command in a child: (status, stdout, stderr)."""
    return run_cli(["--cache", tmp / "cache", "--out", tmp / "runs", *CLI], tmp, fault=fault)


def _floats(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


@contextlib.contextmanager
def _one_thread():
    """In-process runs train on one thread, as the killed runs (OMP_NUM_THREADS=1): the
    same reduction order, so bit-equality does not depend on the test process's threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process: same seed, same single thread)."""
    tmp = tmp_path_factory.mktemp("reference")
    with _one_thread():
        rec = run_cell("part", "cifar100", cache=tmp / "cache", out=tmp / "runs",
                       cfg_options=OPTS, log=lambda *_: None)
    encoder = torch.load(Path(rec["pretrained_checkpoint"]) / "encoder.pth", weights_only=True)
    return rec, encoder["state_dict"]


def _same_encoder(folder, expected):
    got = torch.load(Path(folder) / "encoder.pth", weights_only=True)["state_dict"]
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def test_sigkill_mid_epoch_and_mid_checkpoint_write_resume_to_the_same_record(tmp_path, reference):
    ref, ref_encoder = reference
    # 1: killed in pretraining epoch 2 (after iteration 6 of 8): epoch_1.pth is the last
    code, _, err = _cli(tmp_path, "kill@pretrain:6")
    assert code == -signal.SIGKILL, err[-2000:]
    # 2: resumes pretraining from epoch 1, finishes it, then is killed while writing the
    #    finetuning's epoch_2.pth (half of it on disk, in the temporary file)
    code, out, err = _cli(tmp_path, "killsave@finetune:epoch_2.pth")
    assert code == -signal.SIGKILL, err[-2000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("[resume] pretrain")]
    assert len(lines) == 1 and "epoch_1.pth (iteration 4, the start of epoch 2)" in lines[0], lines
    (work,) = [p for p in (tmp_path / "cache" / "runs").glob("*cifar100*") if p.is_dir()]
    assert (work / "epoch_1.pth").exists() and not (work / "epoch_2.pth").exists()
    assert list(work.glob(".epoch_2.pth*.tmp")), "the unfinished write is a temporary file"
    assert Path((work / "last_checkpoint").read_text().strip()).name == "epoch_1.pth"
    # 3: resumes finetuning from epoch 1; the record equals the uninterrupted run's
    code, out, err = _cli(tmp_path)
    assert code == 0, err[-2000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("[resume] finetune")]
    assert len(lines) == 1 and "epoch_1.pth (iteration 4, the start of epoch 2)" in lines[0], lines
    rec = json.loads(Path(ref["path"].replace(str(Path(ref["path"]).parent),
                                             str(tmp_path / "runs"))).read_text())
    assert rec["status"] == "ok"
    assert _floats(rec["metrics"]) == _floats(ref["metrics"])   # exactly: see README
    _same_encoder(rec["pretrained_checkpoint"], ref_encoder)
    assert [r["iteration"] for r in rec["resumes"]["pretrain"]] == [4]
    assert [r["iteration"] for r in rec["resumes"]["task"]] == [4]
    assert not list(work.glob(".*.tmp"))


# Detection (Mask R-CNN) and EEG finetuning, from scratch (resuming a pretraining is the
# cifar100 test's), on the smallest generated data that trains 2 epochs of 3 iterations:
# the 3 of 4 generated scenes that have objects (64 px, batch 1); the labelled windows of
# one 15-minute record (batch 8), another one to test on.
TASK_RUNS = {
    "coco": {"tasks.coco.data.embedded.num_train": 4, "tasks.coco.data.embedded.num_val": 2,
             "tasks.coco.data.embedded.size": 64, "tasks.coco.detector.img_size": 64,
             "tasks.coco.finetune.epochs": 2, "tasks.coco.finetune.global_batch_size": 1,
             "tasks.coco.finetune.test_batch_size": 2, "tasks.coco.loader.num_workers": 0},
    "eeg": {"tasks.eeg.data.embedded.n_training": 2, "tasks.eeg.data.embedded.n_test": 0,
            "tasks.eeg.data.embedded.hours": 0.25, "tasks.eeg.eeg.pretrain_subjects": 0,
            "tasks.eeg.eeg.finetune_subjects": 1, "tasks.eeg.eeg.test_subjects": 1,
            "tasks.eeg.eeg.cache_workers": 1, "tasks.eeg.finetune.epochs": 2,
            "tasks.eeg.finetune.global_batch_size": 8, "tasks.eeg.loader.num_workers": 0},
}


@pytest.mark.parametrize("task", list(TASK_RUNS))
def test_sigkill_mid_epoch_of_detection_and_eeg_resumes_to_the_same_weights(task, tmp_path, monkeypatch,
                                                                             capsys):
    """Killed after iteration 5 (epoch 2, batch 2), the same command resumes from
    epoch_1.pth and ends with the uninterrupted run's record and, bit for bit, its
    trained weights (the tiny runs' metrics sit at chance, so the weights are what can
    tell a faithful resume from a wrong one; see the module docstring for why exactly)."""
    args = ["--method", "scratch", "--task", task, "--cache", str(tmp_path / "cache"),
            "--cfg-options", *(f"{k}={v}" for k, v in TASK_RUNS[task].items())]
    trained = []
    train = SuiteRunner.train

    def train_and_keep_the_weights(self):
        model = train(self)
        trained.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return model

    monkeypatch.setattr(SuiteRunner, "train", train_and_keep_the_weights)
    with _one_thread():  # the uninterrupted run
        assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    (ref_path,) = (tmp_path / "reference").glob("*.json")
    # The killed run shares the reference's cache (its generated data and EEG
    # preprocessing; the reference's finetuning state was spent with its record).
    code, _, err = run_cli([*args, "--out", tmp_path / "runs"], tmp_path, fault=f"kill@{task}:5")
    assert code == -signal.SIGKILL, err[-2000:]
    (work,) = [p for p in (tmp_path / "cache" / "runs").iterdir() if p.is_dir()]
    assert sorted(p.name for p in work.glob("*.pth")) == ["epoch_1.pth"]
    capsys.readouterr()
    with _one_thread():  # the same command again
        assert main([*args, "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(f"[resume] {task}")]
    assert len(lines) == 1 and "epoch_1.pth (iteration 3, the start of epoch 2)" in lines[0], out[-3000:]
    ref = json.loads(ref_path.read_text())
    rec = json.loads((tmp_path / "runs" / ref_path.name).read_text())
    assert rec["status"] == "ok" and [r["iteration"] for r in rec["resumes"]["task"]] == [3]
    assert rec["metrics"] == ref["metrics"] and ref["resumes"]["task"] == []
    expected, got = trained
    assert expected.keys() == got.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def test_sigterm_saves_this_step_and_the_rerun_resumes_mid_epoch(tmp_path, reference, capsys):
    ref, ref_encoder = reference
    code, _, err = _cli(tmp_path, "term@pretrain:6")
    assert code == 143, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("preempted: SIGTERM: saved") and "after iteration 6" in lines[-1]
    assert "Traceback" not in err
    (work,) = (tmp_path / "cache" / "pretrain").glob("*/work")
    assert Path((work / "last_checkpoint").read_text().strip()).name == "iter_6.pth"
    with _one_thread():
        rec = run_cell("part", "cifar100", cache=tmp_path / "cache", out=tmp_path / "runs",
                       cfg_options=OPTS, log=print)
    out = capsys.readouterr().out
    assert "iter_6.pth (iteration 6, epoch 2, batch 3)" in out, out[-3000:]
    assert _floats(rec["metrics"]) == _floats(ref["metrics"])
    _same_encoder(rec["pretrained_checkpoint"], ref_encoder)
    assert [r["iteration"] for r in rec["resumes"]["pretrain"]] == [6]


def test_a_truncated_newest_checkpoint_is_named_and_the_previous_one_used(tmp_path):
    for n in (1, 2):
        torch.save({"meta": {"epoch": n}, "w": torch.randn(1000)}, tmp_path / f"epoch_{n}.pth")
    os.utime(tmp_path / "epoch_1.pth", (1, 1))
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "epoch_2.pth"))
    data = (tmp_path / "epoch_2.pth").read_bytes()
    (tmp_path / "epoch_2.pth").write_bytes(data[: len(data) // 2])   # a non-atomic file system
    logs = []
    assert pick_resume_checkpoint(tmp_path, logs.append) == tmp_path / "epoch_1.pth"
    assert len(logs) == 1 and "epoch_2.pth is truncated or unreadable" in logs[0]


def test_a_failed_run_writes_a_failed_record_shown_as_failed_and_a_rerun_replaces_it(
        tmp_path, monkeypatch):
    from benchmarks.tables import Column, Row, Table, fill
    from methods.part import PART

    def nan_forward(self, images, generator=None):
        return {"loss": self.encoder.cls_token.sum() * float("nan")}

    kw = dict(cache=tmp_path / "cache", out=tmp_path / "out" / "runs", cfg_options=OPTS,
              log=lambda *_: None)
    monkeypatch.setattr(PART, "forward", nan_forward)
    with pytest.raises(TrainingError, match="loss became nan"):
        run_cell("part", "cifar100", **kw)
    monkeypatch.undo()
    (path,) = (tmp_path / "out" / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "failed" and rec["metrics"] == {}
    assert rec["failure"]["phase"] == "pretrain" and rec["failure"]["step"] == 1
    assert "loss became nan at iteration 1" in rec["failure"]["reason"]
    # the table's row: the cell's plan values that name its record (not the loader's)
    row = {k.split(".", 2)[2]: v for k, v in OPTS.items() if ".loader." not in k}
    table = Table("t", rows=(Row("PART", "part", row),), columns=(Column("acc", "cifar100", "acc1", ""),))
    fill("t", "tiny", 1, False, out_root=tmp_path / "out", table=table)
    assert "| PART | failed |" in (tmp_path / "out" / "t.md").read_text()
    run_cell("part", "cifar100", **kw)   # the fix: the same cell again
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and "acc1" in rec["metrics"]
    fill("t", "tiny", 1, False, out_root=tmp_path / "out", table=table)
    assert "failed" not in (tmp_path / "out" / "t.md").read_text()


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_a_full_disk_leaves_the_previous_files_and_stops_with_one_line(tmp_path, monkeypatch, capsys):
    import engine.atomic as atomic
    import engine.records as records
    import mmengine.runner.runner as mm_runner

    args = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "runs"), *CLI]
    # the checkpoint of pretraining epoch 2 meets a full disk halfway
    real_save = mm_runner.save_checkpoint

    def full_at_epoch_2(checkpoint, filename, *a, **k):
        if Path(filename).name.startswith(".epoch_2.pth"):
            Path(filename).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(checkpoint, filename, *a, **k)

    monkeypatch.setattr(mm_runner, "save_checkpoint", full_at_epoch_2)
    assert main(args) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: disk full") and "epoch_2.pth" in line
    (work,) = (tmp_path / "cache" / "pretrain").glob("*/work")
    assert sorted(p.name for p in work.iterdir() if p.suffix in (".pth", ".tmp")) == ["epoch_1.pth"]
    assert Path((work / "last_checkpoint").read_text().strip()).name == "epoch_1.pth"
    torch.load(work / "epoch_1.pth", weights_only=True)
    monkeypatch.undo()

    # the record meets a full disk: the previous record stays as it was
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)

    def full_json(path, obj, **kw):
        with atomic.atomic_write(path, "w") as f:
            f.write('{"partial": ')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records, "atomic_write_json", full_json)
    from pipeline.cell import cell_record_path

    previous = cell_record_path("part", "cifar100", cfg_options=OPTS, out=runs)
    previous.write_text('{"previous": true}')
    assert main(args) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: disk full") and previous.name in line
    assert previous.read_text() == '{"previous": true}' and not list(runs.glob(".*.tmp"))


def test_locks_name_their_owner_wait_for_it_and_take_over_stale_ones(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text(json.dumps(dict(pid=999999, host="gone", started="then")))  # its owner died
    logs, held, release = [], threading.Event(), threading.Event()
    with file_lock(lock, "x", log=logs.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(logs) == 1 and "stale lock of pid 999999 on gone" in logs[0]
    assert not lock.exists()

    def holder():
        with file_lock(lock, "x", log=lambda *_: None):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    logs.clear()
    with pytest.raises(TimeoutError):
        with file_lock(lock, "x", log=logs.append, poll_s=0.05, timeout_s=0.3):
            pass
    assert f"waiting for pid {os.getpid()}" in logs[0]
    release.set()
    t.join()


def test_two_runs_at_once_share_one_pretraining_and_lose_nothing(tmp_path):
    """Three processes on one cache and results folder: two of the same cell and one of
    another cell sharing its pretraining (slowed down so that they overlap)."""
    base = ["--cache", tmp_path / "cache", "--out", tmp_path / "runs", "--method", "part"]
    opts = ["--cfg-options", *(f"{k}={v}" for k, v in OPTS.items() if "finetune" not in k),
            "tasks.cifar100.finetune.epochs=1", "tasks.pretext.evaluation.max_images=16"]
    procs = [start_cli([*base, "--task", task, *opts], tmp_path, name=f"run{i}", fault="sleep:0.3")
             for i, task in enumerate(("pretext", "pretext", "cifar100"))]
    results = [finish_cli(p) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0], results
    log = "\n".join(out + err for _, out, err in results)
    assert sum(ln.startswith("[pretrain] part: ") for ln in log.splitlines()) == 1, log
    assert "[lock] waiting for pid" in log
    names = sorted(p.name for p in (tmp_path / "runs").glob("*.json"))
    assert len(names) == 2 and all(json.loads((tmp_path / "runs" / n).read_text())["status"] == "ok"
                                   for n in names)
    assert not list((tmp_path / "cache").rglob("*.lock"))


def test_a_record_carries_its_provenance_and_explains_its_command(reference):
    rec, _ = reference
    assert rec["status"] == "ok" and len(rec["plan_hash"]) == 10 and rec["seed"] == 0
    assert rec["git"]["commit"] and isinstance(rec["git"]["dirty"], bool)
    assert not rec["git"]["dirty"] or len(rec["git"]["diff_sha1"]) == 40
    assert rec["hardware"]["cpu"] and rec["hardware"]["world_size"] == 1
    assert set(rec["wall_time_s"]) == {"total", "pretrain", "task"}
    assert rec["resumes"] == {"pretrain": [], "task": []}
    text = explain(rec["path"])
    assert "python -m benchmarks.run --method part --task cifar100 --preset tiny --seed 0" in text
    assert "tasks.cifar100.pretrain.epochs=2" in text
    assert text.splitlines()[-1] == "# this command resolves to the record's plan", text


def test_a_record_names_the_code_its_process_loaded_not_the_tree_at_its_writing(monkeypatch):
    """A table's cells finish over hours; a commit made meanwhile must not be named by
    the later cells' records (their process still runs the code it loaded)."""
    import subprocess as sp

    from engine import records

    heads = iter(["a" * 40, "b" * 40])
    real = sp.run

    def git(args, **kwargs):
        if args[:2] == ["git", "rev-parse"]:
            return sp.CompletedProcess(args, 0, stdout=next(heads) + "\n", stderr="")
        if args[:2] == ["git", "status"]:
            return sp.CompletedProcess(args, 0, stdout="", stderr="")
        return real(args, **kwargs)

    records.git_commit.cache_clear()
    monkeypatch.setattr(records.subprocess, "run", git)
    try:
        first = records.git_commit()      # the process's first cell starts
        assert records.git_commit() == first == {"commit": "a" * 40, "dirty": False}
    finally:
        records.git_commit.cache_clear()  # the next caller reads the real tree
