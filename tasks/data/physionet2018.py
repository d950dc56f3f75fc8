"""PhysioNet/CinC 2018 ("You Snooze You Win") for EEG sleep staging: reader,
preprocessing, on-disk cache and subject split.

Reads ``ROOT/training/trNN-NNNN/trNN-NNNN.{hea,mat}`` with ``trNN-NNNN-arousal.mat``
(the stages) and the optional, unlabelled ``ROOT/test/teNN-NNNN/``, as distributed
(:mod:`tasks.data.physionet_synthetic` writes the same).

- :func:`read_record`: one record's six EEG channels (:data:`EEG_CHANNELS`) in µV and
  its per-sample stage (:data:`STAGES` index, -1 undefined);
- :func:`preprocess_signals`, :func:`epoch_labels`: band-pass 0.1-30 Hz, resample to
  100 Hz, then cut 30 s windows aligned to the stage change points
  (:class:`EEGPreprocessing`);
- :func:`build_cache` -> :class:`PhysionetCache`: per record float32 windows
  (n, 6, 3000) in µV (memory-mapped on read) and int8 labels (-1 unlabelled) under
  ``<cache_dir>/<EEGPreprocessing.key()>/``; built once, in parallel, and rebuilt when
  a source file's size or mtime changes; :meth:`PhysionetCache.open` reopens one;
- :func:`split_subjects`: a deterministic pretrain / finetune / test split by subject;
- :class:`EEGWindows`: the windows of given records as a Dataset, instance-normalised
  at read time.

Bad input (:class:`PhysionetDataError`, one line naming the file): a missing root, a
root without ``training/`` or without record folders **stops**
(:func:`check_physionet_root`), as does a root whose every record is skipped; a
damaged or truncated record, a ``training/`` record without readable labels, or one
with no complete scored epoch is a **counted skip** (``cache.skipped`` lists
``(record, reason)``; every skip is logged), retried once its files change.

Details: docs/reference/physionet2018.md.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.utils.data

from engine.atomic import atomic_path, atomic_write_json, remove_dead_writers

__all__ = [
    "EEG_CHANNELS",
    "STAGES",
    "CACHE_VERSION",
    "EEGPreprocessing",
    "RecordInfo",
    "PhysionetDataError",
    "check_physionet_root",
    "list_records",
    "read_record",
    "epoch_labels",
    "preprocess_signals",
    "build_cache",
    "PhysionetCache",
    "split_subjects",
    "EEGWindows",
]

EEG_CHANNELS = ("F3-M2", "F4-M1", "C3-M2", "C4-M1", "O1-M2", "O2-M1")
STAGES = ("W", "N1", "N2", "N3", "R")
# -arousal.mat datasets, in the order of STAGES.
_STAGE_DATASETS = ("wake", "nonrem1", "nonrem2", "nonrem3", "rem")
# Bump when the cached arrays change for the same preprocessing config.
CACHE_VERSION = 1
_LAYOUT = ("expected <root>/training/trNN-NNNN/trNN-NNNN.{hea,mat} and "
           "trNN-NNNN-arousal.mat, as distributed by PhysioNet")
_TO_UV = {"uV": 1.0, "µV": 1.0, "μV": 1.0, "mV": 1e3, "V": 1e6, "nV": 1e-3}


class PhysionetDataError(ValueError):
    """Malformed PhysioNet 2018 input; the message is one line naming the file."""


@dataclass(frozen=True)
class EEGPreprocessing:
    low_hz: float = 0.1
    high_hz: float = 30.0
    sfreq: float = 100.0
    window_s: float = 30.0
    channels: tuple[str, ...] = EEG_CHANNELS

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sfreq))

    def key(self) -> str:
        """Short hash of the config and :data:`CACHE_VERSION`: the cache folder's name."""
        payload = json.dumps({**dataclasses.asdict(self), "channels": list(self.channels),
                              "version": CACHE_VERSION}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


@dataclass
class RecordInfo:
    name: str
    subject: str
    folder: str              # "training" | "test"
    labelled: bool
    n_windows: int
    dropped_undefined: int
    dropped_partial: int


# --------------------------------------------------------------------------- layout
def check_physionet_root(root) -> None:
    """Fail fast, with one line, on a root that cannot be a PhysioNet 2018 root."""
    if root is None or not Path(root).is_dir():
        raise PhysionetDataError(f"PhysioNet 2018 root not found: {root} ({_LAYOUT})")
    training = Path(root) / "training"
    if not training.is_dir():
        raise PhysionetDataError(f"{training}: no training/ folder in the PhysioNet 2018 root ({_LAYOUT})")
    if not any(p.is_dir() and not p.name.startswith(".") for p in training.iterdir()):
        raise PhysionetDataError(f"{training}: no record folders ({_LAYOUT})")


def list_records(root) -> list[tuple[str, Path, str]]:
    """``(record name, record folder, "training" | "test")`` for every record folder,
    ``training/`` first, each folder sorted by name. Every non-hidden folder counts,
    so that a record without a header is reported, not silently left out."""
    root = Path(root)
    out = []
    for folder in ("training", "test"):
        base = root / folder
        if base.is_dir():
            out += [(p.name, p, folder) for p in sorted(base.iterdir())
                    if p.is_dir() and not p.name.startswith(".")]
    return out


# --------------------------------------------------------------------------- reading
def _read_header(hea: Path):
    import wfdb

    if not hea.is_file():
        raise PhysionetDataError(f"{hea}: header not found")
    try:
        return wfdb.rdheader(str(hea.with_suffix("")))
    except Exception as e:  # wfdb raises many kinds on a malformed header
        raise PhysionetDataError(f"{hea}: unreadable WFDB header ({type(e).__name__}: {e})".replace("\n", " ")) from None


def _read_stages(path: Path, n: int) -> np.ndarray:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PhysionetDataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({e})".replace("\n", " ")) from None
    stage = np.full(n, -1, np.int8)
    count = np.zeros(n, np.uint8)
    with f:
        for k, ds in enumerate((*_STAGE_DATASETS, "undefined")):
            key = f"data/sleep_stages/{ds}"
            if key not in f:
                raise PhysionetDataError(f"{path}: no dataset {key}")
            try:
                flags = np.asarray(f[key][()]).reshape(-1) != 0
            except (OSError, ValueError) as e:
                raise PhysionetDataError(f"{path}: unreadable dataset {key} ({e})".replace("\n", " ")) from None
            if flags.size != n:
                raise PhysionetDataError(f"{path}: {key} has {flags.size} samples, the header says {n}")
            count += flags
            if ds != "undefined":
                stage[flags] = k
    if (count > 1).any():
        i = int(np.argmax(count > 1))
        raise PhysionetDataError(f"{path}: sample {i} is flagged with more than one sleep stage")
    return stage


def read_record(record_dir, *, labelled: bool | None = None) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Read one record folder: ``(signals, fs, stage)``.

    ``signals`` is (6, n) float64 in µV, the channels of :data:`EEG_CHANNELS` in that
    order (found by name in the header); ``fs`` the header's rate; ``stage`` the
    per-sample stage index (int8, 0..4 as in :data:`STAGES`, -1 undefined), or None
    for an unlabelled record. ``labelled`` None: labels are required in a
    ``training/`` folder and read where present elsewhere.
    Raises :class:`PhysionetDataError` (one line naming the file) on bad input.
    """
    import scipy.io

    record_dir = Path(record_dir)
    name = record_dir.name
    hea = record_dir / f"{name}.hea"
    header = _read_header(hea)
    names = [str(s).strip() for s in (header.sig_name or [])]
    missing = [c for c in EEG_CHANNELS if c not in names]
    if missing:
        raise PhysionetDataError(f"{hea}: no EEG channel {missing[0]!r} (has {', '.join(names)})")
    idx = [names.index(c) for c in EEG_CHANNELS]
    units = [u if u else "mV" for u in (header.units or [None] * len(names))]  # WFDB's default
    for i in idx:
        if str(header.fmt[i]) != "16":
            raise PhysionetDataError(f"{hea}: signal {names[i]} has format {header.fmt[i]}, expected 16")
        if not header.adc_gain[i] or header.adc_gain[i] <= 0:
            raise PhysionetDataError(f"{hea}: signal {names[i]} has gain {header.adc_gain[i]}, expected > 0")
        if units[i] not in _TO_UV:
            raise PhysionetDataError(f"{hea}: signal {names[i]} has unit {units[i]!r}, expected uV or mV")
    fs = float(header.fs)
    n = int(header.sig_len or 0)

    mat = record_dir / f"{name}.mat"
    if not mat.is_file():
        raise PhysionetDataError(f"{mat}: signal file not found")
    try:
        val = scipy.io.loadmat(str(mat), variable_names=["val"]).get("val")
    except Exception as e:  # scipy raises ValueError / MatReadError on truncation
        raise PhysionetDataError(f"{mat}: truncated or unreadable MATLAB v4 file ({e})".replace("\n", " ")) from None
    if val is None or val.ndim != 2:
        raise PhysionetDataError(f"{mat}: no 2-D variable 'val'")
    if val.shape[0] != header.n_sig:
        raise PhysionetDataError(f"{mat}: 'val' has {val.shape[0]} signals, the header {hea.name} says {header.n_sig}")
    if val.shape[1] != n:
        raise PhysionetDataError(f"{mat}: 'val' has {val.shape[1]} samples, the header {hea.name} says {n}")
    signals = np.empty((len(idx), n), np.float64)
    for j, i in enumerate(idx):
        signals[j] = (val[i].astype(np.float64) - float(header.baseline[i])) / float(header.adc_gain[i])
        if _TO_UV[units[i]] != 1.0:
            signals[j] *= _TO_UV[units[i]]
    del val

    arousal = record_dir / f"{name}-arousal.mat"
    if labelled is None:
        labelled = record_dir.parent.name == "training" or arousal.is_file()
    if not labelled:
        return signals, fs, None
    if not arousal.is_file():
        raise PhysionetDataError(f"{arousal}: sleep stage file not found (a training/ record needs it)")
    return signals, fs, _read_stages(arousal, n)


# --------------------------------------------------------------------------- epochs
def epoch_labels(stage_per_sample, fs, window_s) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cut a per-sample stage vector into windows aligned to its change points.

    Returns ``(starts, labels, dropped_undefined, dropped_partial)``: window start
    samples (int64) and stage indices (int8) of every whole window inside a run of
    constant stage, from the run's first sample; ``ceil(len / window)`` dropped
    undefined epochs per undefined run (stage < 0); one dropped partial epoch per
    scored run whose length is not a multiple of the window.
    """
    s = np.asarray(stage_per_sample).reshape(-1)
    win = int(round(float(window_s) * float(fs)))
    if win <= 0:
        raise ValueError(f"window of {window_s} s at {fs} Hz has no samples")
    if s.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int8), 0, 0
    bounds = np.r_[0, np.flatnonzero(np.diff(s)) + 1, s.size]
    starts, labels = [], []
    undefined = partial = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        v, length = int(s[a]), int(b - a)
        if v < 0:
            undefined += -(-length // win)
            continue
        k, rest = divmod(length, win)
        starts.append(a + win * np.arange(k, dtype=np.int64))
        labels.append(np.full(k, v, np.int8))
        partial += int(rest > 0)
    return np.concatenate(starts or [np.zeros(0, np.int64)]), np.concatenate(labels or [np.zeros(0, np.int8)]), undefined, partial


def _unlabelled_epochs(n: int, fs: float, window_s: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    win = int(round(window_s * fs))
    k, rest = divmod(n, win)
    return win * np.arange(k, dtype=np.int64), np.full(k, -1, np.int8), 0, int(rest > 0)


# --------------------------------------------------------------------------- preprocessing
def preprocess_signals(signals, fs, prep: EEGPreprocessing) -> np.ndarray:
    """Band-pass the whole record ``prep.low_hz``-``prep.high_hz`` (MNE FIR, zero phase)
    and resample it from ``fs`` to ``prep.sfreq``: (C, n) -> (C, ~n * sfreq / fs) float32."""
    import mne
    from fractions import Fraction

    signals = np.asarray(signals)
    ratio = Fraction(float(prep.sfreq) / float(fs)).limit_denominator(1000)
    out = None
    for c in range(signals.shape[0]):       # one channel at a time: peak memory of one
        x = np.array(signals[c:c + 1], dtype=np.float64, copy=True)
        x = mne.filter.filter_data(x, float(fs), prep.low_hz, prep.high_hz, copy=False, verbose="error")
        if ratio != 1:
            x = mne.filter.resample(x, up=float(ratio.numerator), down=float(ratio.denominator),
                                    method="polyphase", verbose="error")
        if out is None:
            out = np.empty((signals.shape[0], x.shape[1]), np.float32)
        out[c] = x[0]
    return out


# --------------------------------------------------------------------------- cache
def _source_signature(name: str, record_dir: Path, folder: str) -> dict:
    files = []
    for suffix in (".hea", ".mat", "-arousal.mat"):
        p = record_dir / f"{name}{suffix}"
        try:
            st = p.stat()
            files.append([p.name, st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([p.name, None, None])
    return {"record": name, "folder": folder, "files": files}


def _build_record(name: str, record_dir: Path, folder: str, out: Path, prep: EEGPreprocessing,
                  signature: dict) -> dict:
    """Worker: read, preprocess and write one record; returns its meta dict."""
    def skip(reason: str) -> dict:
        meta = {"source": signature, "skip": reason}
        atomic_write_json(out / f"{name}.json", meta, indent=1)
        return meta

    try:
        signals, fs, stage = read_record(record_dir)
    except PhysionetDataError as e:
        return skip(str(e))
    n = signals.shape[1]
    if stage is not None:
        starts, labels, undef, part = epoch_labels(stage, fs, prep.window_s)
    else:
        starts, labels, undef, part = _unlabelled_epochs(n, fs, prep.window_s)
    if len(starts) == 0:
        what = "scored " if stage is not None else ""
        return skip(f"{record_dir / (name + '.hea')}: no complete {prep.window_s:g} s {what}epoch "
                    f"({n} samples, {undef} undefined epochs)")
    x = preprocess_signals(signals, fs, prep)
    del signals
    win = prep.window_samples
    starts_out = (starts * (prep.sfreq / fs)).astype(np.int64)   # floor
    keep = starts_out + win <= x.shape[1]
    part += int((~keep).sum())
    starts_out, labels = starts_out[keep], labels[keep]
    if len(starts_out) == 0:
        return skip(f"{record_dir / (name + '.hea')}: no complete {prep.window_s:g} s epoch after resampling")

    # both arrays are renamed into place only when both are whole; the .json comes last
    with atomic_path(out / f"{name}.windows.npy") as wtmp, \
            atomic_path(out / f"{name}.labels.npy") as ltmp:
        mm = np.lib.format.open_memmap(wtmp, mode="w+", dtype=np.float32,
                                       shape=(len(starts_out), x.shape[0], win))
        for i, s0 in enumerate(starts_out):
            mm[i] = x[:, s0:s0 + win]
        mm.flush()
        del mm
        with open(ltmp, "wb") as fh:
            np.save(fh, labels.astype(np.int8))
    info = RecordInfo(name=name, subject=name, folder=folder, labelled=stage is not None,
                      n_windows=int(len(starts_out)), dropped_undefined=int(undef), dropped_partial=int(part))
    meta = {"source": signature, "info": dataclasses.asdict(info)}
    atomic_write_json(out / f"{name}.json", meta, indent=1)
    return meta


def _cached_meta(out: Path, name: str, signature: dict) -> dict | None:
    try:
        meta = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("source") != signature:
        return None
    if "info" in meta:
        try:
            w = np.load(out / f"{name}.windows.npy", mmap_mode="r")
            lab = np.load(out / f"{name}.labels.npy", mmap_mode="r")
        except (OSError, ValueError):
            return None
        if w.shape[0] != meta["info"]["n_windows"] or lab.shape != (w.shape[0],):
            return None
    return meta


def _remove_stale_tmp(out: Path) -> None:
    """Remove temporary files (``.<file>.<host>.<pid>.tmp``) left by dead writers on this host."""
    remove_dead_writers(out)


class _Progress:
    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.done, self.log, self.t0, self.last = total, 0, log, time.time(), time.time()
        self.bar = None
        if total:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc="physionet2018 cache", unit="rec")
            except ImportError:
                self.bar = None

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif time.time() - self.last > 10 or self.done == self.total:
            self.last = time.time()
            self.log(f"physionet2018 cache: {self.done}/{self.total} records "
                     f"({self.done / max(self.last - self.t0, 1e-9):.2f} records/s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class PhysionetCache:
    """The preprocessed windows of one root: ``records`` (usable, in root order),
    ``skipped`` ((record, reason) pairs), and per record ``windows(name)`` (memory-mapped
    float32 (n, 6, 3000), filtered µV) and ``labels(name)`` (int8, -1 unlabelled).
    ``built``/``reused`` name the records this call processed and found cached."""

    def __init__(self, path, prep: EEGPreprocessing, records: list[RecordInfo],
                 skipped: list[tuple[str, str]], built: list[str] | None = None,
                 reused: list[str] | None = None):
        self.path = Path(path)
        self.prep = prep
        self.records = list(records)
        self.skipped = list(skipped)
        self.built = list(built or [])
        self.reused = list(reused or [])
        self._by_name = {r.name: r for r in self.records}

    @classmethod
    def open(cls, path) -> "PhysionetCache":
        """Open a finished cache folder from its ``index.json`` (no root needed)."""
        path = Path(path)
        try:
            index = json.loads((path / "index.json").read_text())
        except (OSError, ValueError) as e:
            raise PhysionetDataError(f"{path / 'index.json'}: no readable cache index ({e})") from None
        prep = EEGPreprocessing(**{**index["prep"], "channels": tuple(index["prep"]["channels"])})
        return cls(path, prep, [RecordInfo(**r) for r in index["records"]],
                   [tuple(s) for s in index["skipped"]])

    def info(self, name: str) -> RecordInfo:
        if name not in self._by_name:
            why = dict(self.skipped).get(name)
            raise PhysionetDataError(f"{self.path}: record {name!r} is not in the cache"
                                     + (f" (skipped: {why})" if why else ""))
        return self._by_name[name]

    def windows(self, name: str) -> np.memmap:
        self.info(name)
        return np.load(self.path / f"{name}.windows.npy", mmap_mode="r")

    def labels(self, name: str) -> np.ndarray:
        self.info(name)
        return np.load(self.path / f"{name}.labels.npy")

    def source(self, name: str) -> dict:
        """The (name, size, mtime) of the source files the record was built from: what
        identifies its windows beside the preprocessing (a changed file rebuilds it)."""
        self.info(name)
        try:
            return json.loads((self.path / f"{name}.json").read_text())["source"]
        except (OSError, ValueError, KeyError) as e:
            raise PhysionetDataError(f"{self.path / f'{name}.json'}: no readable source signature "
                                     f"({e})") from None


def build_cache(root, cache_dir, prep: EEGPreprocessing = EEGPreprocessing(), workers: int | None = None,
                log: Callable[[str], None] = print) -> PhysionetCache:
    """Preprocess every record of ``root`` into ``cache_dir`` (once) and return the cache.

    Records already cached with the same source files are not read again. Bad records
    are skipped, listed in ``cache.skipped`` and logged (see the module docstring for
    what stops instead).
    """
    check_physionet_root(root)
    root = Path(root)
    out = Path(cache_dir) / prep.key()
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    entries = list_records(root)
    metas: dict[str, dict] = {}
    todo = []
    for name, rdir, folder in entries:
        sig = _source_signature(name, rdir, folder)
        meta = _cached_meta(out, name, sig)
        if meta is None:
            todo.append((name, rdir, folder, sig))
        else:
            metas[name] = meta
    reused = list(metas)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    workers = max(1, min(int(workers), len(todo)))
    if todo:
        log(f"physionet2018 cache: preprocessing {len(todo)} of {len(entries)} records "
            f"into {out} with {workers} worker(s)")
    progress = _Progress(len(todo), log)
    try:
        if workers == 1:
            for name, rdir, folder, sig in todo:
                metas[name] = _build_record(name, rdir, folder, out, prep, sig)
                progress.step()
        else:
            with cf.ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_build_record, name, rdir, folder, out, prep, sig): name
                           for name, rdir, folder, sig in todo}
                for fut in cf.as_completed(futures):
                    name = futures[fut]
                    try:
                        metas[name] = fut.result()
                    except Exception as e:
                        for f in futures:
                            f.cancel()
                        raise RuntimeError(f"physionet2018 cache: record {name} failed: "
                                           f"{type(e).__name__}: {e}") from e
                    progress.step()
    finally:
        progress.close()

    records, skipped = [], []
    for name, _, _ in entries:
        meta = metas[name]
        if "skip" in meta:
            skipped.append((name, meta["skip"]))
        else:
            records.append(RecordInfo(**meta["info"]))
    for name, reason in skipped:
        log(f"physionet2018: skipped {name}: {reason}")
    if not records:
        raise PhysionetDataError(f"{root}: no usable record ({len(skipped)} skipped; first: {skipped[0][1]})")
    n_lab = sum(r.labelled for r in records)
    log(f"physionet2018 cache: {len(records)} records ({n_lab} labelled, {len(records) - n_lab} unlabelled, "
        f"{sum(r.n_windows for r in records)} windows), {len(skipped)} skipped, "
        f"{len(todo)} built, {len(reused)} reused; {out}")
    index = {"prep": {**dataclasses.asdict(prep), "channels": list(prep.channels)},
             "version": CACHE_VERSION, "root": str(root.resolve()),
             "records": [dataclasses.asdict(r) for r in records], "skipped": [list(s) for s in skipped]}
    atomic_write_json(out / "index.json", index, indent=1)
    return PhysionetCache(out, prep, records, skipped,
                          built=[t[0] for t in todo], reused=reused)


# --------------------------------------------------------------------------- split
def split_subjects(records: list[RecordInfo], counts: dict[str, int], seed: int, scale_down: bool,
                   log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Split records by subject into ``{"pretrain", "finetune", "test"}`` record names.

    Rule: subjects are sorted by id and shuffled with ``numpy.random.default_rng(seed)``.
    A subject is labelled when all its records are. ``test`` takes the first
    ``counts["test"]`` shuffled labelled subjects, ``finetune`` the next
    ``counts["finetune"]``; ``pretrain`` draws ``counts["pretrain"]`` of the remaining
    subjects (unlabelled and labelled alike, shuffled together). So no subject is in
    two splits, test is held out from both pretraining and finetuning (as in the
    paper: 1,653 / 10 / 200 subjects), and the same records and seed give the same
    split. Names within a split are sorted.

    When the root has fewer subjects than the counts need (labelled subjects for
    finetune + test, or all subjects for the three together): with ``scale_down`` every
    count is multiplied by the same factor (the largest that fits) and rounded down,
    finetune and test at least 1, and the counts used are logged; without it a
    :class:`PhysionetDataError` names the counts needed and available.
    """
    for k in ("pretrain", "finetune", "test"):
        if k not in counts or int(counts[k]) < 0:
            raise PhysionetDataError(f"split counts need non-negative 'pretrain', 'finetune', 'test'; got {counts}")
    unknown = set(counts) - {"pretrain", "finetune", "test"}
    if unknown:
        raise PhysionetDataError(f"split counts: unknown key(s) {sorted(unknown)}")
    want = {k: int(counts[k]) for k in ("pretrain", "finetune", "test")}
    by_subject: dict[str, list[RecordInfo]] = {}
    for r in records:
        by_subject.setdefault(r.subject, []).append(r)
    subjects = sorted(by_subject)
    labelled = [s for s in subjects if all(r.labelled for r in by_subject[s])]
    n_all, n_lab = len(subjects), len(labelled)
    need_lab = want["finetune"] + want["test"]
    need_all = need_lab + want["pretrain"]
    use = dict(want)
    if n_lab < need_lab or n_all < need_all:
        msg = (f"split needs {want['pretrain']} pretrain + {want['finetune']} finetune + {want['test']} test "
               f"subjects ({need_lab} labelled); the root has {n_all} subjects ({n_lab} labelled)")
        if not scale_down:
            raise PhysionetDataError(msg)
        if n_lab < (want["finetune"] > 0) + (want["test"] > 0):
            raise PhysionetDataError(msg + "; too few labelled subjects even when scaled down")
        f = min(n_lab / need_lab if need_lab else 1.0, n_all / need_all)
        use = {k: int(math.floor(v * f + 1e-9)) for k, v in want.items()}
        for k in ("finetune", "test"):
            if want[k] > 0:
                use[k] = max(1, use[k])
        while use["finetune"] + use["test"] > n_lab:        # the "at least 1" may overshoot
            k = "test" if use["test"] >= use["finetune"] and use["test"] > 1 else "finetune"
            use[k] -= 1
        use["pretrain"] = min(use["pretrain"], n_all - use["finetune"] - use["test"])
        log(f"physionet2018 split: scaled down to {use['pretrain']} pretrain, {use['finetune']} finetune, "
            f"{use['test']} test subjects ({msg})")
    rng = np.random.default_rng(seed)
    lab_order = [labelled[i] for i in rng.permutation(n_lab)]
    test = lab_order[:use["test"]]
    finetune = lab_order[use["test"]:use["test"] + use["finetune"]]
    taken = set(test) | set(finetune)
    rest = [s for s in subjects if s not in taken]
    pretrain = [rest[i] for i in rng.permutation(len(rest))[:use["pretrain"]]]

    def names(subs):
        return sorted(r.name for s in subs for r in by_subject[s])

    return {"pretrain": names(pretrain), "finetune": names(finetune), "test": names(test)}


# --------------------------------------------------------------------------- dataset
class EEGWindows(torch.utils.data.Dataset):
    """30 s windows of the given records: ``(float32 tensor (6, 3000), label)``, label
    -1 for an unlabelled window. ``labelled_only`` keeps windows with a stage only.
    ``normalize``: instance normalisation (zero mean, unit variance per channel of each
    window; a flat channel becomes zeros). ``labels`` holds every item's label."""

    def __init__(self, cache: PhysionetCache, record_names, labelled_only: bool, normalize: bool = True):
        self.cache = cache
        self.record_names = list(record_names)
        self.labelled_only = bool(labelled_only)
        self.normalize = bool(normalize)
        rec_idx, win_idx, labels = [], [], []
        for i, name in enumerate(self.record_names):
            lab = cache.labels(name).astype(np.int64)
            keep = np.flatnonzero(lab >= 0) if self.labelled_only else np.arange(len(lab))
            rec_idx.append(np.full(len(keep), i, np.int32))
            win_idx.append(keep.astype(np.int32))
            labels.append(lab[keep])
        self._rec = np.concatenate(rec_idx) if rec_idx else np.zeros(0, np.int32)
        self._win = np.concatenate(win_idx) if win_idx else np.zeros(0, np.int32)
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._rec.shape[0])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}          # memory maps are reopened in each loader worker
        return state

    def __getitem__(self, i: int):
        r = int(self._rec[i])
        mm = self._maps.get(r)
        if mm is None:
            mm = self._maps[r] = self.cache.windows(self.record_names[r])
        x = np.array(mm[int(self._win[i])], dtype=np.float32)
        if self.normalize:
            x -= x.mean(axis=1, keepdims=True)
            std = x.std(axis=1, keepdims=True)
            x /= np.where(std > 1e-6, std, 1.0)
        return torch.from_numpy(x), int(self.labels[i])
