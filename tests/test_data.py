"""Tests for the synthetic data generator and the CIFAR-100 / ImageFolder readers."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from engine.errors import DataError
from tasks.data import synthetic
from tasks.data.cifar import CIFAR100Folder
from tasks.data.imagefolder import build_imagefolder
from tasks.data.synthetic import (
    class_shape_family,
    derive_seed,
    ensure_embedded_cifar100,
    ensure_embedded_imagefolder,
    render_scenes,
    write_cifar100,
    write_imagefolder,
)


# ----------------------------------------------------------------------------- helpers
def _hue_features(imgs: np.ndarray, bins: int = 36) -> np.ndarray:
    """Per-image histogram of hue, weighted by saturation * value (position-free)."""
    x = imgs.astype(np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = mx - mn + 1e-6
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
    w = (d / (mx + 1e-6)) * mx
    idx = np.minimum((h * bins).astype(np.int64), bins - 1).reshape(len(imgs), -1)
    feats = np.zeros((len(imgs), bins))
    rows = np.repeat(np.arange(len(imgs)), idx.shape[1])
    np.add.at(feats, (rows, idx.reshape(-1)), w.reshape(-1))
    return feats / idx.shape[1]


def _nearest_centroid_accuracy(fa, ya, fb, yb, num_classes) -> float:
    mu, sd = fa.mean(0), fa.std(0) + 1e-6
    fa, fb = (fa - mu) / sd, (fb - mu) / sd
    centroids = np.stack([fa[ya == c].mean(0) for c in range(num_classes)])
    pred = ((fb[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == yb).mean())


def _assert_one_line_with(err: pytest.ExceptionInfo, path) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, f"{path} not named in: {msg}"


class _Py2StylePickler(pickle._Pickler):
    """Writes every str/bytes as a Python-2 ``str`` (BINSTRING opcodes), like the
    official cifar-100-python files, which Python 3 can only read with latin1."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def _py2_dump(obj, path) -> None:
    with open(path, "wb") as f:
        _Py2StylePickler(f, protocol=2).dump(obj)


# ----------------------------------------------------------------------------- generator
def test_render_is_deterministic_and_seed_dependent():
    a, la = render_scenes(64, 32, 10, seed=5)
    b, lb = render_scenes(64, 32, 10, seed=5)
    c, lc = render_scenes(64, 32, 10, seed=6)
    assert a.dtype == np.uint8 and a.shape == (64, 32, 32, 3)
    assert la.dtype == np.int64 and la.shape == (64,)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert not np.array_equal(la, lc)


@pytest.mark.parametrize("size", [64, 224])
def test_render_other_sizes(size):
    imgs, labels = render_scenes(6, size, 100, seed=1)
    assert imgs.shape == (6, size, size, 3) and imgs.dtype == np.uint8
    assert imgs.std() > 20  # not a flat image
    assert labels.max() < 100


def test_labels_balanced_and_all_classes_present():
    _, labels = render_scenes(1000, 32, 100, seed=0)
    counts = np.bincount(labels, minlength=100)
    assert counts.min() == counts.max() == 10
    _, labels = render_scenes(103, 32, 10, seed=0)
    counts = np.bincount(labels, minlength=10)
    assert set(counts.tolist()) <= {10, 11} and counts.sum() == 103
    # shuffled, not in i % num_classes order
    assert not np.array_equal(labels, np.arange(103) % 10)


