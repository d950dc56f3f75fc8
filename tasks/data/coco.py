"""COCO 2017 on disk: the layout check and the annotation-file check (no mmdet here).

What the detection task reads, from a real COCO root or from the embedded scenes
(:mod:`tasks.data.coco_synthetic` writes the same layout), and what it checks before any
training so that a wrong file fails with one line naming it:

- :func:`check_coco_root`: the folders and annotation files of :data:`COCO_LAYOUT`;
- :func:`check_coco_annotations`: one annotation file against what mmdet's reader needs
  (categories, image sizes and files, boxes, the three mask encodings);
- :func:`image_damage`: what is wrong with an image file's bytes (a truncated JPEG or
  PNG, an empty file); the pipelines load images through
  :class:`tasks.data.coco_pipeline.CheckedLoadImageFromFile`, which stops the run naming a damaged
  file when it is read (as the classification data sets do: a benchmark number is over
  the data set as published, and a skipped image would silently change it);
- :func:`coco_classes`: category names in the file's order (labels index this list);
- :func:`count_annotated_images`: the images with at least one annotation (those
  mmdet's ``filter_empty_gt`` keeps for training).

mmdet's pipelines and reader are :mod:`tasks.data.coco_pipeline`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine.errors import DataError

__all__ = ["COCO_LAYOUT", "check_coco_root", "coco_classes", "check_coco_annotations",
           "image_damage", "count_annotated_images"]

COCO_LAYOUT = ("train2017/, val2017/, annotations/instances_train2017.json, "
               "annotations/instances_val2017.json")


def check_coco_root(root: Path) -> None:
    """One clear DataError naming the expected layout and the first wrong path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"COCO data root {root} does not exist; expected a folder with {COCO_LAYOUT}")
    for rel in ("train2017", "val2017"):
        if not (root / rel).is_dir():
            raise DataError(f"COCO data root {root} has no {rel}/; expected {COCO_LAYOUT}")
    for split in ("train", "val"):
        ann = root / "annotations" / f"instances_{split}2017.json"
        if not ann.is_file():
            raise DataError(f"COCO data root {root} has no {ann.relative_to(root)}; expected {COCO_LAYOUT}")


def coco_classes(ann_file: Path) -> tuple[str, ...]:
    """Category names in the annotation file's order (mmdet maps ids to labels in
    that order; the ids themselves may be anything)."""
    try:
        with open(ann_file) as f:
            cats = json.load(f)["categories"]
        return tuple(c["name"] for c in cats)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read categories from {ann_file}: {type(exc).__name__}: {exc}") from None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _segmentation_problem(seg, height: int, width: int) -> str | None:
    """What is wrong with one annotation's ``segmentation`` for mmdet's reader, or None.
    Accepted: polygons (a list of ``[x0, y0, x1, y1, ...]`` lists), compressed RLE
    (``counts`` a string) and uncompressed RLE (``counts`` a list of run lengths), RLE
    with ``size`` equal to the image's [height, width]."""
    if isinstance(seg, list):
        if not seg:
            return "is empty"
        # the first coordinate stands for the rest: checking all of COCO's took 16 s
        if not all(isinstance(poly, list) and (not poly or _is_number(poly[0])) for poly in seg):
            return "is a list but not of polygons [[x0, y0, x1, y1, ...], ...]"
        return None
    if isinstance(seg, dict):
        counts, size = seg.get("counts"), seg.get("size")
        run_lengths = isinstance(counts, list) and all(isinstance(c, int) for c in counts)
        if not (isinstance(counts, str) or run_lengths):
            return "is a dict without RLE counts (a string, or a list of run lengths)"
        if list(size or []) != [height, width]:
            return f"is RLE of size {size}, but its image is [height, width] = [{height}, {width}]"
        return None
    return "is missing" if seg is None else f"is a {type(seg).__name__}"


