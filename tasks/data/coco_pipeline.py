"""The mmdet side of the COCO data: the train and eval pipelines (ViTDet's large-scale
jitter), the suite's transforms in them, and mmdet's ``CocoDataset`` on a root.

- :class:`CheckedLoadImageFromFile` (``TRANSFORMS``) loads an image as mmcv's
  ``LoadImageFromFile`` does (the same bytes, the same decoder); a file that cannot be
  read, is damaged (:func:`tasks.data.coco.image_damage`) or does not decode stops the
  run with one :class:`engine.errors.DataError` naming it.
- :class:`PadKeepImageShape` (``TRANSFORMS``): the eval pipeline's fixed-size pad,
  leaving ``img_shape`` the shape of the image content, so predictions are clipped to
  the image and not to its padding.

The format checks that need no mmdet (root layout, annotations, damaged files) are
:mod:`tasks.data.coco`.
"""
from __future__ import annotations

from pathlib import Path

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmdet.datasets.transforms import Pad
from mmdet.registry import TRANSFORMS
from mmengine import fileio

from engine.errors import DataError

from .coco import coco_classes, image_damage

__all__ = ["CheckedLoadImageFromFile", "PadKeepImageShape", "train_pipeline", "eval_pipeline",
           "build_coco_dataset"]


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` whose every failure is one :class:`DataError` naming
    the file: unreadable, damaged (:func:`tasks.data.coco.image_damage`), or not
    decodable (mmcv's own loader raises an ``AssertionError`` for that, or, for a
    truncated JPEG, may return the decoder's grey-filled rows). A damaged image stops
    the run rather than being skipped, as in the classification data sets
    (:func:`tasks.data.imagefolder.load_image`); a DataLoader worker's error reaches the
    command as the same one line."""

    def transform(self, results: dict) -> dict:
        path = results["img_path"]
        try:
            data = fileio.get(path, backend_args=self.backend_args)
        except OSError as exc:
            why = f"{type(exc).__name__}: {exc.strerror or exc}"
            raise DataError(f"cannot read image {path} ({why})") from None
        why = image_damage(data)
        img = None
        if why is None:
            try:
                img = mmcv.imfrombytes(data, flag=self.color_type, backend=self.imdecode_backend)
            except Exception as exc:  # noqa: BLE001 - any decoder error: the file is damaged
                why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            if img is None and why is None:
                why = f"{self.imdecode_backend} cannot decode it"
        if why is not None:
            raise DataError(f"cannot read image {path} ({why}); replace the damaged file (or remove its "
                            f"entry from the annotation file) and rerun the same command")
        if self.to_float32:
            img = img.astype(np.float32)
        results["img"] = img
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = img.shape[:2]
        return results


@TRANSFORMS.register_module()
class PadKeepImageShape(Pad):
    """mmdet's ``Pad`` that leaves ``img_shape`` the shape of the image content.

    mmcv's ``Pad`` sets ``img_shape`` to the padded shape. At test time the box head
    clips predictions to ``img_shape`` and the mask head divides them by
    ``scale_factor`` to reach ``ori_shape``: with the padded shape, a box predicted in
    the padding of a non-square image lands beyond the original image's border, and
    pasting its mask fails (``torch.arange`` with a lower bound above the upper one).
    ``pad_shape`` still records the padded size.
    """

    def transform(self, results: dict) -> dict:
        content = tuple(results["img"].shape[:2])
        results = super().transform(results)
        results["img_shape"] = content
        return results


def train_pipeline(size: int, ratio_range=(0.1, 2.0), pad_val: int = 114, hflip: float = 0.5):
    """Large-scale jitter (ViTDet): flip, resize by a random ratio of ``size``, crop
    ``size`` x ``size``, pad to it."""
    return [
        dict(type="CheckedLoadImageFromFile", backend_args=None),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="RandomFlip", prob=hflip),
        dict(type="RandomResize", scale=(size, size), ratio_range=tuple(ratio_range), keep_ratio=True),
        dict(type="RandomCrop", crop_type="absolute_range", crop_size=(size, size),
             recompute_bbox=True, allow_negative_crop=True),
        dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
        dict(type="Pad", size=(size, size), pad_val=dict(img=(pad_val,) * 3)),
        dict(type="PackDetInputs"),
    ]


def eval_pipeline(size: int, pad_val: int = 114):
    """Resize the longer side to ``size`` and pad to ``size`` x ``size`` like training's
    input, recording the *content* shape as ``img_shape`` (:class:`tasks.vitdet.PadKeepImageShape`):
    the test path clips boxes to it, so none reaches into the padding, which lies
    outside the original image. Annotations are loaded after resizing, in original
    coordinates, as mmdet's test pipelines do (CocoMetric reads the file anyway)."""
    return [
        dict(type="CheckedLoadImageFromFile", backend_args=None),
        dict(type="Resize", scale=(size, size), keep_ratio=True),
        dict(type="PadKeepImageShape", size=(size, size), pad_val=dict(img=(pad_val,) * 3)),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                              "scale_factor")),
    ]


def build_coco_dataset(root: Path, split: str, pipeline, classes=None, min_size: int = 0):
    """mmdet's CocoDataset on ``root`` (``split`` 'train' or 'val'), classes from the file."""
    from ..detection_registry import mmdet_scope

    mmdet_scope()
    from mmdet.registry import DATASETS

    root = Path(root)
    ann = root / "annotations" / f"instances_{split}2017.json"
    classes = classes or coco_classes(ann)
    try:
        return DATASETS.build(dict(
            type="CocoDataset", data_root=str(root),
            ann_file=f"annotations/instances_{split}2017.json",
            data_prefix=dict(img=f"{split}2017/"), metainfo=dict(classes=tuple(classes)),
            test_mode=split != "train",
            filter_cfg=dict(filter_empty_gt=True, min_size=min_size) if split == "train" else None,
            pipeline=pipeline, backend_args=None))
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DataError(f"cannot load COCO {split} annotations {ann}: {type(exc).__name__}: {exc}; "
                        f"expected COCO 2017's instances format") from None
