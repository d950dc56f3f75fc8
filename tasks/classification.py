"""Image classification finetuning: CIFAR-100 and ImageNet-1k with the DeiT recipe.

The recipe is DeiT's, built from timm's parts (the plan's ``finetune`` section, see
:class:`engine.plan.FinetunePlan`): RandAugment (``rand-m9-mstd0.5-inc1``), Mixup 0.8 /
CutMix 1.0 with label smoothing 0.1 (soft-target cross-entropy), random erasing 0.25,
drop path, repeated augmentation, AdamW with linear warmup then cosine decay, no
layer-wise lr decay (``finetune.recipe=mae``/``droppos`` select those methods' own). The pretext head is
dropped; a linear head on [CLS] is trained (:class:`tasks.classifier.ClassifierModel`);
learnable position embeddings are added (randomly initialised) unless the row is a
"w/o PE" baseline; patches are the fixed grid. Metric: top-1 accuracy (``acc1``, %),
computed by scikit-learn (:class:`tasks.metrics.Top1Accuracy`).

Data: ``--data-root`` holding ``cifar-100-python/`` (torchvision's on-disk format) or
an ImageNet ``train/``/``val/`` ImageFolder, read through the data-set registry
(:mod:`tasks.data.sources`). Without a root, the embedded generated data of the preset
is written once in the same format and read by the same readers.
"""
from __future__ import annotations

from pathlib import Path

from timm.data import create_transform

from engine.errors import ConfigError
from engine.plan import DataPlan, EncoderPlan, FinetunePlan, LoaderPlan, PretrainPlan
from engine.runner import build_runner
from methods.backbone import build_encoder

from .base import RunnerSamples, Task
from .checkpoint import load_encoder_weights
from .classifier import ClassifierModel
from .data.sources import data_source
from .metrics import Top1Accuracy  # noqa: F401  (registers the metric the Runner names)

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    kind = "classification"
    metric_names = ("acc1",)
    sections = {"data": DataPlan, "encoder": EncoderPlan, "pretrain": PretrainPlan,
                "finetune": FinetunePlan, "loader": LoaderPlan}

    def __init__(self, plan, cache_root):
        super().__init__(plan, cache_root)
        self.dataset = plan.data.dataset
        if self.dataset not in ("cifar100", "imagenet"):
            raise ConfigError(f"classification dataset must be cifar100 or imagenet, "
                              f"got {self.dataset!r}")
        self.name = plan.task

    # ---------------------------------------------------------------- data
    def split(self, train: bool, transform=None):
        return data_source(self.dataset).read(self.root, train, transform)

    def check_data(self) -> None:
        self.split(True)
        self.split(False)

    def train_sizes(self):
        n = len(self.split(True)) if self.plan.data.root else None
        return {"pretrain": n, "finetune": n}

    @property
    def img_size(self) -> int:
        return self.plan.encoder.img_size

    def finetune_transforms(self):
        ft = self.plan.finetune
        train_tf = create_transform(
            self.img_size, is_training=True, auto_augment=ft.rand_augment,
            re_prob=ft.reprob, re_mode="pixel", re_count=1,
            interpolation="bicubic", scale=tuple(ft.rrc_scale),
            color_jitter=ft.color_jitter, hflip=ft.hflip)
        crop = ft.eval_crop_pct if ft.eval_crop_pct is not None else (
            0.875 if self.img_size >= 224 else 1.0)
        eval_tf = create_transform(self.img_size, is_training=False, interpolation="bicubic",
                                   crop_pct=crop)
        return train_tf, eval_tf

    # ---------------------------------------------------------------- run
    def run(self, *, pretrained, work_dir, log=print):
        plan, ft = self.plan, self.plan.finetune
        train_tf, eval_tf = self.finetune_transforms()
        train_set = RunnerSamples(self.split(True, train_tf))
        test_base = self.split(False, eval_tf)
        num_classes = len(test_base.classes)
        encoder = build_encoder(**{**plan.encoder.as_kwargs(),
                                   "pos_embed": "learn" if ft.pos_embed else "none",
                                   "num_classes": num_classes,
                                   "drop_path_rate": ft.drop_path})
        load_report = None
        if pretrained is not None:
            load_report = load_encoder_weights(encoder, Path(pretrained) / "encoder.pth", log=log)
        model = ClassifierModel(encoder, num_classes, mixup=ft.mixup, cutmix=ft.cutmix,
                                smoothing=ft.smoothing)
        runner = build_runner(
            model, work_dir, train_set, schedule=ft, batch_per_process=plan.finetune_batch(),
            loader=plan.loader, seed=plan.seed,
            test_dataset=RunnerSamples(test_base), test_evaluator=dict(type="Top1Accuracy"),
            experiment_name="finetune")
        runner.train()
        metrics = runner.test()
        out = {"acc1": float(metrics["acc1"])}
        if load_report is not None:
            out["new_keys"] = load_report["missing"]
        return out
