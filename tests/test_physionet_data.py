"""PhysioNet/CinC 2018 data layer: reader, epochs, preprocessing, cache, split, and
the generator of format-faithful records. Tiny records (minutes), CPU, < 60 s."""
from __future__ import annotations

import json
import os
import shutil
import socket

import numpy as np
import pytest
import scipy.io

from tasks.data import physionet_synthetic as ps
from tasks.data.physionet2018 import (
    EEG_CHANNELS,
    EEGPreprocessing,
    EEGWindows,
    PhysionetCache,
    PhysionetDataError,
    RecordInfo,
    build_cache,
    check_physionet_root,
    epoch_labels,
    list_records,
    preprocess_signals,
    read_record,
    split_subjects,
)

MIN = 1.0 / 60  # hours


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def two_records(tmp_path_factory):
    """Two labelled records written with known physical values: one with an undefined
    prefix of arbitrary length, one scored from sample 0."""
    root = tmp_path_factory.mktemp("pn_truth")
    recs = {
        "tr03-0005": ps.synthesize_record(11, 10 * MIN, labelled=True, undefined_prefix=4321),
        "tr04-0042": ps.synthesize_record(12, 10 * MIN, labelled=True, undefined_prefix=0),
    }
    for name, rec in recs.items():
        ps.write_record(root / "training" / name, rec)
    return root, recs


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pn_small") / "root"
    ps.write_physionet_records(root, n_training=3, n_test=1, hours=10 * MIN, seed=3, workers=1)
    return root


# --------------------------------------------------------------------------- reader
def _max_quantisation_uV(rec) -> np.ndarray:
    return 0.5 / rec.gains[:6] + 1e-6


def test_reader_returns_written_signals_and_stages(two_records):
    root, recs = two_records
    for name, rec in recs.items():
        signals, fs, stage = read_record(root / "training" / name)
        assert fs == 200.0
        assert signals.shape == (6, rec.n) and signals.dtype == np.float64
        err = np.abs(signals - rec.signals[:6].astype(np.float64)).max(axis=1)
        assert (err <= _max_quantisation_uV(rec)).all(), (name, err)
        assert stage is not None and stage.dtype == np.int8
        np.testing.assert_array_equal(stage, rec.stage)
    # the undefined prefix and the scored-from-sample-0 case are both there
    assert (recs["tr03-0005"].stage[:4321] == -1).all() and recs["tr03-0005"].stage[4321] >= 0
    assert recs["tr04-0042"].stage[0] >= 0


def test_reader_finds_eeg_channels_by_name_and_converts_units(two_records, tmp_path):
    root, recs = two_records
    name = "tr03-0005"
    src = root / "training" / name
    dst = tmp_path / "training" / name
    shutil.copytree(src, dst)
    # swap F3-M2 (row 0) and C4-M1 (row 3) in both files, and give C4-M1 in mV
    val = scipy.io.loadmat(dst / f"{name}.mat")["val"]
    val[[0, 3]] = val[[3, 0]]
    scipy.io.savemat(dst / f"{name}.mat", {"val": val}, format="4")
    lines = (dst / f"{name}.hea").read_text().splitlines()
    lines[1], lines[4] = lines[4], lines[1]
    f = lines[4].split()                          # now the F3-M2 line, at row 3
    gain, rest = f[2].split("(")
    f[2] = f"{float(gain) * 1000:g}({rest.replace('/uV', '/mV')}"
    lines[4] = " ".join(f)
    (dst / f"{name}.hea").write_text("\n".join(lines) + "\n")
    signals, _, _ = read_record(dst)
    rec = recs[name]
    err = np.abs(signals - rec.signals[:6].astype(np.float64)).max(axis=1)
    assert (err <= _max_quantisation_uV(rec) * 1.001).all(), err


def test_test_records_are_unlabelled(small_root):
    recs = list_records(small_root)
    assert [(r[0][:2], r[2]) for r in recs] == [("tr", "training")] * 3 + [("te", "test")]
    assert recs == sorted(recs, key=lambda r: (r[2] != "training", r[0]))
    signals, fs, stage = read_record(recs[-1][1])
    assert stage is None and signals.shape[0] == 6


