"""Deterministic detection scenes written in COCO 2017's on-disk layout, with the
variety real COCO has.

The scenes are those of :mod:`tasks.data.synthetic` with every object annotated: 1 to
``max_objects`` objects per image, each of a class drawn from the first
``num_classes`` classes, each at least 40 % visible (:data:`MIN_VISIBLE`), its mask and
box those of its *visible* pixels. Image sizes vary; some images are empty, some
grayscale, some hold a crowd region (``iscrowd`` 1); masks come as polygons
(:func:`mask_polygons`), compressed RLE or uncompressed RLE (:func:`uncompressed_rle`);
category ids are non-contiguous (:func:`category_id`). Every annotation's segmentation
decodes (pycocotools) to exactly its visible pixels.

- :func:`render_detection_scenes`: the images and, per image, its
  ``(label, mask, iscrowd)`` instances, in memory;
- :func:`write_coco`: writes the layout below under ``root`` and returns it;
- :func:`ensure_embedded_coco`: generates that layout once, atomically, under
  ``cache_root`` and returns its root.

Written layout (what mmdet's ``CocoDataset`` and ``CocoMetric`` read, and what
:func:`tasks.data.coco.check_coco_root` checks)::

    ROOT/train2017/<image id:012d>.jpg
    ROOT/val2017/<image id:012d>.jpg
    ROOT/annotations/instances_train2017.json
    ROOT/annotations/instances_val2017.json

Details: docs/reference/generated-data.md.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write_bytes

from .synthetic import (
    _GROUND_BOTTOM,
    _GROUND_HORIZON,
    _RAMP,
    _SKY_HORIZON,
    _SKY_TOP,
    COLOUR_FAMILIES,
    SHAPE_NAMES,
    _check_num_classes,
    _ensure,
    _hsv_to_rgb,
    _smooth_noise,
    class_names,
    class_shape_family,
    derive_seed,
    shape_mask,
)

__all__ = ["render_detection_scenes", "write_coco", "ensure_embedded_coco", "category_id",
           "mask_polygons", "uncompressed_rle", "DETECTION_GENERATOR_VERSION"]

# 2: varied sizes, empty images, grayscale JPEGs, polygons / RLE / crowd regions.
DETECTION_GENERATOR_VERSION = 2
MIN_VISIBLE = 0.4  # an object must keep this fraction of its pixels visible


def category_id(label: int) -> int:
    """The (non-contiguous) COCO category id of class ``label``."""
    return 3 * int(label) + 2


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One landscape background (float32 (H, W, 3) in about [0, 1])."""
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :, None]
    side = max(height, width)
    h = np.float32(rng.uniform(0.38, 0.62))
    sky_t = np.clip(y / h, 0.0, 1.0)
    ground_t = np.clip((y - h) / (1.0 - h), 0.0, 1.0)
    sky = _SKY_TOP + (_SKY_HORIZON - _SKY_TOP) * sky_t
    ground = _GROUND_HORIZON + (_GROUND_BOTTOM - _GROUND_HORIZON) * ground_t
    a = np.clip((y - h) * height + 0.5, 0.0, 1.0)
    img = np.broadcast_to(sky * (1.0 - a) + ground * a, (height, width, 3)).copy()
    img += (x - 0.5) * _RAMP * np.float32(rng.uniform(0.8, 1.2))
    clouds = _smooth_noise(rng, 1, side, 5)[0, :height, :width, None]
    grain = _smooth_noise(rng, 1, side, max(4, side // 3))[0, :height, :width, None]
    img += (0.05 * clouds) * (1.0 - a) + (0.05 * grain) * a
    img += rng.normal(0.0, 0.012, (height, width, 1)).astype(np.float32)
    return img


def _object_colour(rng, fam: int, fam_hues) -> np.ndarray:
    return _hsv_to_rgb(np.float32(fam_hues[fam] + rng.uniform(-10, 10) / 360.0),
                       np.float32(rng.uniform(0.6, 0.95)), np.float32(rng.uniform(0.6, 1.0)))


def render_detection_scenes(num_images: int, size: int = 128, num_classes: int = 10,
                            seed: int = 0, max_objects: int = 4,
                            half_range: tuple[float, float] = (0.08, 0.22),
                            side_range: tuple[float, float] = (0.75, 1.25),
                            empty_fraction: float = 0.1, crowd_fraction: float = 0.1,
                            gray_fraction: float = 0.05):
    """Render scenes and their instances.

    Returns ``(images, instances)``: a list of uint8 arrays, ``(H, W, 3)`` for colour
    images and ``(H, W)`` for grayscale ones, and, per image, a list of
    ``(label, mask, iscrowd)`` with ``mask`` a bool ``(H, W)`` array of the visible
    pixels. Object sizes (``half_range``) are fractions of the image's shorter side.
    The same arguments always give identical output.
    """
    _check_num_classes(num_classes)
    lo, hi = side_range
    if not 0 < lo <= hi:
        raise ValueError(f"side_range must be 0 < low <= high; got {side_range}")
    rng = np.random.default_rng(int(seed))
    fam_hues = np.array([h for _, h in COLOUR_FAMILIES], np.float32) / 360.0
    images, instances = [], []
    for _ in range(num_images):
        height, width = (max(8, int(round(size * rng.uniform(lo, hi)))) for _ in range(2))
        short = min(height, width)
        xx = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
        yy = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
        img = _background(rng, height, width)
        drawn = []  # [label, full mask, visible mask, iscrowd]
        empty = rng.random() < empty_fraction
        if not empty and rng.random() < crowd_fraction:
            # a crowd: several small objects of one class, one region; drawn first, so
            # that the objects in front of it may occlude it
            label = int(rng.integers(0, num_classes))
            shape, fam = class_shape_family(label)
            radius = 0.18 * short
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            union = np.zeros((height, width), bool)
            for _ in range(int(rng.integers(4, 8))):
                half = float(rng.uniform(0.04, 0.07)) * short
                ox, oy = cx + rng.uniform(-radius, radius) * 0.7, cy + rng.uniform(-radius, radius) * 0.7
                colour = _object_colour(rng, fam, fam_hues)
                m = shape_mask(shape, (xx - ox) / half, (yy - oy) / half)
                img = np.where(m[..., None], colour, img)
                union |= m
            if union.sum() >= 4:
                drawn.append([label, union, union.copy(), 1])
        for _ in range(0 if empty else int(rng.integers(1, max_objects + 1))):
            label = int(rng.integers(0, num_classes))
            shape, fam = class_shape_family(label)
            half = float(rng.uniform(*half_range)) * short
            cx, cy = rng.uniform(half, width - half), rng.uniform(half, height - half)
            colour = _object_colour(rng, fam, fam_hues)
            u, v = (xx - cx) / half, (yy - cy) / half
            mask = shape_mask(shape, u, v)
            if mask.sum() < 4:
                continue
            # drawing this object must leave every earlier one visible enough
            if any((vis & ~mask).sum() < MIN_VISIBLE * full.sum() for _, full, vis, _ in drawn):
                continue
            shade = 1.0 - 0.12 * np.clip(v, -1.0, 1.0)
            img = np.where(mask[..., None], colour * shade[..., None], img)
            for entry in drawn:
                entry[2] = entry[2] & ~mask
            drawn.append([label, mask, mask.copy(), 0])
        img = img * np.float32(rng.uniform(0.88, 1.12)) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        rgb = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
        if rng.random() < gray_fraction:
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).convert("L"))
        images.append(rgb)
        instances.append([(label, vis, crowd) for label, _, vis, crowd in drawn if vis.any()])
    return images, instances


