"""Deterministic sleep recordings written in the PhysioNet/CinC 2018 on-disk format.

The records stand in for the "You Snooze You Win" data set when it is not on disk
(tiny preset, tests, CPU-only machines). They are written file for file as the real
records are distributed (``ROOT/training/trNN-NNNN/`` with ``.hea``, ``.mat``,
``.arousal`` and ``-arousal.mat``; ``ROOT/test/teNN-NNNN/`` without labels;
``ROOT/GENERATED.json``, the parameters, written last), so that
:mod:`tasks.data.physionet2018` reads them with the code that reads the real data.

The 13 channels, their units, gains and baselines, the undefined stretches around the
scored part and the 30 s scoring grid are as in the real records; record 0 of
``training/`` always starts scored at sample 0. The EEG depends on the stage, so that
staging is learnable but not trivial.

- :func:`write_physionet_records` writes a set;
- :func:`synthesize_record` and :func:`write_record` are the two halves of one record
  (a :class:`SyntheticRecord`), for tests that need the physical values that were
  written.

Details: docs/reference/generated-data.md.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "GENERATOR_VERSION",
    "FS",
    "SIGNALS",
    "SyntheticRecord",
    "synthesize_record",
    "write_record",
    "write_physionet_records",
]

# Bump when the written files change, so that stale generated roots are not reused.
GENERATOR_VERSION = 1

FS = 200
EPOCH = 30 * FS
# (name, unit) in the order of the real records' headers.
SIGNALS: tuple[tuple[str, str], ...] = (
    ("F3-M2", "uV"), ("F4-M1", "uV"), ("C3-M2", "uV"), ("C4-M1", "uV"),
    ("O1-M2", "uV"), ("O2-M1", "uV"), ("E1-M2", "uV"), ("Chin1-Chin2", "uV"),
    ("ABD", "uV"), ("CHEST", "uV"), ("AIRFLOW", "uV"), ("SaO2", "%"), ("ECG", "mV"),
)
STAGE_NOTES = ("W", "N1", "N2", "N3", "R")
_STAGE_DATASETS = ("wake", "nonrem1", "nonrem2", "nonrem3", "rem")

# Source amplitudes (uV, standard deviation) per stage (rows W, N1, N2, N3, R) for
# the bands delta (0.5-2 Hz), theta (4-7 Hz), alpha (8-12 Hz), beta (15-25 Hz).
_BAND_AMP = np.array([
    [6.0, 5.0, 14.0, 6.0],
    [9.0, 11.0, 4.5, 3.5],
    [14.0, 8.0, 3.0, 2.5],
    [36.0, 9.0, 2.0, 2.0],
    [8.0, 10.0, 5.0, 4.0],
])
# Topography: weight of each band on F3, F4, C3, C4, O1, O2.
_TOPO = np.array([
    [1.0, 1.0, 0.85, 0.85, 0.7, 0.7],   # delta: frontal
    [0.9, 0.9, 1.0, 1.0, 0.8, 0.8],     # theta: central
    [0.45, 0.45, 0.7, 0.7, 1.0, 1.0],   # alpha: occipital
    [1.0, 1.0, 0.9, 0.9, 0.7, 0.7],     # beta
])
_SPINDLE_TOPO = np.array([0.8, 0.8, 1.0, 1.0, 0.55, 0.55])
_KCOMPLEX_TOPO = np.array([1.0, 1.0, 0.9, 0.9, 0.5, 0.5])
_EOG_LEAK = np.array([0.3, 0.25, 0.08, 0.08, 0.02, 0.02])
# Events per minute per stage: spindles, K-complexes, eye events (blinks in W, slow
# rolling movements in N1, rapid eye movements in R).
_SPINDLES = np.array([0.0, 0.3, 5.0, 1.5, 0.0])
_KCOMPLEXES = np.array([0.0, 0.2, 1.5, 0.5, 0.0])
_EYE = np.array([10.0, 3.0, 0.0, 0.0, 24.0])
_EMG = np.array([20.0, 12.0, 8.0, 7.0, 2.5])
# Semi-Markov hypnogram: next-stage probabilities and bout lengths (epochs).
_NEXT = np.array([
    [0.0, 0.7, 0.2, 0.0, 0.1],
    [0.25, 0.0, 0.6, 0.0, 0.15],
    [0.15, 0.15, 0.0, 0.35, 0.35],
    [0.1, 0.1, 0.8, 0.0, 0.0],
    [0.3, 0.3, 0.4, 0.0, 0.0],
])
_MIN_BOUT = np.array([2, 1, 4, 4, 4])
_MEAN_EXTRA_BOUT = np.array([4.0, 2.0, 8.0, 6.0, 6.0])


@dataclass
class SyntheticRecord:
    """One generated recording, in physical units, before quantisation."""

    signals: np.ndarray                 # (13, n) float32, units of SIGNALS
    stage: np.ndarray                   # (n,) int8: 0..4, -1 undefined (also for test records)
    labelled: bool                      # whether the label files are written
    gains: np.ndarray                   # (13,) adu per unit
    baselines: np.ndarray               # (13,) int adu
    arousals: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, kind)

    @property
    def n(self) -> int:
        return int(self.signals.shape[1])

    def digital(self) -> np.ndarray:
        """int16 (13, n) as written to the .mat: round(physical * gain + baseline), clipped
        (in float64, one signal at a time)."""
        out = np.empty(self.signals.shape, np.int16)
        for i in range(self.signals.shape[0]):
            d = self.signals[i].astype(np.float64)
            d *= float(self.gains[i])
            d += float(self.baselines[i])
            np.rint(d, out=d)
            np.clip(d, -32768, 32767, out=d)
            out[i] = d
        return out


# --------------------------------------------------------------------------- hypnogram
def _hypnogram(rng: np.random.Generator, n_epochs: int) -> np.ndarray:
    out = np.empty(n_epochs, np.int8)
    i, s = 0, 0
    first = True
    while i < n_epochs:
        extra = rng.geometric(1.0 / (1.0 + _MEAN_EXTRA_BOUT[s])) - 1
        length = int(_MIN_BOUT[s] + extra + (rng.integers(2, 10) if first else 0))
        out[i:i + length] = s
        i += length
        first = False
        s = int(rng.choice(5, p=_NEXT[s]))
    return out


# --------------------------------------------------------------------------- signals
def _white(rng: np.random.Generator, shape) -> np.ndarray:
    """Unit-variance white noise, float32. Uniform rather than normal draws (a few times
    cheaper); every use of it is filtered, which makes it Gaussian-like anyway."""
    x = rng.random(shape, dtype=np.float32)
    x -= np.float32(0.5)
    x *= np.float32(np.sqrt(12.0))
    return x


def _resonator(rng, n, f0, bw, dtype=np.float32):
    """Narrow-band noise: white noise through a two-pole resonator at f0 Hz (bandwidth
    ~bw Hz), scaled to unit standard deviation."""
    from scipy.signal import lfilter

    r = 1.0 - np.pi * bw / FS
    theta = 2 * np.pi * f0 / FS
    a = [1.0, -2 * r * np.cos(theta), r * r]
    x = lfilter(np.ones(1, dtype), np.asarray(a, dtype), _white(rng, n))
    x *= dtype(1.0 / (x.std() + 1e-12))
    return x


def _per_sample(values_per_second: np.ndarray, n: int) -> np.ndarray:
    """Per-second values held for each second's samples (float32)."""
    return np.repeat(np.asarray(values_per_second, np.float32), FS)[:n]