def test_classes_are_distinct_shapes_and_colours():
    pairs = {class_shape_family(c) for c in range(synthetic.MAX_CLASSES)}
    assert len(pairs) == synthetic.MAX_CLASSES  # every class is a unique (shape, colour)
    # the first 10 classes differ both in shape and in colour family
    first = [class_shape_family(c) for c in range(10)]
    assert len({s for s, _ in first}) == 10 and len({f for _, f in first}) == 10
    # the base shapes are genuinely different masks
    g = np.linspace(-1, 1, 64)
    u, v = np.meshgrid(g, g)
    masks = [synthetic.shape_mask(s, u, v) for s in range(len(synthetic.SHAPE_NAMES))]
    assert len(masks) >= 10
    for i in range(len(masks)):
        assert masks[i].mean() > 0.1
        for j in range(i + 1, len(masks)):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.85, (synthetic.SHAPE_NAMES[i], synthetic.SHAPE_NAMES[j], iou)
    with pytest.raises(ValueError):
        render_scenes(4, 32, synthetic.MAX_CLASSES + 1)


def test_labels_are_predictable_from_content():
    # A position-free colour histogram + nearest centroid separates the classes
    # far above chance; with shuffled labels it does not.
    xa, ya = render_scenes(1000, 32, 10, seed=11)
    xb, yb = render_scenes(300, 32, 10, seed=12)
    fa, fb = _hue_features(xa), _hue_features(xb)
    acc = _nearest_centroid_accuracy(fa, ya, fb, yb, 10)
    assert acc > 0.6, acc
    shuffled = np.random.default_rng(0).permutation(ya)
    acc_shuffled = _nearest_centroid_accuracy(fa, shuffled, fb, yb, 10)
    assert acc_shuffled < 0.3, acc_shuffled


def test_patch_position_is_inferable_from_content():
    imgs, _ = render_scenes(500, 32, 100, seed=3)
    rng = np.random.default_rng(0)
    p, per_image = 4, 8
    n = imgs.shape[0] * per_image
    img_idx = np.repeat(np.arange(imgs.shape[0]), per_image)
    rows = rng.integers(0, 32 - p + 1, n)
    cols = rng.integers(0, 32 - p + 1, n)
    offs = np.arange(p)
    patches = imgs[img_idx[:, None, None], rows[:, None, None] + offs[None, :, None],
                   cols[:, None, None] + offs[None, None, :]]  # (n, p, p, 3)
    feats = patches.reshape(n, -1, 3).mean(1).astype(np.float64)
    design = np.c_[feats, np.ones(n)]
    for name, target in (("x", cols + p / 2), ("y", rows + p / 2)):
        target = target.astype(np.float64)
        w, *_ = np.linalg.lstsq(design, target, rcond=None)
        r2 = 1.0 - (target - design @ w).var() / target.var()
        assert r2 > 0.5, (name, r2)
    # and the corners differ systematically
    tl = imgs[:, :4, :4].reshape(len(imgs), -1, 3).mean(1)
    br = imgs[:, -4:, -4:].reshape(len(imgs), -1, 3).mean(1)
    assert (np.abs(tl - br).sum(1) > 40).mean() > 0.9


def test_render_speed():
    import time

    t = time.perf_counter()
    render_scenes(5000, 32, 100, seed=0)
    assert time.perf_counter() - t < 5.0