def check_coco_annotations(root: Path, split: str, classes=None) -> tuple[str, ...]:
    """Check ``annotations/instances_{split}2017.json`` against what the detector's
    reader needs, before any training; returns the category names (:func:`coco_classes`).

    One DataError names the file and the first bad entry: unreadable JSON, other
    categories than ``classes`` (when given: labels are indices into that list), no
    ``images`` / ``annotations`` / ``categories`` lists, an image without a positive
    width and height or whose file is not in ``{split}2017/``, an annotation whose
    image or category is not listed, whose ``bbox`` is not [x, y, w, h], or whose
    ``segmentation`` is not one of COCO's three encodings (mmdet's loader would fail on
    it mid-run, or silently ignore the object). Images without annotations are fine.
    """
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    try:
        with open(ann_file) as f:
            blob = json.load(f)
        images, anns, cats = blob["images"], blob["annotations"], blob["categories"]
        if not all(isinstance(x, list) and all(isinstance(e, dict) for e in x) for x in (images, anns, cats)):
            raise TypeError("images, annotations and categories must be lists of objects")
        names = tuple(c["name"] for c in cats)
        cat_ids = {c["id"] for c in cats}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {ann_file}: {type(exc).__name__}: {exc}; expected COCO 2017's "
                        f"instances format (images, annotations, categories)") from None
    if classes is not None and names != tuple(classes):
        raise DataError(f"{ann_file.parent}: {ann_file.name} and instances_val2017.json list different "
                        f"categories ({len(names)} vs {len(classes)}); expected the same list")
    folder = root / f"{split}2017"
    on_disk = set(os.listdir(folder))
    shapes = {}
    for img in images:
        h, w, name = img.get("height"), img.get("width"), img.get("file_name")
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and isinstance(name, str)):
            given = {k: img.get(k) for k in ("file_name", "width", "height")}
            raise DataError(f"{ann_file}: image {img.get('id')!r} needs file_name and a positive integer "
                            f"width and height; it has {given}")
        if name not in on_disk and not (folder / name).is_file():
            raise DataError(f"{ann_file}: image {img.get('id')!r} is {folder / name}, which does not exist")
        shapes[img.get("id")] = (h, w)
    for ann in anns:
        where = f"{ann_file}: annotation {ann.get('id')!r}"
        if ann.get("image_id") not in shapes:
            raise DataError(f"{where} is of image {ann.get('image_id')!r}, which the file does not list")
        if ann.get("category_id") not in cat_ids:
            raise DataError(f"{where} has category {ann.get('category_id')!r}, which the file does not list")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DataError(f"{where} has bbox {bbox!r}; expected [x, y, width, height]")
        problem = _segmentation_problem(ann.get("segmentation"), *shapes[ann["image_id"]])
        if problem:
            raise DataError(f"{where}: its segmentation {problem}; expected polygons, compressed "
                            f"RLE or uncompressed RLE (Mask R-CNN needs a mask per annotation)")
    return names


_PNG = b"\x89PNG\r\n\x1a\n"


def image_damage(data: bytes) -> str | None:
    """Why an image file's bytes are damaged, or None. Checked from the file's structure,
    not left to the decoder: libjpeg treats a JPEG that ends early as a warning and
    fills the missing rows with grey, so whether a truncated file is refused depends on
    the decoder and its version (our choice). A JPEG is whole when an end-of-image
    marker (FF D9) follows its last start-of-scan marker (FF DA; an embedded EXIF
    thumbnail's markers come before the image's, and inside the compressed data an FF
    byte is always followed by 00 or a restart marker), a PNG when it has its IEND chunk.
    Other formats are left to the decoder."""
    if not data:
        return "the file is empty"
    if data[:2] == b"\xff\xd8":
        scan = data.rfind(b"\xff\xda")
        if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
            return f"a JPEG that ends before its end-of-image marker: truncated at {len(data)} bytes"
    elif data[:8] == _PNG:
        end = data.rfind(b"IEND")
        if end < 0 or len(data) < end + 8:  # the chunk type, then its 4-byte CRC
            return f"a PNG without its IEND chunk: truncated at {len(data)} bytes"
    return None


def count_annotated_images(ann_file: Path) -> int:
    """Images with at least one annotation: what mmdet's ``filter_empty_gt`` trains on."""
    try:
        with open(ann_file) as f:
            blob = json.load(f)
        return len({a["image_id"] for a in blob.get("annotations", [])})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {ann_file}: {type(exc).__name__}: {exc}") from None