# --------------------------------------------------------------------------- epochs
def test_epoch_labels_hand_made():
    #        undef | W x7 (2 windows + partial) | N2 x5 (1 + partial) | undef x4 | R x3
    s = np.array([-1, -1] + [0] * 7 + [2] * 5 + [-1] * 4 + [4] * 3, np.int8)
    starts, labels, undefined, partial = epoch_labels(s, fs=1, window_s=3)
    assert starts.tolist() == [2, 5, 9, 18]
    assert labels.tolist() == [0, 0, 2, 4]
    assert (undefined, partial) == (1 + 2, 2)
    starts, labels, undefined, partial = epoch_labels(np.array([1, 1, 1, 3, 3, 3], np.int8), 2, 1.5)
    assert starts.tolist() == [0, 3] and labels.tolist() == [1, 3] and (undefined, partial) == (0, 0)
    starts, labels, undefined, partial = epoch_labels(np.full(10, -1, np.int8), 1, 3)
    assert len(starts) == 0 and (undefined, partial) == (4, 0)


# --------------------------------------------------------------------------- preprocessing
def test_filter_keeps_the_band_and_resamples():
    fs, seconds = 200, 1200
    t = np.arange(seconds * fs) / fs
    x = 50 * np.sin(2 * np.pi * 0.02 * t) + 20 * np.sin(2 * np.pi * 10 * t) + 20 * np.sin(2 * np.pi * 45 * t)
    y = preprocess_signals(np.tile(x, (6, 1)), fs, EEGPreprocessing())
    assert y.shape == (6, seconds * 100)

    def power(sig, f, sr):
        spec = np.fft.rfft(np.asarray(sig, np.float64)) / len(sig)
        return np.abs(spec[int(round(f * len(sig) / sr))]) ** 2

    ratio = {f: power(y[2], f, 100) / power(x, f, fs) for f in (0.02, 10.0, 45.0)}
    assert 0.9 < ratio[10.0] < 1.1, ratio
    assert ratio[0.02] < 0.02, ratio
    assert ratio[45.0] < 1e-4, ratio


