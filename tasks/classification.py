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

Protocols (the plan's ``protocol`` section, ``--protocol``): ``finetune`` (the above,
metric ``acc1``), ``knn`` (DINO's weighted kNN on the frozen encoder's [CLS] and
average-pooled features: ``knn_acc1_cls``, ``knn_acc1_avg``) and ``linear`` (a linear
probe on frozen ``[CLS] ‖ mean patch token`` features, the plan's ``probe`` schedule:
``linear_acc1``); see :mod:`tasks.protocols`. The frozen protocols read both splits with
the evaluation transform (no augmentation); features are cached under
``<cache>/features`` keyed by the checkpoint, the data's identity, the transform and the
pool. A method without pretraining (``scratch``) is evaluated frozen as a *randomly
initialised* encoder (seeded by the run's seed; the record's ``frozen_encoder`` says
so): the floor a pretrained encoder must beat (our choice). The flow is
:class:`tasks.frozen.FrozenProtocols`, shared with the ``eeg`` task.

Every run is checked (:mod:`tasks.protocols` sanity checks): a final training loss still
at the class-prior level, or an accuracy within noise of the majority-class rate, is
logged on one line and listed in the metrics' ``warnings`` (the record's).
``finetune.min_steps`` / ``probe.min_steps`` raise the epochs of a small data set to a
floor in optimizer steps (not when a row or the command line sets the epochs alone:
:func:`engine.plan.with_step_floor`).

Data: ``--data-root`` holding ``cifar-100-python/`` (torchvision's on-disk format) or
an ImageNet ``train/``/``val/`` ImageFolder, read through the data-set registry
(:mod:`tasks.data.sources`). Without a root, the embedded generated data of the preset
is written once in the same format and read by the same readers.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import torchvision.transforms as T
from timm.data import create_transform

from engine.errors import ConfigError
from engine.plan import (DataPlan, EncoderPlan, FinetunePlan, LoaderPlan, PretrainPlan, ProtocolPlan,
                         iters_per_epoch, with_step_floor)
from engine.runner import build_runner
from methods.backbone import build_encoder

from .base import RunnerSamples, Task
from .checkpoint import load_encoder_weights
from .classifier import ClassifierModel
from .data.sources import data_source
from .frozen import FrozenData, FrozenProtocols
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
        plan = self.plan
        ft = with_step_floor(plan.finetune, plan.sources, "finetune")
        train_tf, eval_tf = self.finetune_transforms()
        train_base = self.split(True, train_tf)
        train_set = RunnerSamples(train_base)
        test_base = self.split(False, eval_tf)
        num_classes = len(test_base.classes)
        batch = plan.finetune_batch()
        iters = iters_per_epoch(len(train_set), batch, plan.world_size, len(train_set) >= batch,
                                ft.repeated_aug)
        epochs = ft.epochs_for(iters)
        if epochs != ft.epochs:
            log(f"[finetune] {ft.epochs} epochs of {iters} iterations are fewer than min_steps "
                f"{ft.min_steps}: training {epochs} epochs")
            ft = replace(ft, epochs=epochs)
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
            model, work_dir, train_set, schedule=ft, batch_per_process=batch,
            loader=plan.loader, seed=plan.seed,
            test_dataset=RunnerSamples(test_base), test_evaluator=dict(type="Top1Accuracy"),
            # unique: mmengine shares a message hub (the loss history) between Runners of
            # one name started in one second
            experiment_name=f"finetune_{uuid.uuid4().hex[:8]}")
        runner.train()
        metrics = runner.test()
        out = {"acc1": float(metrics["acc1"]), "finetune_epochs": int(epochs),
               "finetune_steps": int(epochs * iters // max(1, ft.grad_accum))}
        if load_report is not None:
            out["new_keys"] = load_report["missing"]
        self.finetune_warnings(runner, out, train_base.targets, num_classes, ft.smoothing,
                               test_base.targets, log)
        return out

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