# ------------------------------------------------------------------ mask encodings
def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixel order,
    starting with a (possibly empty) run of zeros; ``size`` is [height, width]."""
    mask = np.asarray(mask, bool)
    flat = mask.ravel(order="F")
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def mask_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """Polygons (one per connected piece) that pycocotools rasterises to exactly
    ``mask``, or None when no polygon list can (a piece with a hole).

    The outlines are traced on the mask upsampled 2x, so their vertices sit a quarter
    pixel inside the pixel edges: every boundary pixel's centre is inside the polygon
    and every outside pixel's centre outside, which is what the rasteriser tests.
    """
    import cv2
    from pycocotools import mask as mask_utils

    mask = np.asarray(mask, bool)
    up = np.repeat(np.repeat(mask.astype(np.uint8), 2, 0), 2, 1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0][:, 3] >= 0).any():  # nothing, or a hole
        return None
    polygons = [((c.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0).ravel().tolist() for c in contours]
    if any(len(p) < 6 for p in polygons):
        return None
    h, w = mask.shape
    drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)
    return polygons if np.array_equal(drawn, mask) else None


def _compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _annotation(mask: np.ndarray, label: int, ann_id: int, image_id: int, iscrowd: int,
                as_rle: bool) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if iscrowd:
        segmentation = uncompressed_rle(mask)
    else:
        segmentation = None if as_rle else mask_polygons(mask)
        if segmentation is None:
            segmentation = _compressed_rle(mask)
    return dict(id=ann_id, image_id=image_id, category_id=category_id(label),
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                area=float(mask.sum()), segmentation=segmentation, iscrowd=int(iscrowd))


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def write_coco(root, num_train: int, num_val: int, size: int = 128, num_classes: int = 10,
               seed: int = 0, max_objects: int = 4, side_range: tuple[float, float] = (0.75, 1.25),
               empty_fraction: float = 0.1, crowd_fraction: float = 0.1,
               gray_fraction: float = 0.05, rle_fraction: float = 0.2,
               jpeg_quality: int = 90) -> Path:
    """Write the COCO 2017 layout (see module docstring) under ``root``; returns it."""
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    names = class_names(num_classes)
    categories = [dict(id=category_id(c), name=names[c],
                       supercategory=SHAPE_NAMES[class_shape_family(c)[0]])
                  for c in range(num_classes)]
    next_image, next_ann = 1, 1
    for split, count in (("train", num_train), ("val", num_val)):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        split_seed = derive_seed(seed, split)
        images, instances = render_detection_scenes(
            count, size, num_classes, split_seed, max_objects, side_range=side_range,
            empty_fraction=empty_fraction, crowd_fraction=crowd_fraction,
            gray_fraction=gray_fraction)
        fmt_rng = np.random.default_rng([split_seed, 7])  # which objects get compressed RLE
        image_entries, anns = [], []
        for img, objs in zip(images, instances):
            file_name = f"{next_image:012d}.jpg"
            (folder / file_name).write_bytes(_jpeg(img, jpeg_quality))
            image_entries.append(dict(id=next_image, file_name=file_name,
                                      width=int(img.shape[1]), height=int(img.shape[0])))
            for label, mask, crowd in objs:
                as_rle = bool(fmt_rng.random() < rle_fraction)
                anns.append(_annotation(mask, label, next_ann, next_image, crowd, as_rle))
                next_ann += 1
            next_image += 1
        blob = dict(info=dict(description=f"part-bench synthetic detection scenes ({split})",
                              version=str(DETECTION_GENERATOR_VERSION)),
                    licenses=[], images=image_entries, annotations=anns, categories=categories)
        atomic_write_bytes(root / "annotations" / f"instances_{split}2017.json",
                            json.dumps(blob).encode())
    return root


def ensure_embedded_coco(cache_root, num_train: int, num_val: int, size: int = 128,
                         num_classes: int = 10, seed: int = 0, max_objects: int = 4,
                         side_range: tuple[float, float] = (0.75, 1.25),
                         empty_fraction: float = 0.1, crowd_fraction: float = 0.1,
                         gray_fraction: float = 0.05, rle_fraction: float = 0.2,
                         jpeg_quality: int = 90) -> Path:
    """Generate (once, atomically) the embedded COCO-layout data set; returns its root."""
    _check_num_classes(num_classes)
    variety = dict(side_range=[float(x) for x in side_range], empty=float(empty_fraction),
                   crowd=float(crowd_fraction), gray=float(gray_fraction), rle=float(rle_fraction),
                   q=int(jpeg_quality))
    digest = hashlib.sha1(json.dumps(variety, sort_keys=True).encode()).hexdigest()[:8]
    name = (f"synthetic-coco-v{DETECTION_GENERATOR_VERSION}-train{int(num_train)}-val{int(num_val)}"
            f"-px{int(size)}-c{int(num_classes)}-o{int(max_objects)}-s{int(seed)}-{digest}")
    return _ensure(cache_root, name, lambda d: write_coco(
        d, num_train, num_val, size, num_classes, seed, max_objects, side_range=side_range,
        empty_fraction=empty_fraction, crowd_fraction=crowd_fraction, gray_fraction=gray_fraction,
        rle_fraction=rle_fraction, jpeg_quality=jpeg_quality))
