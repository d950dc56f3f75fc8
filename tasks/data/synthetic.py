"""Deterministic synthetic image data with real spatial structure (numpy only).

The images stand in for CIFAR-100 / ImageNet when the real data sets are not on
disk (smoke runs, tests, CPU-only machines). They are built so that both kinds of
signal the benchmark relies on are present:

* **Position is inferable from content.** Every image has a landscape-like
  background: a sky that darkens towards the top, a horizon at a random height in
  the middle band, ground that darkens towards the bottom, and a warm-to-cool
  horizontal colour ramp. A small patch (4x4 px at 32x32) therefore tells where
  in the image it came from, which is exactly what relative-translation
  pretraining (PART) has to exploit.
* **The label is decided by content only.** Each image holds 1-3 objects; the
  first, largest one (the "main" object, drawn last so that it is never
  occluded) has the class's shape/pattern and a colour from the class's colour
  family. The smaller distractors are of random classes.

Public API:

* :func:`render_scenes` -> ``(images uint8 (N, S, S, 3), labels int64 (N,))``
* :func:`write_cifar100` -> writes ``ROOT/cifar-100-python/{train,test,meta}``
* :func:`write_imagefolder` -> writes ``ROOT/{train,val}/<class>/<idx>.png``
* :func:`ensure_embedded_cifar100` / :func:`ensure_embedded_imagefolder`:
  generate once into a parameter-named cache folder (atomically) and return the
  root to give to the readers.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write_bytes

# Bump when the rendered pixels change, so that stale caches are not reused.
GENERATOR_VERSION = 1

SHAPE_NAMES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "cross",
    "ring",
    "hstripes",
    "vstripes",
    "checker",
    "diamond",
    "lshape",
    "halfdisc",
    "xcross",
)

# (name, hue in degrees). Hues are 36 degrees apart; each object's hue is jittered
# by at most +-10 degrees, so families never overlap.
COLOUR_FAMILIES: tuple[tuple[str, float], ...] = (
    ("red", 0.0),
    ("orange", 36.0),
    ("yellow", 72.0),
    ("lime", 108.0),
    ("green", 144.0),
    ("teal", 180.0),
    ("azure", 216.0),
    ("violet", 252.0),
    ("purple", 288.0),
    ("pink", 324.0),
)

MAX_CLASSES = len(SHAPE_NAMES) * len(COLOUR_FAMILIES)

# Background palette (linear RGB in [0, 1]).
_SKY_TOP = np.array([0.18, 0.32, 0.78], np.float32)
_SKY_HORIZON = np.array([0.62, 0.74, 0.92], np.float32)
_GROUND_HORIZON = np.array([0.50, 0.52, 0.30], np.float32)
_GROUND_BOTTOM = np.array([0.22, 0.16, 0.08], np.float32)
# Horizontal ramp: warmer on the right, cooler on the left.
_RAMP = np.array([0.42, -0.38, 0.02], np.float32)

_SEED_TAGS = {"train": 1, "test": 2, "val": 3}
_WRITE_BLOCK = 256  # images rendered at a time by write_imagefolder


# --------------------------------------------------------------------------- classes
def class_shape_family(label: int) -> tuple[int, int]:
    """(shape index, colour-family index) of class ``label``.

    The map is injective for ``label < MAX_CLASSES`` (120): shape = c mod 12 and
    family = (c + c // 12) mod 10, and 13k mod 10 runs over all residues for
    k = 0..9. For labels < 10 every class has its own shape *and* its own colour.
    """
    if not 0 <= label < MAX_CLASSES:
        raise ValueError(f"class {label} out of range [0, {MAX_CLASSES})")
    n_shapes, n_fam = len(SHAPE_NAMES), len(COLOUR_FAMILIES)
    return label % n_shapes, (label + label // n_shapes) % n_fam


def class_names(num_classes: int) -> list[str]:
    """Human-readable class names, e.g. ``'red_disc'``."""
    _check_num_classes(num_classes)
    names = []
    for c in range(num_classes):
        s, f = class_shape_family(c)
        names.append(f"{COLOUR_FAMILIES[f][0]}_{SHAPE_NAMES[s]}")
    return names


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"num_classes must be in [1, {MAX_CLASSES}] "
            f"({len(SHAPE_NAMES)} shapes x {len(COLOUR_FAMILIES)} colour families); got {num_classes}"
        )


def derive_seed(seed: int, tag: str) -> int:
    """A seed for split ``tag`` ('train'/'test'/'val') derived from ``seed``."""
    ss = np.random.SeedSequence([int(seed), _SEED_TAGS[tag], 0x5EED])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


# --------------------------------------------------------------------------- shapes
def shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of base shape ``shape`` in object coordinates.

    ``u`` (right) and ``v`` (down) are in units of the object's half-size, so the
    shape lives in the square [-1, 1]^2.
    """
    au, av = np.abs(u), np.abs(v)
    box = np.maximum(au, av)
    name = SHAPE_NAMES[shape]
    if name == "disc":
        return u * u + v * v <= 1.0
    if name == "square":
        return box <= 0.8
    if name == "triangle":  # apex up
        return (v >= -0.85) & (v <= 0.85) & (au <= (v + 0.85) * (0.95 / 1.7))
    if name == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if name == "hstripes":
        return (box <= 0.9) & (np.floor((v + 0.9) * (5 / 1.8)).astype(np.int32) % 2 == 0)
    if name == "vstripes":
        return (box <= 0.9) & (np.floor((u + 0.9) * (5 / 1.8)).astype(np.int32) % 2 == 0)
    if name == "checker":
        iu = np.floor((u + 0.9) * (4 / 1.8)).astype(np.int32)
        iv = np.floor((v + 0.9) * (4 / 1.8)).astype(np.int32)
        return (box <= 0.9) & ((iu + iv) % 2 == 0)
    if name == "diamond":
        return au + av <= 1.0
    if name == "lshape":
        return (box <= 0.85) & ((u <= -0.25) | (v >= 0.25))
    if name == "halfdisc":  # upper half of a disc
        return (u * u + (v - 0.4) ** 2 <= 1.0) & (v <= 0.4)
    if name == "xcross":
        return (np.abs(au - av) <= 0.32) & (box <= 0.9)
    raise AssertionError(name)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; h in [0, 1). Returns (..., 3) float32."""
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    choices_r = [v, q, p, p, t, v]
    choices_g = [t, v, v, q, p, p]
    choices_b = [p, p, t, v, v, q]
    r = np.choose(i, choices_r)
    g = np.choose(i, choices_g)
    b = np.choose(i, choices_b)
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, size: int, grid: int) -> np.ndarray:
    """(n, size, size) float32 value noise in about [-1, 1], bilinear from a grid."""
    g = rng.uniform(-1.0, 1.0, size=(n, grid, grid)).astype(np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * (grid - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, grid - 2)
    w = pos - lo
    interp = np.zeros((size, grid), np.float32)
    interp[np.arange(size), lo] = 1.0 - w
    interp[np.arange(size), lo + 1] += w
    return np.einsum("yi,nij,xj->nyx", interp, g, interp, optimize=True)


# --------------------------------------------------------------------------- render
def render_scenes(
    num_images: int, size: int = 32, num_classes: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``num_images`` RGB scenes of ``size`` x ``size`` pixels.

    Returns ``(images, labels)``: uint8 ``(N, size, size, 3)`` and int64 ``(N,)``.
    Labels are balanced (``i % num_classes``, shuffled). The same arguments always
    give identical bytes.
    """
    num_images, size = int(num_images), int(size)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0; got {num_images}")
    if size < 8:
        raise ValueError(f"size must be >= 8; got {size}")
    _check_num_classes(num_classes)

    rng = np.random.default_rng(int(seed))
    labels = rng.permutation(np.arange(num_images, dtype=np.int64) % num_classes)
    return _render(labels, size, rng), labels


def _render(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one scene per entry of ``labels`` (the main objects' classes)."""
    n = int(labels.shape[0])
    # ---- per-image parameters, all drawn up front -------------------------
    horizon = rng.uniform(0.38, 0.62, n).astype(np.float32)
    bright = rng.uniform(0.88, 1.12, n).astype(np.float32)
    tint = rng.uniform(-0.05, 0.05, (n, 3)).astype(np.float32)
    ramp_gain = rng.uniform(0.8, 1.2, n).astype(np.float32)

    n_obj = rng.integers(1, 4, n)  # 1..3 objects; slot 0 is the main object
    n_shapes, n_fam = len(SHAPE_NAMES), len(COLOUR_FAMILIES)
    fam_hues = np.array([h for _, h in COLOUR_FAMILIES], np.float32) / 360.0

    slots = []  # drawn in list order; the main object goes last
    for k in range(3):
        if k == 0:
            sf = np.array([class_shape_family(int(c)) for c in labels], np.int64).reshape(n, 2)
            shape, fam = sf[:, 0], sf[:, 1]
            half = rng.uniform(0.15, 0.30, n)  # object side 30-60% of the image
        else:
            shape = rng.integers(0, n_shapes, n)
            fam = rng.integers(0, n_fam, n)
            half = rng.uniform(0.06, 0.125, n)  # side 12-25% of the image
        cx = rng.uniform(half, 1.0 - half)
        cy = rng.uniform(half, 1.0 - half)
        hue = fam_hues[fam] + rng.uniform(-10.0, 10.0, n).astype(np.float32) / 360.0
        sat = rng.uniform(0.6, 0.95, n).astype(np.float32)
        val = rng.uniform(0.6, 1.0, n).astype(np.float32)
        colour = _hsv_to_rgb(hue, sat, val)
        present = k < n_obj
        slots.append((shape, half.astype(np.float32), cx.astype(np.float32),
                      cy.astype(np.float32), colour, present))
    slots = slots[1:] + slots[:1]

    images = np.empty((n, size, size, 3), np.uint8)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy = coords[:, None]  # (S, 1)
    xx = coords[None, :]  # (1, S)
    chunk = max(1, (1 << 20) // (size * size))

    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        m = sl.stop - sl.start

        # ---- background -----------------------------------------------------
        h = horizon[sl, None, None]  # (m, 1, 1)
        y = yy[None]  # (1, S, 1)
        sky_t = np.clip(y / h, 0.0, 1.0)[..., None]
        ground_t = np.clip((y - h) / (1.0 - h), 0.0, 1.0)[..., None]
        sky = _SKY_TOP + (_SKY_HORIZON - _SKY_TOP) * sky_t
        ground = _GROUND_HORIZON + (_GROUND_BOTTOM - _GROUND_HORIZON) * ground_t
        # soft one-pixel transition at the horizon
        a = np.clip((y - h) * size + 0.5, 0.0, 1.0)[..., None]
        img = sky * (1.0 - a) + ground * a  # (m, S, 1, 3)
        img = np.broadcast_to(img, (m, size, size, 3)).copy()
        img += (xx[None, :, :, None] - 0.5) * _RAMP * ramp_gain[sl, None, None, None]
        # texture: smooth clouds in the sky, grainier ground, a little pixel noise
        clouds = _smooth_noise(rng, m, size, 5)[..., None]
        grain = _smooth_noise(rng, m, size, max(4, size // 3))[..., None]
        img += (0.05 * clouds) * (1.0 - a) + (0.05 * grain) * a
        img += rng.normal(0.0, 0.012, (m, size, size, 1)).astype(np.float32)

        # ---- objects ----------------------------------------------------------
        for shape, half, cx, cy, colour, present in slots:
            sh = shape[sl]
            for s in np.unique(sh[present[sl]]):
                idx = np.nonzero((sh == s) & present[sl])[0]
                gi = idx + sl.start
                r = half[gi][:, None, None]
                u = (xx[None] - cx[gi][:, None, None]) / r
                v = (yy[None] - cy[gi][:, None, None]) / r
                mask = shape_mask(int(s), u, v)  # (k, S, S)
                shade = 1.0 - 0.12 * np.clip(v, -1.0, 1.0)  # lit from above
                col = colour[gi][:, None, None, :] * shade[..., None]
                sub = img[idx]
                img[idx] = np.where(mask[..., None], col, sub)

        # ---- per-image colour jitter and quantisation -------------------------
        img = img * bright[sl, None, None, None] + tint[sl, None, None, :]
        images[sl] = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)

    return images


# --------------------------------------------------------------------------- writers
def _cifar_batch(images: np.ndarray, labels: np.ndarray, split: str) -> dict:
    n = images.shape[0]
    # channel-major rows: R plane, then G, then B; each plane row-major.
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(n, -1), dtype=np.uint8)
    fine = [int(x) for x in labels]
    return {
        "batch_label": f"{'training' if split == 'train' else 'testing'} batch 1 of 1",
        "filenames": [f"synthetic_{split}_{i:06d}.png" for i in range(n)],
        "fine_labels": fine,
        "coarse_labels": [c // 5 for c in fine],
        "data": data,
    }


def write_cifar100(
    root, num_train: int, num_test: int, size: int = 32, num_classes: int = 100, seed: int = 0
) -> Path:
    """Write a synthetic data set in CIFAR-100's python on-disk format.

    Creates ``root/cifar-100-python/{train,test,meta}``: pickled dicts (protocol 2)
    with ``data`` (uint8, N x 3*size*size, channel-major: the R plane, then G, then
    B, each row-major), ``fine_labels``, ``coarse_labels`` (fine // 5),
    ``filenames`` and ``batch_label``; ``meta`` holds ``fine_label_names`` and
    ``coarse_label_names``. With ``size == 32`` this is byte-for-byte the official
    layout (N x 3072); other sizes are an extension of the format with the same
    channel-major order. Train and test are rendered from different seeds derived
    from ``seed``. Returns ``root``.
    """
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = class_names(num_classes)
    n_coarse = (num_classes + 4) // 5
    meta = {
        "fine_label_names": fine_names,
        "coarse_label_names": [f"group_{i:02d}" for i in range(n_coarse)],
    }
    for split, count in (("train", num_train), ("test", num_test)):
        images, labels = render_scenes(count, size, num_classes, derive_seed(seed, split))
        batch = _cifar_batch(images, labels, split)
        atomic_write_bytes(folder / split, pickle.dumps(batch, protocol=2))
    atomic_write_bytes(folder / "meta", pickle.dumps(meta, protocol=2))
    return root


def imagefolder_class_dirs(num_classes: int) -> list[str]:
    """Folder names ``'000_red_disc'`` ...; they sort in label order."""
    return [f"{i:03d}_{name}" for i, name in enumerate(class_names(num_classes))]


def write_imagefolder(
    root, num_train: int, num_val: int, size: int, num_classes: int, seed: int = 0
) -> Path:
    """Write ``root/{train,val}/<class>/<idx>.png`` (the ImageNet ImageFolder layout).

    Class folders are named ``'<index:03d>_<name>'`` so that torchvision's sorted
    class order equals the label order. Returns ``root``.
    """
    from PIL import Image

    root = Path(root)
    dirs = imagefolder_class_dirs(num_classes)
    for split, count in (("train", num_train), ("val", num_val)):
        for d in dirs:
            (root / split / d).mkdir(parents=True, exist_ok=True)
        # Render in fixed-size blocks (one derived seed each) to bound memory at
        # large image sizes; labels are balanced over the whole split.
        split_seed = derive_seed(seed, split)
        rng = np.random.default_rng(split_seed)
        labels = rng.permutation(np.arange(int(count), dtype=np.int64) % num_classes)
        for b, start in enumerate(range(0, int(count), _WRITE_BLOCK)):
            block = labels[start:start + _WRITE_BLOCK]
            block_rng = np.random.default_rng([split_seed, b])
            images = _render(block, int(size), block_rng)
            for j in range(block.shape[0]):
                i = start + j
                Image.fromarray(images[j]).save(
                    root / split / dirs[int(labels[i])] / f"{i:06d}.png")
    return root


# --------------------------------------------------------------------------- caches
def _ensure(cache_root, name: str, writer) -> Path:
    cache_root = Path(cache_root)
    final = cache_root / name
    if final.is_dir():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".tmp-{name}-"))
    try:
        writer(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real error
                raise
            # another process finished first: keep theirs
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_embedded_cifar100(
    cache_root, num_train: int, num_test: int, num_classes: int = 100, seed: int = 0
) -> Path:
    """Generate (once) a synthetic 32x32 CIFAR-100-format data set under ``cache_root``.

    Returns the root to pass to :class:`tasks.data.cifar.CIFAR100Folder` (it holds
    ``cifar-100-python/``). The folder name encodes every parameter; it is written
    to a temporary folder and renamed into place, so concurrent callers are safe.
    """
    _check_num_classes(num_classes)
    name = (f"synthetic-cifar100-v{GENERATOR_VERSION}-train{int(num_train)}-test{int(num_test)}"
            f"-c{int(num_classes)}-s{int(seed)}")
    return _ensure(cache_root, name,
                   lambda d: write_cifar100(d, num_train, num_test, 32, num_classes, seed))


def ensure_embedded_imagefolder(
    cache_root, num_train: int, num_val: int, size: int, num_classes: int, seed: int = 0
) -> Path:
    """Generate (once) a synthetic ImageFolder data set under ``cache_root``.

    Returns the root holding ``train/`` and ``val/`` (pass it to
    :func:`tasks.data.imagefolder.build_imagefolder`).
    """
    _check_num_classes(num_classes)
    name = (f"synthetic-imagefolder-v{GENERATOR_VERSION}-train{int(num_train)}-val{int(num_val)}"
            f"-px{int(size)}-c{int(num_classes)}-s{int(seed)}")
    return _ensure(cache_root, name,
                   lambda d: write_imagefolder(d, num_train, num_val, size, num_classes, seed))
