"""COCO object detection: Mask R-CNN with a ViTDet backbone, MMDetection 3.x.

The model is MMDetection's ``MaskRCNN`` with the suite's :class:`tasks.vitdet.ViTDetBackbone`
(the pretrained encoder, loaded by explicit, logged rules) and ViTDet's simple feature
pyramid; heads as in ViTDet (two-conv RPN, 4conv1fc box head and 4-conv FCN mask head
with LayerNorm; the numbers of convs/fcs are preset values, smaller in ``tiny``). Training is mmengine's Runner (AdamW, layer-wise lr decay, linear warmup,
step drops), data is large-scale jitter (random resize ratio, random crop, pad), and
evaluation is MMDetection's ``CocoMetric`` (pycocotools) on the val annotation file.
Metrics, in % like the paper: ``bbox_mAP``, ``bbox_mAP_50``, ``bbox_mAP_75``,
``bbox_mAP_s/m/l``, and the same for ``segm``.

Data: ``--data-root`` holding COCO 2017 (``train2017/``, ``val2017/``,
``annotations/instances_{train,val}2017.json``). Without a root, the preset's embedded
scenes are written once in that layout (:mod:`tasks.data.coco_synthetic`) and read by
the same readers. Categories and their ids always come from the annotation file.

Pretraining (``pretrain_dataset``): ImageNet-format images with the encoder the
detector starts from, as the plan's ``pretrain_data`` says: ImageNet at
``tasks.coco.pretrain_data.root``, else (tiny preset) the embedded ImageFolder scenes.
Where encoder, schedule and images equal the ``imagenet`` task's, both tasks share one
pretrained checkpoint (tiny); the paper preset pretrains COCO's encoder 200 epochs.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.errors import ConfigError, DataError

from .base import RunnerSamples, Task
from .data.coco_synthetic import COCO_LAYOUT, ensure_embedded_coco

__all__ = ["CocoTask", "coco_classes", "check_coco_root", "check_coco_annotations", "build_detector_cfg",
           "train_pipeline", "eval_pipeline", "build_coco_dataset", "summarise_metrics",
           "evaluate_predictions", "build_evaluators"]

METRIC_KEYS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def _mmdet_scope():
    """Register mmdet's modules (and ours) and make ``mmdet`` the default scope."""
    import mmdet.models  # noqa: F401  (registers)
    from mmdet.utils import register_all_modules

    from . import vitdet  # noqa: F401  (registers the backbone, pyramid, LN2d)

    register_all_modules(init_default_scope=True)


# ---------------------------------------------------------------------------- data
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
    import os

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


def train_pipeline(size: int, ratio_range=(0.1, 2.0), pad_val: int = 114, hflip: float = 0.5):
    """Large-scale jitter (ViTDet): flip, resize by a random ratio of ``size``, crop
    ``size`` x ``size``, pad to it."""
    return [
        dict(type="LoadImageFromFile", backend_args=None),
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
        dict(type="LoadImageFromFile", backend_args=None),
        dict(type="Resize", scale=(size, size), keep_ratio=True),
        dict(type="PadKeepImageShape", size=(size, size), pad_val=dict(img=(pad_val,) * 3)),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                              "scale_factor")),
    ]


def build_coco_dataset(root: Path, split: str, pipeline, classes=None, min_size: int = 0):
    """mmdet's CocoDataset on ``root`` (``split`` 'train' or 'val'), classes from the file."""
    _mmdet_scope()
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