# --------------------------------------------------------------------------- cache
def test_cache_windows_labels_and_no_second_build(two_records, tmp_path):
    root, recs = two_records
    prep = EEGPreprocessing()
    logs: list[str] = []
    cache = build_cache(root, tmp_path / "cache", prep, workers=2, log=logs.append)
    assert sorted(cache.built) == sorted(recs) and cache.skipped == []
    for name, rec in recs.items():
        info = next(r for r in cache.records if r.name == name)
        scored = int((rec.stage >= 0).sum())
        first = int(np.argmax(rec.stage >= 0))
        n_full = scored // 6000
        starts = first + 6000 * np.arange(n_full)          # the generator's scoring grid
        assert info.labelled and info.folder == "training" and info.subject == name
        assert info.n_windows == n_full
        assert info.dropped_partial == int(scored % 6000 > 0)
        assert info.dropped_undefined == -(-first // 6000) + -(-(rec.n - first - scored) // 6000)
        np.testing.assert_array_equal(cache.labels(name), rec.stage[starts])
        w = cache.windows(name)
        assert isinstance(w, np.memmap) and w.shape == (n_full, 6, 3000) and w.dtype == np.float32
        signals, fs, _ = read_record(root / "training" / name)
        filtered = preprocess_signals(signals, fs, prep)
        k = n_full // 2
        np.testing.assert_array_equal(w[k], filtered[:, starts[k] // 2: starts[k] // 2 + 3000])

    files = sorted(p for p in cache.path.iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in files if p.name != "index.json"}
    again = build_cache(root, tmp_path / "cache", prep, workers=2, log=_quiet)
    assert again.built == [] and sorted(again.reused) == sorted(recs)
    assert {p.name: p.stat().st_mtime_ns for p in cache.path.iterdir() if p.name != "index.json"} == mtimes
    assert not any(p.name.endswith(".tmp") for p in cache.path.iterdir())
    # a build killed mid-record leaves a temporary file and no .json: never trusted
    victim = sorted(recs)[0]
    (cache.path / f"{victim}.json").unlink()
    w_path = cache.path / f"{victim}.windows.npy"
    os.truncate(w_path, w_path.stat().st_size // 2)
    stale = cache.path / f".{victim}.windows.npy.{socket.gethostname()}.999999999.tmp"
    stale.write_bytes(b"half")
    third = build_cache(root, tmp_path / "cache", prep, workers=1, log=_quiet)
    assert third.built == [victim] and not stale.exists()
    assert third.windows(victim).shape == (third.info(victim).n_windows, 6, 3000)
    opened = PhysionetCache.open(cache.path)
    assert [r.name for r in opened.records] == [r.name for r in cache.records]
    # another preprocessing config is another folder
    assert EEGPreprocessing(high_hz=35.0).key() != prep.key()


def test_dataset_normalises_each_window_and_channel(small_root, tmp_path):
    cache = build_cache(small_root, tmp_path / "cache", workers=1, log=_quiet)
    assert [r.labelled for r in cache.records] == [True, True, True, False]
    names = [r.name for r in cache.records]
    every = EEGWindows(cache, names, labelled_only=False)
    scored = EEGWindows(cache, names, labelled_only=True)
    assert len(every) == sum(r.n_windows for r in cache.records)
    assert len(scored) == sum(r.n_windows for r in cache.records if r.labelled)
    assert (scored.labels >= 0).all() and (every.labels == -1).sum() == cache.records[-1].n_windows
    x, y = every[len(every) - 1]
    assert y == -1 and tuple(x.shape) == (6, 3000)
    for i in (0, len(scored) // 2):
        x, y = scored[i]
        assert x.dtype.is_floating_point and y == scored.labels[i]
        xn = x.numpy().astype(np.float64)
        np.testing.assert_allclose(xn.mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(xn.std(axis=1), 1.0, atol=1e-4)
    raw = EEGWindows(cache, names, labelled_only=True, normalize=False)
    assert raw[0][0].numpy().std() > 2.0     # µV, not normalised


def _bad_root(tmp_path, good_root):
    """A root with one good record and one of each bad input."""
    root = tmp_path / "bad"
    src = good_root / "training" / "tr03-0005"
    for name in ("tr03-0005", "tr03-0100", "tr03-0101", "tr03-0102", "tr03-0103"):
        dst = root / "training" / name
        dst.mkdir(parents=True)
        for f in src.iterdir():
            shutil.copyfile(f, dst / f.name.replace("tr03-0005", name))
        hea = dst / f"{name}.hea"
        hea.write_text(hea.read_text().replace("tr03-0005", name))
    hea = root / "training" / "tr03-0100" / "tr03-0100.hea"
    hea.write_text(hea.read_text().replace(" C4-M1", " C4-A1"))                # no C4-M1
    mat = root / "training" / "tr03-0101" / "tr03-0101.mat"
    os.truncate(mat, mat.stat().st_size - 1000)                              # truncated .mat
    hea = root / "training" / "tr03-0102" / "tr03-0102.hea"
    lines = hea.read_text().splitlines()
    first = lines[0].split()
    first[3] = str(int(first[3]) - 10)                                       # wrong length
    hea.write_text("\n".join([" ".join(first)] + lines[1:]) + "\n")
    (root / "training" / "tr03-0103" / "tr03-0103-arousal.mat").unlink()     # no labels
    return root


def test_bad_inputs_stop_or_are_counted_skips(two_records, tmp_path):
    with pytest.raises(PhysionetDataError, match="not found"):
        check_physionet_root(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PhysionetDataError, match="training/"):
        build_cache(tmp_path / "empty", tmp_path / "c0", log=_quiet)

    root = _bad_root(tmp_path, two_records[0])
    logs: list[str] = []
    cache = build_cache(root, tmp_path / "cache", workers=1, log=logs.append)
    assert [r.name for r in cache.records] == ["tr03-0005"]
    reasons = dict(cache.skipped)
    assert sorted(reasons) == ["tr03-0100", "tr03-0101", "tr03-0102", "tr03-0103"]
    assert "tr03-0100.hea" in reasons["tr03-0100"] and "'C4-M1'" in reasons["tr03-0100"]
    assert "tr03-0101.mat" in reasons["tr03-0101"] and "truncated" in reasons["tr03-0101"]
    assert "tr03-0102.mat" in reasons["tr03-0102"] and "header" in reasons["tr03-0102"]
    assert "tr03-0103-arousal.mat" in reasons["tr03-0103"] and "not found" in reasons["tr03-0103"]
    for name, reason in reasons.items():
        assert "\n" not in reason
        assert any(name in line and reason in line for line in logs)
    # skips are cached too; fixing the file retries the record
    again = build_cache(root, tmp_path / "cache", workers=1, log=_quiet)
    assert again.built == [] and dict(again.skipped) == reasons
    shutil.copyfile(two_records[0] / "training" / "tr03-0005" / "tr03-0005-arousal.mat",
                    root / "training" / "tr03-0103" / "tr03-0103-arousal.mat")
    fixed = build_cache(root, tmp_path / "cache", workers=1, log=_quiet)
    assert fixed.built == ["tr03-0103"] and "tr03-0103" not in dict(fixed.skipped)

    # a root where nothing is usable stops
    only_bad = tmp_path / "only_bad"
    shutil.copytree(root / "training" / "tr03-0101", only_bad / "training" / "tr03-0101")
    with pytest.raises(PhysionetDataError, match="no usable record"):
        build_cache(only_bad, tmp_path / "c1", workers=1, log=_quiet)


# --------------------------------------------------------------------------- split
def _infos(n_labelled: int, n_unlabelled: int) -> list[RecordInfo]:
    out = [RecordInfo(f"tr{i:02d}-{i:04d}", f"tr{i:02d}-{i:04d}", "training", True, 10, 0, 0)
           for i in range(n_labelled)]
    out += [RecordInfo(f"te{i:02d}-{i:04d}", f"te{i:02d}-{i:04d}", "test", False, 10, 0, 0)
            for i in range(n_unlabelled)]
    return out


def test_split_by_subject_is_disjoint_and_deterministic():
    records = _infos(30, 20)
    # two records of one subject must travel together
    records.append(RecordInfo("tr00-0000b", records[0].subject, "training", True, 10, 0, 0))
    subject = {r.name: r.subject for r in records}
    labelled = {r.name for r in records if r.labelled}
    counts = {"pretrain": 30, "finetune": 5, "test": 10}
    a = split_subjects(records, counts, seed=0, scale_down=False, log=_quiet)
    subs = {k: {subject[n] for n in v} for k, v in a.items()}
    assert {k: len(v) for k, v in subs.items()} == counts
    assert not (subs["pretrain"] & subs["finetune"] or subs["pretrain"] & subs["test"]
                or subs["finetune"] & subs["test"])
    assert set(a["finetune"]) <= labelled and set(a["test"]) <= labelled
    for k, names in a.items():
        if "tr00-0000" in names:
            assert "tr00-0000b" in names
    assert split_subjects(list(reversed(records)), counts, seed=0, scale_down=False, log=_quiet) == a
    assert split_subjects(records, counts, seed=1, scale_down=False, log=_quiet) != a


def test_split_scales_down_or_names_what_is_missing():
    records = _infos(24, 8)
    paper = {"pretrain": 1653, "finetune": 10, "test": 200}
    with pytest.raises(PhysionetDataError, match=r"1653 pretrain \+ 10 finetune \+ 200 test.*32 subjects \(24 labelled\)"):
        split_subjects(records, paper, seed=0, scale_down=False, log=_quiet)
    logs: list[str] = []
    s = split_subjects(records, paper, seed=0, scale_down=True, log=logs.append)
    n = {k: len(v) for k, v in s.items()}
    assert n["finetune"] >= 1 and n["test"] >= 1 and sum(n.values()) <= 32
    assert n["test"] >= n["finetune"] and n["pretrain"] > n["test"]       # proportions kept
    assert len(logs) == 1 and f"{n['pretrain']} pretrain, {n['finetune']} finetune, {n['test']} test" in logs[0]
    with pytest.raises(PhysionetDataError, match="labelled"):
        split_subjects(_infos(1, 40), {"pretrain": 10, "finetune": 1, "test": 1}, 0, True, _quiet)


# --------------------------------------------------------------------------- generator
def test_generator_writes_the_distributed_format(small_root, tmp_path):
    import h5py
    import wfdb

    rdir = small_root / "training" / "tr03-0005"
    name = rdir.name
    assert sorted(p.name for p in rdir.iterdir()) == sorted(
        [f"{name}.hea", f"{name}.mat", f"{name}.arousal", f"{name}-arousal.mat"])
    assert sorted(p.name for p in (small_root / "test" / "te03-0005").iterdir()) == ["te03-0005.hea", "te03-0005.mat"]
    h = wfdb.rdheader(str(rdir / name))
    assert h.fs == 200 and h.n_sig == 13
    assert tuple(h.sig_name) == tuple(s for s, _ in ps.SIGNALS) and tuple(h.sig_name[:6]) == EEG_CHANNELS
    assert set(h.fmt) == {"16"} and set(h.byte_offset) == {24}
    assert all(g != 1 for g in h.adc_gain) and any(b != 0 for b in h.baseline)
    assert (rdir / f"{name}.mat").stat().st_size == 24 + 2 * 13 * h.sig_len
    assert scipy.io.loadmat(rdir / f"{name}.mat")["val"].dtype == np.int16
    assert (rdir / f"{name}-arousal.mat").read_bytes()[:10] == b"MATLAB 7.3"
    with h5py.File(rdir / f"{name}-arousal.mat", "r") as f:
        assert f["data/arousals"].shape == (h.sig_len, 1)
        stages = {k: f[f"data/sleep_stages/{k}"][()] for k in f["data/sleep_stages"]}
    assert sorted(stages) == sorted(["wake", "nonrem1", "nonrem2", "nonrem3", "rem", "undefined"])
    assert all(v.shape == (1, h.sig_len) and v.dtype == np.uint8 for v in stages.values())
    assert (sum(stages.values()) == 1).all()
    # record 0 is scored from sample 0: the .arousal notes are the change points, less
    # the note at sample 0 that wfdb 4.3.1's rdann drops
    _, _, stage = read_record(rdir)
    assert stage[0] >= 0
    ann = wfdb.rdann(str(rdir / name), "arousal")
    notes = [(s, a) for s, a in zip(ann.sample, ann.aux_note) if a in ps.STAGE_NOTES]
    change = np.flatnonzero(np.diff(stage)) + 1
    expected = [(int(i), ps.STAGE_NOTES[stage[i]]) for i in change if stage[i] >= 0]
    assert notes == expected

    # deterministic by seed; another seed differs; the marker makes a rerun a no-op
    other = ps.write_physionet_records(tmp_path / "again", 3, 1, 10 * MIN, seed=3, workers=2)
    assert (other / "training" / name / f"{name}.mat").read_bytes() == (rdir / f"{name}.mat").read_bytes()
    assert json.loads((other / "GENERATED.json").read_text())["seed"] == 3
    mtime = (other / "training" / name / f"{name}.mat").stat().st_mtime_ns
    ps.write_physionet_records(other, 3, 1, 10 * MIN, seed=3)
    assert (other / "training" / name / f"{name}.mat").stat().st_mtime_ns == mtime
    rec_a = ps.synthesize_record(5, 2 * MIN)
    rec_b = ps.synthesize_record(6, 2 * MIN)
    assert not np.array_equal(rec_a.signals[:, :1000], rec_b.signals[:, :1000])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="not empty"):
        ps.write_physionet_records(occupied, 1, 0, 2 * MIN)
    assert (occupied / "notes.txt").exists()


def test_generated_stages_are_learnable_but_not_by_amplitude(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import cohen_kappa_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = ps.write_physionet_records(tmp_path / "root", 8, 0, hours=20 * MIN, seed=0, workers=1)
    cache = build_cache(root, tmp_path / "cache", workers=1, log=_quiet)
    freqs = np.fft.rfftfreq(3000, 1 / 100)
    bands = [(0.5, 2), (2, 4), (4, 8), (8, 12), (12, 15), (15, 30)]

    def features(name):
        w = np.asarray(cache.windows(name), np.float64)
        p = np.abs(np.fft.rfft(w - w.mean(-1, keepdims=True), axis=-1)) ** 2
        bp = np.stack([p[..., (freqs >= a) & (freqs < b)].sum(-1) for a, b in bands], -1)
        relative = np.log(bp / bp.sum(-1, keepdims=True)).reshape(len(w), -1)  # amplitude-free
        return relative, np.log(w.var(-1)), cache.labels(name)

    feats = {r.name: features(r.name) for r in cache.records}
    names = sorted(feats)
    train, test = names[:5], names[5:]

    def kappa(k):
        x = np.concatenate([feats[n][k] for n in train])
        y = np.concatenate([feats[n][2] for n in train])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
        yt = np.concatenate([feats[n][2] for n in test])
        return cohen_kappa_score(yt, model.predict(np.concatenate([feats[n][k] for n in test])))

    k_bands, k_var = kappa(0), kappa(1)
    assert len(np.unique(np.concatenate([feats[n][2] for n in names]))) == 5
    assert k_bands > 0.4, (k_bands, k_var)
    assert k_var < 0.75 and k_bands > k_var + 0.1, (k_bands, k_var)


def test_embedded_records_are_named_by_their_own_generator_version(monkeypatch):
    """A new version of the PhysioNet generator must miss every cache built from the old
    records (and a new image generator must not)."""
    from tasks.data import fingerprint, physionet_synthetic, synthetic

    before = fingerprint.data_identity("physionet2018", None, {"n_training": 4})
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert fingerprint.data_identity("physionet2018", None, {"n_training": 4}) == before
    monkeypatch.setattr(physionet_synthetic, "GENERATOR_VERSION", physionet_synthetic.GENERATOR_VERSION + 1)
    assert fingerprint.data_identity("physionet2018", None, {"n_training": 4}) != before
