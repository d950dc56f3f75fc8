"""Image classification finetuning: CIFAR-100 and ImageNet-1k with the DeiT recipe.

The recipe is DeiT's, built from timm's parts (the plan's ``finetune`` section, see
:class:`engine.plan.FinetunePlan`): RandAugment (``rand-m9-mstd0.5-inc1``), Mixup 0.8 /
CutMix 1.0 with label smoothing 0.1 (soft-target cross-entropy), random erasing 0.25,
drop path, repeated augmentation, AdamW with linear warmup then cosine decay, no
layer-wise lr decay (``finetune.recipe=mae``/``droppos`` select those methods' own). The pretext head is
dropped; a linear head on [CLS] is trained; learnable position embeddings are added
(randomly initialised) unless the row is a "w/o PE" baseline; patches are the fixed
grid. Metric: top-1 accuracy (``acc1``, %), computed by scikit-learn.

Data: ``--data-root`` holding ``cifar-100-python/`` (torchvision's on-disk format) or
an ImageNet ``train/``/``val/`` ImageFolder. Without a root, the embedded generated
data of the preset is written once in the same format and read by the same readers.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS
from sklearn.metrics import accuracy_score
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torchvision import transforms as T

from engine.errors import ConfigError
from engine.runner import SuiteModel, build_runner
from methods.backbone import build_encoder

from .base import RunnerSamples, Task
from .checkpoint import load_encoder_weights
from .data.cifar import CIFAR100Folder
from .data.imagefolder import build_imagefolder
from .data.synthetic import ensure_embedded_cifar100, ensure_embedded_imagefolder

__all__ = ["ClassificationTask", "ClassifierModel", "Top1Accuracy", "pretrain_transform",
           "read_split", "write_embedded_classification"]


@METRICS.register_module()
class Top1Accuracy(BaseMetric):
    default_prefix = ""

    def process(self, data_batch, data_samples):
        for out in data_samples:
            self.results.append((int(out["pred"]), int(out["label"])))

    def compute_metrics(self, results):
        preds, labels = zip(*results)
        return {"acc1": 100.0 * accuracy_score(labels, preds)}


class ClassifierModel(SuiteModel):
    """A ViT with a linear head on [CLS], trained with Mixup/CutMix + soft targets."""

    def __init__(self, encoder, num_classes: int, mixup: float = 0.8, cutmix: float = 1.0,
                 smoothing: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing,
                               num_classes=num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()

    def forward(self, inputs, data_samples=None, mode: str = "loss"):
        if mode == "loss":
            targets = data_samples
            if self.mixup is not None and inputs.shape[0] % 2 == 0:
                inputs, targets = self.mixup(inputs, targets)
            elif self.mixup is not None:  # Mixup needs an even batch; plain smoothing otherwise
                targets = F.one_hot(targets, self.encoder.num_classes).float()
            logits = self.encoder(inputs)
            return {"loss": self.criterion(logits, targets)}
        logits = self.encoder(inputs)
        preds = logits.argmax(dim=-1)
        return [{"pred": p, "label": y} for p, y in zip(preds.tolist(), data_samples.tolist())]


def pretrain_transform(size: int, augment):
    """Image-level augmentation for pretraining (:class:`engine.plan.AugmentPlan`):
    random resized crop (+ optional flip)."""
    ops = [T.RandomResizedCrop(size, scale=tuple(augment.rrc_scale),
                               interpolation=T.InterpolationMode.BICUBIC)]
    if augment.hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return T.Compose(ops)


def read_split(dataset: str, root: Path, train: bool, transform=None):
    """A classification data set's split: CIFAR-100's files or an ImageFolder."""
    if dataset == "cifar100":
        return CIFAR100Folder(root, train=train, transform=transform)
    if dataset == "imagenet":
        return build_imagefolder(root, "train" if train else "val", transform=transform)
    raise ConfigError(f"classification data set must be cifar100 or imagenet, got {dataset!r}")


def write_embedded_classification(dataset: str, data_cache: Path, **embedded) -> Path:
    if dataset == "cifar100":
        return ensure_embedded_cifar100(data_cache, **embedded)
    return ensure_embedded_imagefolder(data_cache, **embedded)


class ClassificationTask(Task):
    kind = "classification"
    metric_names = ("acc1",)

    def __init__(self, plan, cache_root):
        super().__init__(plan, cache_root)
        self.dataset = plan.data.dataset
        if self.dataset not in ("cifar100", "imagenet"):
            raise ConfigError(f"classification dataset must be cifar100 or imagenet, "
                              f"got {self.dataset!r}")
        self.name = plan.task

    # ---------------------------------------------------------------- data
    def write_embedded(self, dataset, data_cache, **embedded):
        return write_embedded_classification(dataset, data_cache, **embedded)

    def _split(self, train: bool, transform):
        return read_split(self.dataset, self.root, train, transform)

    def check_data(self) -> None:
        self._split(True, None)
        self._split(False, None)

    def train_sizes(self):
        n = len(self._split(True, None)) if self.plan.data.root else None
        return {"pretrain": n, "finetune": n}

    @property
    def img_size(self) -> int:
        return self.plan.encoder.img_size

    def pretrain_dataset(self):
        tf = pretrain_transform(self.img_size, self.plan.pretrain.augment)
        return RunnerSamples(self._split(True, tf))

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
        train_set = RunnerSamples(self._split(True, train_tf))
        test_base = self._split(False, eval_tf)
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
