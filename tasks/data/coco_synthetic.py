"""Deterministic detection scenes written in COCO 2017's on-disk layout.

The scenes are those of :mod:`tasks.data.synthetic` (the same landscape background,
the same shapes and colour families, drawn by the same helpers) with every object
annotated: 1 to ``max_objects`` objects per image, each of a class drawn from the
first ``num_classes`` classes. Later objects may occlude earlier ones, but an
object that would leave an earlier one less than 40 % visible is not drawn, so every
annotation describes a clearly visible object, and masks and boxes are those of the
*visible* pixels.

Written layout (what mmdet's ``CocoDataset`` and ``CocoMetric`` read)::

    ROOT/train2017/<image id:012d>.png
    ROOT/val2017/<image id:012d>.png
    ROOT/annotations/instances_train2017.json
    ROOT/annotations/instances_val2017.json

Annotations carry ``bbox`` ([x, y, w, h], pixels), ``area`` (mask pixels),
``segmentation`` (compressed RLE, as COCO stores crowd masks; pycocotools and
mmdet decode it like polygons), ``iscrowd`` 0, and ``categories`` with
non-contiguous ids (``3 * c + 2``) so that no reader can get away with assuming
ids are label indices.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .synthetic import (
    _GROUND_BOTTOM,
    _GROUND_HORIZON,
    _RAMP,
    _SKY_HORIZON,
    _SKY_TOP,
    COLOUR_FAMILIES,
    SHAPE_NAMES,
    _atomic_write_bytes,
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
           "COCO_LAYOUT", "DETECTION_GENERATOR_VERSION"]

DETECTION_GENERATOR_VERSION = 1
MIN_VISIBLE = 0.4  # an object must keep this fraction of its pixels visible

COCO_LAYOUT = ("train2017/, val2017/, annotations/instances_train2017.json, "
               "annotations/instances_val2017.json")


def category_id(label: int) -> int:
    """The (non-contiguous) COCO category id of class ``label``."""
    return 3 * int(label) + 2


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """One landscape background (float32 (S, S, 3) in about [0, 1])."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y = coords[:, None, None]
    x = coords[None, :, None]
    h = np.float32(rng.uniform(0.38, 0.62))
    sky_t = np.clip(y / h, 0.0, 1.0)
    ground_t = np.clip((y - h) / (1.0 - h), 0.0, 1.0)
    sky = _SKY_TOP + (_SKY_HORIZON - _SKY_TOP) * sky_t
    ground = _GROUND_HORIZON + (_GROUND_BOTTOM - _GROUND_HORIZON) * ground_t
    a = np.clip((y - h) * size + 0.5, 0.0, 1.0)
    img = np.broadcast_to(sky * (1.0 - a) + ground * a, (size, size, 3)).copy()
    img += (x - 0.5) * _RAMP * np.float32(rng.uniform(0.8, 1.2))
    clouds = _smooth_noise(rng, 1, size, 5)[0, :, :, None]
    grain = _smooth_noise(rng, 1, size, max(4, size // 3))[0, :, :, None]
    img += (0.05 * clouds) * (1.0 - a) + (0.05 * grain) * a
    img += rng.normal(0.0, 0.012, (size, size, 1)).astype(np.float32)
    return img


def render_detection_scenes(num_images: int, size: int = 128, num_classes: int = 10,
                            seed: int = 0, max_objects: int = 4,
                            half_range: tuple[float, float] = (0.08, 0.22)):
    """Render scenes and their instances.

    Returns ``(images, instances)``: uint8 ``(N, S, S, 3)`` and, per image, a list of
    ``(label, mask)`` with ``mask`` a bool ``(S, S)`` array of the visible pixels.
    The same arguments always give identical output.
    """
    _check_num_classes(num_classes)
    rng = np.random.default_rng(int(seed))
    fam_hues = np.array([h for _, h in COLOUR_FAMILIES], np.float32) / 360.0
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = coords[:, None], coords[None, :]
    images = np.empty((num_images, size, size, 3), np.uint8)
    instances = []
    for i in range(num_images):
        img = _background(rng, size)
        drawn = []  # [label, full mask, visible mask]
        for _ in range(int(rng.integers(1, max_objects + 1))):
            label = int(rng.integers(0, num_classes))
            shape, fam = class_shape_family(label)
            half = float(rng.uniform(*half_range))
            cx, cy = rng.uniform(half, 1.0 - half, 2)
            colour = _hsv_to_rgb(np.float32(fam_hues[fam] + rng.uniform(-10, 10) / 360.0),
                                 np.float32(rng.uniform(0.6, 0.95)), np.float32(rng.uniform(0.6, 1.0)))
            u, v = (xx - cx) / half, (yy - cy) / half
            mask = shape_mask(shape, u, v)
            if mask.sum() < 4:
                continue
            # drawing this object must leave every earlier one visible enough
            if any((vis & ~mask).sum() < MIN_VISIBLE * full.sum() for _, full, vis in drawn):
                continue
            shade = 1.0 - 0.12 * np.clip(v, -1.0, 1.0)
            img = np.where(mask[..., None], colour * shade[..., None], img)
            for entry in drawn:
                entry[2] = entry[2] & ~mask
            drawn.append([label, mask, mask.copy()])
        img = img * np.float32(rng.uniform(0.88, 1.12)) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        images[i] = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
        instances.append([(label, vis) for label, _, vis in drawn])
    return images, instances


def _annotation(mask: np.ndarray, label: int, ann_id: int, image_id: int) -> dict:
    from pycocotools import mask as mask_utils

    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return dict(id=ann_id, image_id=image_id, category_id=category_id(label),
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                area=float(mask.sum()), segmentation=rle, iscrowd=0)


def write_coco(root, num_train: int, num_val: int, size: int = 128, num_classes: int = 10,
               seed: int = 0, max_objects: int = 4) -> Path:
    """Write the COCO 2017 layout (see module docstring) under ``root``; returns it."""
    from PIL import Image

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
        images, instances = render_detection_scenes(count, size, num_classes,
                                                    derive_seed(seed, split), max_objects)
        image_entries, anns = [], []
        for img, objs in zip(images, instances):
            file_name = f"{next_image:012d}.png"
            Image.fromarray(img).save(folder / file_name)
            image_entries.append(dict(id=next_image, file_name=file_name, width=size, height=size))
            for label, mask in objs:
                anns.append(_annotation(mask, label, next_ann, next_image))
                next_ann += 1
            next_image += 1
        blob = dict(info=dict(description=f"part-bench synthetic detection scenes ({split})",
                              version=str(DETECTION_GENERATOR_VERSION)),
                    licenses=[], images=image_entries, annotations=anns, categories=categories)
        _atomic_write_bytes(root / "annotations" / f"instances_{split}2017.json",
                            json.dumps(blob).encode())
    return root


def ensure_embedded_coco(cache_root, num_train: int, num_val: int, size: int = 128,
                         num_classes: int = 10, seed: int = 0, max_objects: int = 4) -> Path:
    """Generate (once, atomically) the embedded COCO-layout data set; returns its root."""
    _check_num_classes(num_classes)
    name = (f"synthetic-coco-v{DETECTION_GENERATOR_VERSION}-train{int(num_train)}-val{int(num_val)}"
            f"-px{int(size)}-c{int(num_classes)}-o{int(max_objects)}-s{int(seed)}")
    return _ensure(cache_root, name, lambda d: write_coco(d, num_train, num_val, size, num_classes,
                                                          seed, max_objects))