# ---------------------------------------------------------------------------- model
def build_detector_cfg(det, encoder, num_classes: int, pos_embed: bool = True) -> dict:
    """MMDetection's Mask R-CNN config with the ViTDet backbone.

    ``det`` is the plan's :class:`engine.plan.DetectorPlan`, ``encoder`` its
    :class:`engine.plan.EncoderPlan` (the pretraining encoder: arch, img_size =
    pretraining size, patch_size).
    """
    ch = det.neck_channels
    patch = encoder.patch_size
    scales = tuple(det.scale_factors)
    strides = [int(patch / s) for s in scales]
    strides.append(strides[-1] * 2)  # the extra max-pooled level for the RPN
    norm = dict(type="PartLN2d", requires_grad=True)
    rpn_train, rcnn_train, rpn_test, rcnn_test = det.rpn_train, det.rcnn_train, det.rpn_test, det.rcnn_test
    # mmdet sends an RoI of side s to level floor(log2(s / finest_scale)); its 56 assumes
    # the finest level has stride 4 (FPN, ViTDet at 1024 px). Scale it with our finest
    # stride so an RoI meets the same feature resolution whatever the patch size.
    finest_scale = 56 * strides[0] / 4
    sampling = det.roi_sampling_ratio  # 0: adaptive, as ViTDet
    return dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_mask=True,
                               pad_size_divisor=patch),
        backbone=dict(type="ViTDetBackbone", arch=encoder.arch, img_size=det.img_size,
                      patch_size=patch, pretrain_img_size=encoder.img_size,
                      in_chans=encoder.in_chans, window_size=det.window_size,
                      global_blocks=tuple(det.global_blocks), drop_path_rate=det.drop_path,
                      use_rel_pos=det.use_rel_pos, use_abs_pos=pos_embed),
        neck=dict(type="SimpleFeaturePyramid", in_channels=_embed_dim(encoder), out_channels=ch,
                  scale_factors=scales, num_outs=len(strides)),
        rpn_head=dict(
            type="RPNHead", in_channels=ch, feat_channels=ch, num_convs=2,
            anchor_generator=dict(type="AnchorGenerator", scales=[det.anchor_scale],
                                  ratios=[0.5, 1.0, 2.0], strides=strides),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="ValidBoxRoIHead",  # drops non-finite / empty boxes before mask pasting
            bbox_roi_extractor=dict(type="SingleRoIExtractor",
                                    roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=sampling),
                                    out_channels=ch, featmap_strides=strides[:-1],
                                    finest_scale=finest_scale),
            bbox_head=dict(type="ConvFCBBoxHead", num_shared_convs=det.bbox_convs,
                           num_shared_fcs=det.bbox_fcs, in_channels=ch, conv_out_channels=ch,
                           fc_out_channels=det.fc_channels, roi_feat_size=7, num_classes=num_classes,
                           norm_cfg=norm,
                           bbox_coder=dict(type="FiniteDeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                           target_stds=[0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=dict(type="SingleRoIExtractor",
                                    roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=sampling),
                                    out_channels=ch, featmap_strides=strides[:-1],
                                    finest_scale=finest_scale),
            mask_head=dict(type="FCNMaskHead", num_convs=det.mask_convs, in_channels=ch, conv_out_channels=ch,
                           num_classes=num_classes, norm_cfg=norm,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3,
                                   min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=rpn_train.num, pos_fraction=0.5,
                                  neg_pos_ub=-1, add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=rpn_train.nms_pre,
                              max_per_img=rpn_train.max_per_img,
                              nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5,
                                    min_pos_iou=0.5, match_low_quality=True, ignore_iof_thr=-1),
                      sampler=dict(type="RandomSampler", num=rcnn_train.num,
                                   pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
                      mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=rpn_test.nms_pre, max_per_img=rpn_test.max_per_img,
                     nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=rcnn_test.score_thr, nms=dict(type="nms", iou_threshold=0.5),
                      max_per_img=rcnn_test.max_per_img, mask_thr_binary=0.5)),
    )


def _embed_dim(encoder) -> int:
    from methods.backbone import ENCODER_ARCHS

    return ENCODER_ARCHS[encoder.arch]["embed_dim"]


def build_detector(det, encoder, num_classes: int, pos_embed: bool = True):
    """The detector with every weight initialised once, here: the Runner's later
    ``init_weights()`` sees ``is_init`` and leaves loaded weights alone."""
    _mmdet_scope()
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    import logging

    from mmengine.logging import MMLogger

    model = MODELS.build(ConfigDict(build_detector_cfg(det, encoder, num_classes, pos_embed)))
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # mmengine logs one line per initialised tensor
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


# ---------------------------------------------------------------------------- metrics
def summarise_metrics(raw: dict) -> dict:
    """CocoMetric's ``coco/bbox_mAP`` (fraction) -> ``bbox_mAP`` (%). A metric that
    CocoMetric could not compute because no image has any prediction is 0.0; one that
    pycocotools marks -1 (no ground truth in that size bucket) is undefined and left
    out, not scored as 0. ``dropped_pred_boxes`` (a count) is passed on when present."""
    out = {}
    for kind in ("bbox", "segm"):
        for key in METRIC_KEYS:
            value = raw.get(f"coco/{kind}_{key}")
            if value is None:
                out[f"{kind}_{key}"] = 0.0
            elif value >= 0:
                out[f"{kind}_{key}"] = round(100.0 * float(value), 2)
    if "pred/dropped_pred_boxes" in raw:
        out["dropped_pred_boxes"] = int(raw["pred/dropped_pred_boxes"])
    return out


def build_metric(ann_file: Path, classes=None):
    _mmdet_scope()
    from mmdet.evaluation import CocoMetric

    metric = CocoMetric(ann_file=str(ann_file), metric=["bbox", "segm"], format_only=False,
                        backend_args=None)
    metric.dataset_meta = dict(classes=tuple(classes or coco_classes(ann_file)))
    return metric


def build_evaluators(ann_file: Path, classes=None) -> list:
    """What the task's test loop runs: CocoMetric, and the count of predicted boxes the
    detector's test path dropped (:class:`tasks.vitdet.DroppedBoxesMetric`)."""
    from .vitdet import DroppedBoxesMetric

    return [build_metric(ann_file, classes), DroppedBoxesMetric()]