def _event_starts(rng: np.random.Generator, sec_stage: np.ndarray, stage: int, per_min: float) -> np.ndarray:
    """Start samples of a Poisson number of events (``per_min`` per minute of ``stage``),
    each at a random second of that stage and a random sample within it."""
    secs = np.flatnonzero(sec_stage == stage)
    k = rng.poisson(len(secs) / 60 * per_min) if len(secs) and per_min > 0 else 0
    if k == 0:
        return np.zeros(0, np.int64)
    return rng.choice(secs, size=k) * FS + rng.integers(0, FS, size=k)


def _add_event(x: np.ndarray, start: int, wave: np.ndarray) -> None:
    end = min(start + wave.shape[-1], x.shape[-1])
    if end > start:
        x[..., start:end] += wave[..., : end - start]


def synthesize_record(seed: int | np.random.SeedSequence, hours: float = 1.0, labelled: bool = True,
                      undefined_prefix: int | None = None) -> SyntheticRecord:
    """One recording of ``hours`` hours at 200 Hz, deterministic in ``seed``.

    ``undefined_prefix`` fixes the number of unscored samples before the first scored
    epoch (0: scored from sample 0); by default it is random (1 sample to ~8 % of the
    record). The unscored stretch at the end is always random.
    """
    rng = np.random.default_rng(seed)
    n = int(round(hours * 3600 * FS))
    if n < 2 * EPOCH:
        raise ValueError(f"a synthetic record needs at least 60 s, got {hours} h")
    prefix = (int(rng.integers(1, max(2, n // 12))) if undefined_prefix is None
              else int(undefined_prefix))
    suffix = int(rng.integers(1, max(2, n // 15)))
    scored = n - prefix - suffix
    if scored < EPOCH:
        raise ValueError(f"undefined_prefix {prefix} leaves no scored epoch in {n} samples")
    n_epochs, rest = divmod(scored, EPOCH)
    partial = rest > 0 and rng.random() < 0.5           # a partial last scored epoch
    hyp = _hypnogram(rng, n_epochs + int(partial))
    stage = np.full(n, -1, np.int8)
    stage[prefix:prefix + n_epochs * EPOCH] = np.repeat(hyp[:n_epochs], EPOCH)
    if partial:
        stage[prefix + n_epochs * EPOCH: prefix + scored] = hyp[-1]

    # Per-second drive: stage (unscored stretches are lights-on wake), jitters.
    n_sec = -(-n // FS)
    sec_stage = stage[::FS][:n_sec].astype(np.int64)
    sec_stage[sec_stage < 0] = 0
    subject_scale = float(rng.lognormal(0.0, 0.3))
    band_gain = rng.lognormal(0.0, 0.2, size=4)
    n_ep_all = -(-n_sec // 30)
    epoch_jit = rng.lognormal(0.0, 0.3, size=(n_ep_all, 4))[np.arange(n_sec) // 30]
    amp_sec = _BAND_AMP[sec_stage] * band_gain * epoch_jit * subject_scale   # (n_sec, 4)

    # Arousals: 3-15 s of alpha/beta and EMG during sleep.
    arousals: list[tuple[int, int, str]] = []
    emg_sec = _EMG[sec_stage] * rng.lognormal(0.0, 0.2, size=n_sec)
    sleep_secs = np.flatnonzero(stage[::FS][:n_sec] > 0)
    n_ar = min(rng.poisson(len(sleep_secs) / 3600 * 8), len(sleep_secs))
    for s0 in np.sort(rng.choice(sleep_secs, size=n_ar, replace=False)) if n_ar else ():
        s0 = int(s0)
        s1 = min(n_sec, s0 + int(rng.integers(3, 16)))
        if arousals and s0 * FS <= arousals[-1][1]:
            continue                                            # no overlapping arousals
        amp_sec[s0:s1, 2] = np.maximum(amp_sec[s0:s1, 2], 10.0 * subject_scale)
        amp_sec[s0:s1, 3] = np.maximum(amp_sec[s0:s1, 3], 6.0 * subject_scale)
        emg_sec[s0:s1] = np.maximum(emg_sec[s0:s1], 15.0)
        arousals.append((s0 * FS, min(n, s1 * FS) - 1, "arousal_rera"))
    # smooth transitions over ~3 s
    kernel = np.ones(3) / 3
    amp_sec = np.stack([np.convolve(np.pad(a, 1, mode="edge"), kernel, "valid") for a in amp_sec.T], 1)

    alpha_peak = float(rng.uniform(8.5, 11.5))
    bands = np.stack([
        _resonator(rng, n, 1.0, 1.6),
        _resonator(rng, n, 5.5, 2.0),
        _resonator(rng, n, alpha_peak, 1.5),
        _resonator(rng, n, 20.0, 8.0),
    ]) * np.stack([_per_sample(a, n) for a in amp_sec.T])           # (4, n) float32
    chan_gain = rng.lognormal(0.0, 0.1, size=6).astype(np.float32)
    eeg = (_TOPO.T.astype(np.float32) * chan_gain[:, None]) @ bands  # (6, n)

    # 1/f background: a common and a per-channel leaky-integrated noise, plus white.
    from scipy.signal import lfilter

    white = _white(rng, (7, n))
    brown = lfilter(np.float32([1.0]), np.float32([1.0, -0.985]), white, axis=1)
    brown *= np.float32(1.0 / (brown[0].std() + 1e-12))
    noise_amp = 7.0 * subject_scale
    eeg += noise_amp * (0.6 * brown[6] + 0.8 * brown[:6]) + 2.0 * white[:6]

    # Events: spindles, K-complexes, eye movements.
    eog = np.zeros(n, np.float32)
    t_sp = np.arange(int(2.0 * FS)) / FS
    for st in range(5):
        for start in _event_starts(rng, sec_stage, st, _SPINDLES[st]):
            m = int(rng.uniform(0.5, 2.0) * FS)
            w = np.hanning(m) * np.sin(2 * np.pi * rng.uniform(12.0, 14.0) * t_sp[:m] + rng.uniform(0, 2 * np.pi))
            a = rng.uniform(15, 35) * subject_scale
            _add_event(eeg, int(start), (a * _SPINDLE_TOPO[:, None] * w).astype(np.float32))
        for start in _event_starts(rng, sec_stage, st, _KCOMPLEXES[st]):
            u = np.linspace(0, 1, int(rng.uniform(0.6, 1.0) * FS))
            w = -np.exp(-((u - 0.3) / 0.1) ** 2) + 0.6 * np.exp(-((u - 0.65) / 0.15) ** 2)
            a = rng.uniform(60, 140) * subject_scale
            _add_event(eeg, int(start), (a * _KCOMPLEX_TOPO[:, None] * w).astype(np.float32))
        for start in _event_starts(rng, sec_stage, st, _EYE[st]):
            if st == 0:         # blink: 0.3 s positive bump
                w = rng.uniform(80, 200) * np.hanning(int(0.3 * FS))
            elif st == 1:       # slow rolling movement: 2-4 s
                w = rng.uniform(40, 90) * rng.choice([-1, 1]) * np.sin(
                    np.linspace(0, np.pi, int(rng.uniform(2, 4) * FS)))
            else:               # rapid eye movement: sharp rise, slower return
                u = np.linspace(0, 1, int(rng.uniform(0.4, 1.0) * FS))
                w = rng.uniform(60, 160) * rng.choice([-1, 1]) * (
                    np.minimum(u / 0.15, 1.0) * np.exp(-np.maximum(u - 0.15, 0) / 0.3))
            _add_event(eog, int(start), w.astype(np.float32))
    eeg += _EOG_LEAK[:, None].astype(np.float32) * eog

    # Non-EEG channels.
    signals = np.empty((13, n), np.float32)
    signals[:6] = eeg
    signals[6] = eog + 0.3 * eeg[0] + 3.0 * brown[6]                       # E1-M2
    signals[7] = _per_sample(emg_sec, n) * white[0]                         # Chin1-Chin2
    f_br = 0.25 + 0.03 * np.tanh(np.cumsum(rng.standard_normal(n_sec)) / 20)
    ph = (2 * np.pi / FS) * np.cumsum(_per_sample(f_br, n), dtype=np.float64)
    ph %= 2 * np.pi
    ph = ph.astype(np.float32)
    signals[8] = 180 * np.sin(ph) + 5 * brown[1]                            # ABD
    signals[9] = 140 * np.sin(ph + 0.3) + 5 * brown[2]                      # CHEST
    signals[10] = 120 * np.sin(ph - 1.2) + 5 * brown[3]                     # AIRFLOW
    signals[11] = 96.0 + 1.2 * _per_sample(np.tanh(np.cumsum(rng.standard_normal(n_sec)) / 30), n)
    hr = rng.uniform(55, 70) / 60 + 0.05 * np.tanh(np.cumsum(rng.standard_normal(n_sec)) / 20)
    beat = np.cumsum(_per_sample(hr / FS, n), dtype=np.float64) % 1.0
    beat = beat.astype(np.float32)
    signals[12] = (1.2 * np.exp(-np.square((beat - 0.5) / 0.012)) - 0.15 * np.exp(-np.square((beat - 0.62) / 0.06))
                   + 0.02 * white[1])                                       # ECG
    # Physical ranges the int16 can hold at the gains below.
    np.clip(signals[:8], -700, 700, out=signals[:8])
    np.clip(signals[8:11], -1500, 1500, out=signals[8:11])
    np.clip(signals[11], 50, 100, out=signals[11])
    np.clip(signals[12], -6, 6, out=signals[12])

    gains = np.concatenate([
        np.round(rng.uniform(20.0, 40.0, size=8), 3),     # EEG, EOG, EMG: adu per uV
        np.round(rng.uniform(8.0, 15.0, size=3), 3),      # effort, airflow
        [200.0],                                          # SaO2: adu per %
        [2000.0],                                         # ECG: adu per mV
    ])
    baselines = rng.integers(-400, 400, size=13)
    baselines[11] = -10000                                # 50 % -> 0 adu, 100 % -> 10000 adu
    return SyntheticRecord(signals=signals, stage=stage, labelled=labelled, gains=gains,
                           baselines=baselines.astype(np.int64), arousals=arousals)


# --------------------------------------------------------------------------- writers
def _wfdb_checksum(d: np.ndarray) -> int:
    s = int(d.astype(np.int64).sum()) & 0xFFFF
    return s - 0x10000 if s >= 0x8000 else s


def _header_text(name: str, rec: SyntheticRecord, digital: np.ndarray) -> str:
    lines = [f"{name} {len(SIGNALS)} {FS} {rec.n}"]
    for i, (sig, unit) in enumerate(SIGNALS):
        lines.append(f"{name}.mat 16+24 {rec.gains[i]:g}({int(rec.baselines[i])})/{unit} 16 0 "
                     f"{int(digital[i, 0])} {_wfdb_checksum(digital[i])} 0 {sig}")
    return "\n".join(lines) + "\n"


def _mat73_userblock() -> bytes:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
    head = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    return head.ljust(512, b"\x00")


def _write_arousal_mat(path: Path, rec: SyntheticRecord) -> None:
    import h5py

    n = rec.n
    arousal = np.zeros((n, 1), np.float64)
    arousal[rec.stage < 0] = -1.0
    for a, b, _ in rec.arousals:
        arousal[a:b + 1] = 1.0
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("data")
        g.create_dataset("arousals", data=arousal, compression="gzip", compression_opts=1)
        ss = g.create_group("sleep_stages")
        for k, ds in enumerate(_STAGE_DATASETS):
            ss.create_dataset(ds, data=(rec.stage == k).astype(np.uint8)[None, :],
                              compression="gzip", compression_opts=1)
        ss.create_dataset("undefined", data=(rec.stage < 0).astype(np.uint8)[None, :],
                          compression="gzip", compression_opts=1)
    with open(path, "r+b") as fh:
        fh.write(_mat73_userblock())


def _write_annotations(record_dir: Path, name: str, rec: SyntheticRecord) -> None:
    import wfdb

    s = rec.stage
    change = np.flatnonzero(np.diff(s)) + 1
    starts = np.r_[0, change] if s[0] >= 0 else change
    notes = [(int(i), '"', STAGE_NOTES[s[i]]) for i in starts if s[i] >= 0]
    for a, b, kind in rec.arousals:
        notes += [(a, "(", f"({kind}"), (b, ")", f"{kind})")]
    notes.sort(key=lambda x: x[0])
    wfdb.wrann(name, "arousal", np.array([x[0] for x in notes], np.int64),
               symbol=['"'] * len(notes), aux_note=[x[2] for x in notes], fs=FS,
               write_dir=str(record_dir))


def write_record(record_dir: str | os.PathLike, rec: SyntheticRecord) -> Path:
    """Write one record's files into ``record_dir`` (its name is the folder's name)."""
    import scipy.io

    record_dir = Path(record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    name = record_dir.name
    digital = rec.digital()
    mat = record_dir / f"{name}.mat"
    scipy.io.savemat(mat, {"val": digital}, format="4")
    expected = 24 + digital.size * 2
    if mat.stat().st_size != expected:   # the .hea's "16+24" must hold for this file
        raise RuntimeError(f"{mat}: MATLAB v4 header is not 24 bytes ({mat.stat().st_size} != {expected})")
    (record_dir / f"{name}.hea").write_text(_header_text(name, rec, digital))
    if rec.labelled:
        _write_annotations(record_dir, name, rec)
        _write_arousal_mat(record_dir / f"{name}-arousal.mat", rec)
    return record_dir


def _record_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{3 + i % 11:02d}-{5 + 37 * i:04d}" for i in range(count)]


def _make_record(record_dir: Path, seed: np.random.SeedSequence, hours: float, labelled: bool,
                 undefined_prefix: int | None) -> None:
    write_record(record_dir, synthesize_record(seed, hours, labelled=labelled, undefined_prefix=undefined_prefix))


def write_physionet_records(root: str | os.PathLike, n_training: int, n_test: int,
                            hours: float = 1.0, seed: int = 0, *, workers: int | None = None) -> Path:
    """Write ``n_training`` labelled and ``n_test`` unlabelled records of ``hours`` hours
    under ``root`` (deterministic in ``seed``; each record has its own seed, so the
    files do not depend on ``workers``, the number of processes, default
    ``min(os.cpu_count(), 8)``) and return ``root``.

    A root already holding this exact set (``GENERATED.json`` matches) is returned as
    it is; one written by this generator with other parameters is replaced; a
    non-empty folder that this generator did not write is an error. The records are
    written into a hidden folder first and moved into place, and ``GENERATED.json``
    is written last, so a killed run is redone, never half-read.
    """
    root = Path(root)
    params = {"generator_version": GENERATOR_VERSION, "n_training": int(n_training),
              "n_test": int(n_test), "hours": float(hours), "seed": int(seed)}
    marker = root / "GENERATED.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return root
        except ValueError:
            pass
        marker.unlink()
        for sub in ("training", "test"):
            shutil.rmtree(root / sub, ignore_errors=True)
    elif root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".partial-")):
        raise ValueError(f"{root}: folder is not empty and holds no GENERATED.json; "
                         "give an empty or new folder for generated PhysioNet records")
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".partial-{os.getpid()}"
    seeds = np.random.SeedSequence([int(seed), GENERATOR_VERSION]).spawn(n_training + n_test)
    jobs = [(tmp / "training" / name, seeds[i], float(hours), True, 0 if i == 0 else None)
            for i, name in enumerate(_record_names("tr", n_training))]
    jobs += [(tmp / "test" / name, seeds[n_training + i], float(hours), False, None)
             for i, name in enumerate(_record_names("te", n_test))]
    workers = max(1, min(int(workers or min(os.cpu_count() or 1, 8)), len(jobs)))
    if workers == 1:
        for job in jobs:
            _make_record(*job)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in [pool.submit(_make_record, *job) for job in jobs]:
                fut.result()
    for sub in ("training", "test"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        os.replace(tmp / sub, root / sub)
    tmp.rmdir()
    marker_tmp = root / f".GENERATED.json.{os.getpid()}.tmp"
    marker_tmp.write_text(json.dumps(params, indent=1))
    os.replace(marker_tmp, marker)
    return root
