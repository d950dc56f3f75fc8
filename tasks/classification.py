"""Image classification finetuning: CIFAR-100 and ImageNet-1k with the DeiT recipe.

:class:`ClassificationTask` (dataset ``cifar100`` or ``imagenet``, else
:class:`engine.errors.ConfigError`) runs one protocol (the plan's ``protocol``
section, ``--protocol``):

- ``finetune``: DeiT's recipe built from timm's parts (the plan's ``finetune`` section,
  :class:`engine.plan.FinetunePlan`; ``finetune.recipe=mae``/``droppos`` select those
  methods' own). The pretext head is dropped; a linear head on [CLS] is trained
  (:class:`tasks.classifier.ClassifierModel`); learnable position embeddings are added
  (randomly initialised) unless the row is a "w/o PE" baseline; patches are the fixed
  grid. Metric: top-1 accuracy (``acc1``, %, :class:`tasks.metrics.Top1Accuracy`);
- ``knn`` / ``linear``: the frozen encoder (:mod:`tasks.protocols`, through
  :class:`tasks.frozen.FrozenProtocols`): ``knn_acc1_cls``, ``knn_acc1_avg``;
  ``linear_acc1``. ``scratch`` is evaluated as a randomly initialised encoder.

Every run is checked: a final training loss still at the class-prior level, or an
accuracy within noise of the majority-class rate, is logged on one line and listed in
the metrics' ``warnings``.

Data: ``--data-root`` holding ``cifar-100-python/`` (torchvision's on-disk format) or
an ImageNet ``train/``/``val/`` ImageFolder, read through the data-set registry
(:mod:`tasks.data.sources`). Without a root, the embedded generated data of the preset
is written once in the same format and read by the same readers.

Details: docs/reference/classification.md.
"""
from __future__ import annotations

import torchvision.transforms as T
from timm.data import create_transform

from engine.errors import ConfigError
from engine.plan import DataPlan, EncoderPlan, FinetunePlan, LoaderPlan, PretrainPlan

from .base import Task
from .data.sources import data_source
from .finetune import finetune_classifier
from .frozen import FrozenData, FrozenProtocols, ProtocolPlan
from .metrics import Top1Accuracy  # noqa: F401  (registers the metric the Runner names)
from .protocols import LinearProbePlan

__all__ = ["ClassificationTask"]


class ClassificationTask(FrozenProtocols, Task):
    kind = "classification"
    metric_names = ("acc1",)
    sections = {"data": DataPlan, "encoder": EncoderPlan, "pretrain": PretrainPlan,
                "finetune": FinetunePlan, "loader": LoaderPlan, "protocol": ProtocolPlan,
                "probe": LinearProbePlan}
    # the protocols' metrics (FrozenProtocols.protocol_metrics): finetune acc1; knn
    # knn_acc1_cls, knn_acc1_avg; linear linear_acc1
    finetune_metrics = ("acc1",)
    finetune_accuracy = "acc1"
    frozen_scores = ("acc1",)

    def __init__(self, plan, cache_root):
        super().__init__(plan, cache_root)
        self.dataset = plan.data.dataset
        if self.dataset not in ("cifar100", "imagenet"):
            raise ConfigError(f"classification dataset must be cifar100 or imagenet, "
                              f"got {self.dataset!r}")
        self.name = plan.task
        self.init_protocol()

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
        if ft.small_input_pad is not None and self.img_size <= 32:
            # DeiT's rule for CIFAR-size inputs: a padded random crop, not a resized one
            train_tf.transforms[0] = T.RandomCrop(self.img_size, padding=ft.small_input_pad)
        crop = ft.eval_crop_pct if ft.eval_crop_pct is not None else (
            0.875 if self.img_size >= 224 else 1.0)
        eval_tf = create_transform(self.img_size, is_training=False, interpolation="bicubic",
                                   crop_pct=crop)
        return train_tf, eval_tf

    # ---------------------------------------------------------------- run
    def run(self, *, pretrained, work_dir, log=print):
        if self.protocol.name == "finetune":
            return self.finetune(pretrained, work_dir, log)
        return self.frozen(pretrained, work_dir, log)

    def finetune(self, pretrained, work_dir, log=print) -> dict:
        ft = self.plan.finetune
        train_tf, eval_tf = self.finetune_transforms()
        train, test = self.split(True, train_tf), self.split(False, eval_tf)
        return finetune_classifier(
            self, pretrained=pretrained, work_dir=work_dir, log=log, train=train, test=test,
            num_classes=len(test.classes), train_labels=train.targets, test_labels=test.targets,
            evaluator="Top1Accuracy", metric_names=("acc1",),
            model_options=dict(mixup=ft.mixup, cutmix=ft.cutmix))

    # ---------------------------------------------------------------- frozen protocols
    def frozen_data(self, log=print) -> FrozenData:
        """Both splits with the evaluation transform; features keyed by the data's
        identity, the image size and the transform."""
        from .data.fingerprint import data_identity

        _, eval_tf = self.finetune_transforms()
        d = self.plan.data
        return FrozenData(self.split(True, eval_tf), self.split(False, eval_tf),
                          dict(data=data_identity(d.dataset, d.root, d.embedded),
                               img_size=self.img_size, eval_transform=repr(eval_tf)))
