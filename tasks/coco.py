"""COCO object detection: Mask R-CNN with a ViTDet backbone, MMDetection 3.x.

The model is MMDetection's ``MaskRCNN`` with the suite's :class:`tasks.vitdet.ViTDetBackbone`
(the pretrained encoder, loaded by explicit, logged rules:
:func:`tasks.checkpoint.load_encoder_into_backbone`) and ViTDet's simple feature pyramid;
its config is :mod:`tasks.detection_config`. Training is mmengine's Runner (AdamW,
ViTDet's layer-wise lr decay and weight-decay exemptions: ``rule="vitdet"`` of
:class:`engine.optim.LayerDecayOptimWrapperConstructor`, linear warmup, step drops), data
is large-scale jitter (random resize ratio, random crop, pad; :mod:`tasks.data.coco` reads
and checks the files), and evaluation is MMDetection's ``CocoMetric`` (pycocotools) on
the val annotation file.
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

from pathlib import Path

from engine.errors import DataError
from engine.plan import DataPlan, EncoderPlan, LoaderPlan, PretrainPlan

from .base import Task
from .checkpoint import load_encoder_into_backbone
from .data.coco import check_coco_annotations, check_coco_root, coco_classes, count_annotated_images
from .data.coco_pipeline import build_coco_dataset, eval_pipeline, train_pipeline
from .data.sources import data_source
from .detection_config import DetectionFinetunePlan, DetectorPlan, build_detector

__all__ = ["CocoTask", "summarise_metrics", "build_metric", "build_evaluators", "evaluate_predictions"]

METRIC_KEYS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


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
    """MMDetection's ``CocoMetric`` (bbox and segm) on ``ann_file``, with its categories."""
    from .detection_registry import mmdet_scope

    mmdet_scope()
    from mmdet.evaluation import CocoMetric

    metric = CocoMetric(ann_file=str(ann_file), metric=["bbox", "segm"], format_only=False,
                        backend_args=None)
    metric.dataset_meta = dict(classes=tuple(classes or coco_classes(ann_file)))
    return metric


def build_evaluators(ann_file: Path, classes=None) -> list:
    """What the task's test loop runs: CocoMetric, and the count of predicted boxes the
    detector's test path dropped (:class:`tasks.detection_guards.DroppedBoxesMetric`)."""
    from .detection_guards import DroppedBoxesMetric

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
    sections = {"data": DataPlan, "encoder": EncoderPlan, "pretrain": PretrainPlan,
                "pretrain_data": DataPlan, "finetune": DetectionFinetunePlan,
                "detector": DetectorPlan, "loader": LoaderPlan}
    metric_names = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75")

    @property
    def classes(self) -> tuple[str, ...]:
        return coco_classes(self.root / "annotations" / "instances_val2017.json")

    def check_data(self) -> None:
        """Before any pretraining: the layout, both annotation files readable by the
        detector's reader (:func:`check_coco_annotations`) with the same categories
        (labels are indices into that list, so a mismatch would silently mislabel every
        box); then the pretraining images, where the method pretrains."""
        check_coco_root(self.root)
        ann = self.root / "annotations"
        val = check_coco_annotations(self.root, "val")
        if not val:
            raise DataError(f"{ann / 'instances_val2017.json'} lists no categories")
        check_coco_annotations(self.root, "train", classes=val)
        if self.plan.pretrain is not None:  # a method without pretraining reads no ImageNet
            self._pretrain_split(True, None)
            self._pretrain_split(False, None)

    # pretraining: the images of plan.pretrain_data (ImageNet's format), through the registry
    def _pretrain_split(self, train: bool, transform):
        return data_source(self.plan.pretrain_data.dataset).read(self.pretrain_root, train,
                                                                 transform)

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

        from .detection_registry import mmdet_scope

        plan, ft = self.plan, self.plan.finetune
        det = plan.detector
        mmdet_scope()
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
            param_rule="vitdet",  # engine.optim: ViTDet's layer ids and exemptions
            default_scope="mmdet",
            collate_fn="pseudo_collate", test_dataset=val_set, test_evaluator=evaluators,
            test_batch_size=ft.test_batch_size, experiment_name="coco")
        runner.train()
        out = summarise_metrics(runner.test())
        if report is not None:
            out["new_keys"] = report["missing"]
            out["dropped_keys"] = report["dropped"]
        return out