def evaluate_predictions(ann_file: Path, predictions: list[dict], classes=None) -> dict:
    """Evaluate hand-made predictions (one dict per image: ``img_id``, ``ori_shape``,
    ``pred_instances`` with ``bboxes`` (xyxy), ``scores``, ``labels``, ``masks``)
    through mmdet's CocoMetric; returns :func:`summarise_metrics`' dict."""
    metric = build_metric(ann_file, classes)
    metric.process({}, predictions)
    return summarise_metrics(metric.evaluate(size=len(predictions)))


# ---------------------------------------------------------------------------- task
class CocoTask(Task):
    name = "coco"
    kind = "detection"
    metric_names = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75")

    def write_embedded(self, dataset, data_cache, **embedded):
        if dataset == "coco":
            return ensure_embedded_coco(data_cache, **embedded)
        from .classification import write_embedded_classification

        return write_embedded_classification(dataset, data_cache, **embedded)

    @property
    def classes(self) -> tuple[str, ...]:
        return coco_classes(self.root / "annotations" / "instances_val2017.json")

    def check_data(self) -> None:
        """Before any pretraining: the layout, both annotation files readable by the
        detector's reader (:func:`check_coco_annotations`) with the same categories
        (labels are indices into that list, so a mismatch would silently mislabel every
        box); then the pretraining images."""
        check_coco_root(self.root)
        ann = self.root / "annotations"
        val = check_coco_annotations(self.root, "val")
        if not val:
            raise DataError(f"{ann / 'instances_val2017.json'} lists no categories")
        check_coco_annotations(self.root, "train", classes=val)
        self._pretrain_split(True, None)
        self._pretrain_split(False, None)

    # pretraining: ImageNet-format images (plan.pretrain_data) at the encoder's size
    def _pretrain_split(self, train: bool, transform):
        from .classification import read_split

        pre = self.plan.pretrain_data
        if pre.missing:
            raise ConfigError(f"the {self.plan.task} task pretrains on {pre.dataset}: set "
                              f"tasks.{self.plan.task}.pretrain_data.root (e.g. --cfg-options "
                              f"tasks.{self.plan.task}.pretrain_data.root=/data/imagenet)")
        return read_split(pre.dataset, self.resolve_root(pre), train, transform)

    def pretrain_dataset(self):
        from .classification import pretrain_transform

        tf = pretrain_transform(self.plan.encoder.img_size, self.plan.pretrain.augment)
        return RunnerSamples(self._pretrain_split(True, tf))

    def train_sizes(self):
        pre, data = self.plan.pretrain_data, self.plan.data
        n_pre = len(self._pretrain_split(True, None)) if pre.root else None
        n_ft = None
        if data.root:
            ann = Path(data.root) / "annotations" / "instances_train2017.json"
            if ann.is_file():
                n_ft = count_annotated_images(ann)
        return {"pretrain": n_pre, "finetune": n_ft}

    def run(self, *, pretrained, work_dir, log=print):
        from engine.runner import build_runner

        from .vitdet import load_encoder_into_backbone

        plan, ft = self.plan, self.plan.finetune
        det = plan.detector
        _mmdet_scope()
        classes = self.classes
        size = det.img_size
        train_set = build_coco_dataset(self.root, "train", train_pipeline(
            size, ft.resize_ratio, ft.pad_val, ft.hflip), classes, ft.min_size)
        val_set = build_coco_dataset(self.root, "val", eval_pipeline(size, ft.pad_val), classes)
        model = build_detector(det, plan.encoder, len(classes), pos_embed=ft.pos_embed)
        report = None
        if pretrained is not None:
            report = load_encoder_into_backbone(model.backbone, Path(pretrained) / "encoder.pth", log=log)
        else:
            log("[load] no pretraining: the backbone starts from its random initialisation")
        evaluators = build_evaluators(self.root / "annotations" / "instances_val2017.json", classes)
        runner = build_runner(
            model, work_dir, train_set, schedule=ft, batch_per_process=plan.finetune_batch(),
            loader=plan.loader, seed=plan.seed,
            optim_constructor="ViTDetLayerDecayConstructor", default_scope="mmdet",
            collate_fn="pseudo_collate", test_dataset=val_set, test_evaluator=evaluators,
            test_batch_size=ft.test_batch_size, experiment_name="coco")
        runner.train()
        out = summarise_metrics(runner.test())
        if report is not None:
            out["new_keys"] = report["missing"]
            out["dropped_keys"] = report["dropped"]
        return out


def count_annotated_images(ann_file: Path) -> int:
    """Images with at least one annotation: what mmdet's ``filter_empty_gt`` trains on."""
    try:
        with open(ann_file) as f:
            blob = json.load(f)
        return len({a["image_id"] for a in blob.get("annotations", [])})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {ann_file}: {type(exc).__name__}: {exc}") from None