# ----------------------------------------------------------------------------- CIFAR format
def test_cifar_writer_exact_format(tmp_path):
    root = write_cifar100(tmp_path / "c", 30, 12, size=32, num_classes=100, seed=3)
    folder = root / "cifar-100-python"
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "test", "train"]
    with open(folder / "train", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    assert set(batch) == {"data", "fine_labels", "coarse_labels", "filenames", "batch_label"}
    data = batch["data"]
    assert isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (30, 3072)
    assert isinstance(batch["fine_labels"], list) and all(type(x) is int for x in batch["fine_labels"])
    assert batch["coarse_labels"] == [x // 5 for x in batch["fine_labels"]]
    assert len(batch["filenames"]) == 30 and all(isinstance(s, str) for s in batch["filenames"])
    assert isinstance(batch["batch_label"], str)

    imgs, labels = render_scenes(30, 32, 100, derive_seed(3, "train"))
    assert batch["fine_labels"] == labels.tolist()
    for i, r, c, k in [(0, 0, 0, 0), (1, 5, 17, 1), (29, 31, 31, 2), (7, 12, 3, 2)]:
        assert imgs[i, r, c, k] == data[i, k * 1024 + r * 32 + c]
    i, r, c, k = np.meshgrid(np.arange(30), np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    assert np.array_equal(imgs[i, r, c, k], data[i, k * 1024 + r * 32 + c])

    with open(folder / "meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    assert len(meta["fine_label_names"]) == 100 and len(meta["coarse_label_names"]) == 20
    assert len(set(meta["fine_label_names"])) == 100

    with open(folder / "test", "rb") as f:
        test = pickle.load(f, encoding="latin1")
    assert test["data"].shape == (12, 3072)
    assert not np.array_equal(test["data"][:12], data[:12])  # different seeds


def test_cifar_reader_round_trip_and_other_size(tmp_path):
    root = write_cifar100(tmp_path, 20, 10, size=16, num_classes=10, seed=1)
    ds = CIFAR100Folder(root, train=True)
    imgs, labels = render_scenes(20, 16, 10, derive_seed(1, "train"))
    assert len(ds) == 20 and ds.num_classes == 10 and len(ds.classes) == 10
    assert ds.data.shape == (20, 16, 16, 3) and ds.data.dtype == np.uint8
    assert np.array_equal(ds.data, imgs) and ds.targets == labels.tolist()
    img, y = ds[3]
    assert img.mode == "RGB" and img.size == (16, 16) and y == labels[3]
    assert np.array_equal(np.asarray(img), imgs[3])
    test = CIFAR100Folder(root, train=False, transform=lambda im: np.asarray(im).sum())
    assert len(test) == 10 and isinstance(test[0][0], np.integer)


def test_cifar_reader_reads_python2_style_pickles(tmp_path):
    rng = np.random.default_rng(0)
    n = 7
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    images[0, 0, 0] = [200, 201, 255]  # bytes that are not ASCII
    fine = [int(x) for x in rng.integers(0, 5, n)]
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split in ("train", "test"):
        _py2_dump({
            "filenames": [f"img_{i}.png" for i in range(n)],
            "batch_label": f"{split} batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [x // 5 for x in fine],
            "data": images.transpose(0, 3, 1, 2).reshape(n, 3072),
        }, folder / split)
    names = ["apple", "aquarium_fish", "baby", "bear", "beaver"]
    _py2_dump({"fine_label_names": names, "coarse_label_names": ["a"]}, folder / "meta")

    # really a Python-2 style file: the default ASCII decoding cannot read it
    with open(folder / "train", "rb") as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)

    ds = CIFAR100Folder(tmp_path, train=True)
    assert ds.classes == names and ds.targets == fine
    assert np.array_equal(ds.data, images)
    img, y = ds[0]
    assert np.array_equal(np.asarray(img), images[0]) and y == fine[0]


# ----------------------------------------------------------------------------- errors
def test_cifar_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        CIFAR100Folder(missing, train=True)
    _assert_one_line_with(err, missing)
    assert "cifar-100-python" in str(err.value)


def test_cifar_missing_test_file(tmp_path):
    root = write_cifar100(tmp_path, 5, 5, num_classes=10)
    (root / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError) as err:
        CIFAR100Folder(root, train=True)
    _assert_one_line_with(err, root / "cifar-100-python" / "test")


def test_cifar_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        CIFAR100Folder(tmp_path, train=True)
    _assert_one_line_with(err, tmp_path / "cifar-100-python")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_cifar_corrupt_train_file(tmp_path, damage):
    root = write_cifar100(tmp_path, 20, 5, num_classes=10)
    train = root / "cifar-100-python" / "train"
    raw = train.read_bytes()
    payload = {"truncate": raw[: len(raw) // 2], "garbage": b"\x00\xffnot a pickle\n\n",
               "empty": b""}[damage]
    train.write_bytes(payload)
    with pytest.raises(DataError) as err:
        CIFAR100Folder(root, train=True)
    _assert_one_line_with(err, train)
    CIFAR100Folder(root, train=False)  # the intact split still loads


def test_cifar_bad_contents(tmp_path):
    root = write_cifar100(tmp_path, 6, 6, num_classes=10)
    train = root / "cifar-100-python" / "train"
    good = pickle.loads(train.read_bytes())

    def check(batch, needle):
        train.write_bytes(pickle.dumps(batch, protocol=2))
        with pytest.raises(DataError) as err:
            CIFAR100Folder(root, train=True)
        _assert_one_line_with(err, train)
        assert needle in str(err.value)

    check({k: v for k, v in good.items() if k != "fine_labels"}, "fine_labels")
    check({**good, "fine_labels": good["fine_labels"][:-1]}, "5 labels for 6 images")
    check({**good, "data": good["data"][:, :3000]}, "square RGB image")
    check({**good, "data": good["data"][:, :3071]}, "square RGB image")
    check({**good, "fine_labels": [99] * 6}, "fine labels in [0, 10)")
    check([1, 2, 3], "expected a pickled dict")


def _make_imagefolder(root, classes_train=("a", "b"), classes_val=("a", "b")):
    from PIL import Image

    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for split, classes in (("train", classes_train), ("val", classes_val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            img.save(root / split / c / "0.png")
    return root


def test_imagefolder_ok(tmp_path):
    root = _make_imagefolder(tmp_path)
    ds = build_imagefolder(root, "val")
    assert ds.classes == ["a", "b"] and len(ds) == 2
    img, y = ds[1]
    assert img.size == (8, 8) and y == 1


def test_imagefolder_errors(tmp_path):
    missing = tmp_path / "none"
    with pytest.raises(DataError) as err:
        build_imagefolder(missing, "train")
    _assert_one_line_with(err, missing)
    assert "{train,val}/<class>/<image>" in str(err.value)

    root = _make_imagefolder(tmp_path / "r1")
    (root / "train" / "empty").mkdir()
    (root / "val" / "empty").mkdir()
    with pytest.raises(DataError) as err:
        build_imagefolder(root, "train")
    _assert_one_line_with(err, root / "train" / "empty")

    root = tmp_path / "r2"
    (root / "train" / "a").mkdir(parents=True)
    from PIL import Image
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / "a" / "x.jpg")
    with pytest.raises(DataError) as err:
        build_imagefolder(root, "train")
    _assert_one_line_with(err, root / "val")

    root = _make_imagefolder(tmp_path / "r3", classes_val=("a", "c"))
    with pytest.raises(DataError) as err:
        build_imagefolder(root, "train")
    _assert_one_line_with(err, root / "val")
    assert "'b'" in str(err.value) and "'c'" in str(err.value)

    root = tmp_path / "r4"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    with pytest.raises(DataError) as err:
        build_imagefolder(root, "train")
    _assert_one_line_with(err, root / "train")

    with pytest.raises(DataError) as err:
        build_imagefolder(_make_imagefolder(tmp_path / "r5"), "test")
    assert "\n" not in str(err.value) and "'test'" in str(err.value)


# ----------------------------------------------------------------------------- caches
def test_ensure_embedded_cifar100_is_generated_once(tmp_path):
    cache = tmp_path / "cache"
    root = ensure_embedded_cifar100(cache, 40, 20, num_classes=10, seed=2)
    train = root / "cifar-100-python" / "train"
    mtime = train.stat().st_mtime_ns
    again = ensure_embedded_cifar100(cache, 40, 20, num_classes=10, seed=2)
    assert again == root and train.stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir()] == [root.name]  # no temp folders left
    ds = CIFAR100Folder(root, train=True)
    assert len(ds) == 40 and ds.num_classes == 10 and ds.data.shape[1:] == (32, 32, 3)
    other = ensure_embedded_cifar100(cache, 40, 20, num_classes=10, seed=3)
    assert other != root and other.parent == cache


def test_ensure_embedded_imagefolder_is_generated_once(tmp_path):
    root = ensure_embedded_imagefolder(tmp_path, 24, 8, size=20, num_classes=4, seed=0)
    probe = next((root / "train").rglob("*.png"))
    mtime = probe.stat().st_mtime_ns
    assert ensure_embedded_imagefolder(tmp_path, 24, 8, size=20, num_classes=4, seed=0) == root
    assert probe.stat().st_mtime_ns == mtime
    train = build_imagefolder(root, "train")
    val = build_imagefolder(root, "val")
    assert len(train) == 24 and len(val) == 8
    assert train.classes == val.classes == synthetic.imagefolder_class_dirs(4)
    assert np.bincount(train.targets).tolist() == [6, 6, 6, 6]
    img, _ = train[0]
    assert img.size == (20, 20) and img.mode == "RGB"


def test_imagefolder_writer_labels_match_content(tmp_path):
    # ImageFolder's sorted class order must equal the generator's label order.
    root = write_imagefolder(tmp_path, 300, 10, size=32, num_classes=10, seed=4)
    ds = build_imagefolder(root, "train")
    imgs = np.stack([np.asarray(ds[i][0]) for i in range(len(ds))])
    ys = np.asarray(ds.targets)
    ref_x, ref_y = render_scenes(600, 32, 10, seed=99)
    acc = _nearest_centroid_accuracy(_hue_features(ref_x), ref_y, _hue_features(imgs), ys, 10)
    assert acc > 0.6, acc


def test_ensure_keeps_the_copy_of_a_process_that_finished_first(tmp_path):
    final = tmp_path / "dataset"

    def writer(tmp):
        (tmp / "mine").write_text("mine")
        final.mkdir()  # another process renamed its copy into place meanwhile
        (final / "theirs").write_text("theirs")

    assert synthetic._ensure(tmp_path, "dataset", writer) == final
    assert sorted(p.name for p in final.iterdir()) == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]
    assert not os.path.exists(final / "mine")


class _RandomDraws(torch.utils.data.Dataset):
    """Each item: the draws an augmentation would make in the worker (numpy, Python, torch)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import random

        return torch.tensor([np.random.rand(), random.random(), float(torch.rand(()))])


def test_loader_workers_draw_afresh_each_epoch_and_reproducibly_from_the_seed(tmp_path):
    """mmengine's default worker seeding gives a worker the same draws every epoch
    (its k-th sample's augmentation repeats); the suite's seeds each epoch's workers from
    the base seed the DataLoader draws from the run's random state."""
    from types import SimpleNamespace

    from mmengine.runner import Runner

    from engine.plan import PretrainPlan
    from engine.runner import SuiteModel, build_runner

    class Model(SuiteModel):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, inputs, data_samples=None, mode="loss"):
            return {"loss": (self.w * inputs).sum()}

    def epochs_of_draws(rank: int, epochs: int = 2):
        runner = build_runner(Model(), tmp_path / f"r{rank}", _RandomDraws(),
                              schedule=PretrainPlan(epochs=1, global_batch_size=2, warmup_epochs=0),
                              batch_per_process=2, loader=SimpleNamespace(num_workers=2, log_interval=1))
        cfg = dict(runner._train_dataloader)
        cfg["worker_init_fn"] = {**cfg["worker_init_fn"], "rank": rank}
        cfg["sampler"] = dict(type="DefaultSampler", shuffle=False)
        torch.manual_seed(0)  # the run's random state when its loaders start
        loader = Runner.build_dataloader(cfg, seed=0)
        return [torch.cat(list(loader)) for _ in range(epochs)]

    first, second = epochs_of_draws(rank=0)
    assert not torch.isclose(first, second).any()        # no draw repeats in the next epoch
    again = epochs_of_draws(rank=0)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])  # same seed, same draws
    other_rank = epochs_of_draws(rank=1, epochs=1)[0]
    assert not torch.isclose(first, other_rank).any()    # ranks draw differently
