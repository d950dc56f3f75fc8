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
so): the floor a pretrained encoder must beat (our choice).

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

import torch
from timm.data import create_transform

from engine.errors import ConfigError
from engine.plan import (PROTOCOLS, DataPlan, EncoderPlan, FinetunePlan, LoaderPlan, PretrainPlan,
                         ProtocolPlan, iters_per_epoch, stable_hash, with_step_floor)
from engine.runner import build_runner
from methods.backbone import build_encoder

from .base import RunnerSamples, Task
from .checkpoint import load_encoder_weights
from .classifier import ClassifierModel
from .data.sources import data_source
from .metrics import Top1Accuracy  # noqa: F401  (registers the metric the Runner names)
from .protocols import (LinearProbePlan, accuracy_warning, class_prior_loss, feature_cache_key,
                        final_train_loss, loss_warning, majority_rate, probe_encoder)

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    kind = "classification"
    metric_names = ("acc1",)
    sections = {"data": DataPlan, "encoder": EncoderPlan, "pretrain": PretrainPlan,
                "finetune": FinetunePlan, "loader": LoaderPlan, "protocol": ProtocolPlan,
                "probe": LinearProbePlan}
    #: the metrics of each protocol
    protocol_metrics = {"finetune": ("acc1",), "knn": ("knn_acc1_cls", "knn_acc1_avg"),
                        "linear": ("linear_acc1",)}

    def __init__(self, plan, cache_root):
        super().__init__(plan, cache_root)
        self.dataset = plan.data.dataset
        if self.dataset not in ("cifar100", "imagenet"):
            raise ConfigError(f"classification dataset must be cifar100 or imagenet, "
                              f"got {self.dataset!r}")
        self.name = plan.task
        self.protocol = plan.options["protocol"]
        if self.protocol.name not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol.name!r} for task {plan.task}; "
                              f"expected one of: {', '.join(PROTOCOLS)}")
        self.metric_names = self.protocol_metrics[self.protocol.name]

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
        final_loss = final_train_loss(runner, iters)
        out = {"acc1": float(metrics["acc1"]), "final_train_loss": final_loss,
               "finetune_epochs": int(epochs),
               "finetune_steps": int(epochs * iters // max(1, ft.grad_accum))}
        if load_report is not None:
            out["new_keys"] = load_report["missing"]
        prior = class_prior_loss(train_base.targets, num_classes, ft.smoothing)
        out["warnings"] = self._warnings(
            out, test_base.targets, log,
            loss_warning(final_loss, prior))
        return out

    def _warnings(self, metrics: dict, test_labels, log, *extra) -> list[str]:
        """The run's sanity warnings (:mod:`tasks.protocols`), each logged on one line."""
        n, majority = len(test_labels), majority_rate(test_labels)
        found = [w for w in extra if w]
        for name in self.metric_names:
            w = accuracy_warning(name, metrics[name], n, majority)
            if w:
                found.append(w)
        for w in found:
            log(f"[warning] {self.name}: {w}")
        return found

    # ---------------------------------------------------------------- frozen protocols
    def frozen_encoder(self, pretrained, log=print):
        """(encoder, identity for the feature cache, what it is in words): the pretrained
        encoder exactly as saved (its own position embeddings or none, no head), or for a
        method without pretraining a randomly initialised one, seeded by the run's seed."""
        plan = self.plan
        if pretrained is None:
            kwargs = {**plan.encoder.as_kwargs(),
                      "pos_embed": "learn" if plan.finetune.pos_embed else "none"}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(plan.seed)
                encoder = build_encoder(**kwargs)
            what = (f"random initialisation, seed {plan.seed} (method {plan.method.name} does not "
                    f"pretrain)")
            log(f"[{self.protocol.name}] frozen encoder: {what}")
            return encoder, f"random-{stable_hash(kwargs)}-seed{plan.seed}", what
        path = Path(pretrained) / "encoder.pth"
        from .checkpoint import read_encoder_state

        has_pos = "pos_embed" in read_encoder_state(path)
        encoder = build_encoder(**{**plan.encoder.as_kwargs(),
                                   "pos_embed": "learn" if has_pos else "none"})
        load_encoder_weights(encoder, path, allowed_new=(), log=log)
        st = path.stat()
        return encoder, f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}", f"pretrained {path}"

    def frozen(self, pretrained, work_dir, log=print) -> dict:
        from .data.fingerprint import data_identity

        plan, proto = self.plan, self.protocol
        _, eval_tf = self.finetune_transforms()
        train_set, test_set = self.split(True, eval_tf), self.split(False, eval_tf)
        encoder, ident, what = self.frozen_encoder(pretrained, log)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        encoder.to(device)
        d = plan.data
        key = feature_cache_key(checkpoint=ident, data=data_identity(d.dataset, d.root, d.embedded),
                                img_size=self.img_size, eval_transform=repr(eval_tf))
        info: dict = {}
        out = probe_encoder(encoder, train_set, test_set, proto.name, batch_size=proto.batch_size,
                            device=device, num_workers=plan.loader.num_workers,
                            k=proto.knn_k, temperature=proto.knn_temperature, work_dir=work_dir,
                            schedule=with_step_floor(plan.options["probe"], plan.sources, "probe"),
                            loader=plan.loader, seed=plan.seed,
                            cache_dir=self.cache_root / "features", cache_key=key, log=log,
                            info=info)
        out["frozen_encoder"] = what
        extra = []
        if proto.name == "linear":
            out.update(final_train_loss=info["final_loss"], probe_epochs=info["epochs"],
                       probe_steps=info["steps"])
            prior = class_prior_loss(info["train_labels"], info["num_classes"])
            extra.append(loss_warning(info["final_loss"], prior))
        out["warnings"] = self._warnings(out, info["test_labels"], log, *extra)
        return out
