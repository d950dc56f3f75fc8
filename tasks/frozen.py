"""The frozen-encoder protocols as a task option, for every classification-style task.

A task that mixes in :class:`FrozenProtocols` (``cifar100``, ``imagenet``, ``eeg``) and
declares the plan sections ``protocol`` (:class:`engine.plan.ProtocolPlan`) and
``probe`` (:class:`tasks.protocols.LinearProbePlan`) is evaluated, by
``--protocol finetune|linear|knn``, either by its own finetuning or by
:func:`tasks.protocols.probe_encoder` on its frozen encoder. What differs between tasks
is declared, not rewritten:

- :meth:`FrozenProtocols.frozen_data`: the labelled training and test samples (with
  the evaluation transform) and what identifies their features in the cache;
- ``frozen_scores``: the scores each frozen protocol reports (names of
  :data:`tasks.metrics.SCORES`: ``acc1`` for images; ``kappa`` and ``acc1`` for sleep
  staging, whose paper metric is Cohen's kappa);
- ``finetune_metrics`` and ``finetune_accuracy``: the finetuning protocol's metrics and
  which of them is a top-1 accuracy in %.

The rest is one flow: the frozen encoder (:meth:`FrozenProtocols.frozen_encoder`: the
pretrained one exactly as saved, or for a method without pretraining a randomly
initialised one seeded by the run's seed: the floor a pretrained encoder must beat, our
choice), features cached under ``<cache>/features`` by checkpoint + data + split +
pool, and the sanity warnings (:meth:`FrozenProtocols.sanity_warnings`): every
accuracy within noise of the majority-class rate, and a linear probe whose final
training loss is at the class prior, on one line each and in the metrics' ``warnings``.
Kappa gets no such warning: predictions whose accuracy is near the majority rate can
still agree with the labels beyond chance (our choice: the accuracy lines say it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from engine.errors import ConfigError
from engine.plan import stable_hash, with_step_floor
from methods.backbone import build_encoder

from .checkpoint import load_encoder_weights, read_encoder_state
from .protocols import (accuracy_warning, class_prior_loss, feature_cache_key, final_train_loss,
                        frozen_metric_names, loss_warning, majority_rate, probe_encoder)

__all__ = ["FrozenProtocols", "FrozenData", "ProtocolPlan", "PROTOCOLS"]


PROTOCOLS = ("finetune", "linear", "knn")


@dataclass(frozen=True)
class ProtocolPlan:
    """How a classification-style task evaluates an encoder (``--protocol``):
    ``finetune`` (every weight trained, the ``finetune`` section), ``linear`` (a linear
    probe on frozen features, the task's ``probe`` section) or ``knn`` (weighted kNN on
    frozen features, ``knn_k`` neighbours, temperature ``knn_temperature``: DINO's 20
    and 0.07). ``batch_size``: images per forward pass when features are extracted."""
    name: str = "finetune"
    knn_k: int = 20
    knn_temperature: float = 0.07
    batch_size: int = 256


class FrozenData(NamedTuple):
    """What a task gives the frozen protocols: ``train``/``test`` yield ``(x, label)``
    without augmentation; ``key`` holds what makes their features differ besides the
    encoder (data identity, transform, split), hashed into the cache key;
    ``num_classes``: None to read it from ``train.classes`` or the labels."""
    train: object
    test: object
    key: dict
    num_classes: int | None = None


class FrozenProtocols:
    """Mix into a :class:`tasks.base.Task` whose ``sections`` hold ``protocol`` and
    ``probe``; call :meth:`init_protocol` in ``__init__`` and :meth:`frozen` from ``run``
    when ``self.protocol.name != "finetune"``."""

    #: the finetuning protocol's metrics, and the one of them that is a top-1 accuracy (%)
    finetune_metrics: tuple[str, ...] = ("acc1",)
    finetune_accuracy: str | None = "acc1"
    #: the scores of the frozen protocols (:data:`tasks.metrics.SCORES`)
    frozen_scores: tuple[str, ...] = ("acc1",)

    @classmethod
    def protocol_metrics(cls) -> dict[str, tuple[str, ...]]:
        """The metrics of each protocol: ``{"finetune": ..., "knn": ..., "linear": ...}``."""
        return {"finetune": tuple(cls.finetune_metrics),
                **{p: frozen_metric_names(p, cls.frozen_scores) for p in ("knn", "linear")}}

    def init_protocol(self) -> None:
        """``self.protocol`` (the plan's section) and ``self.metric_names`` (its metrics);
        an unknown protocol is one ConfigError line."""
        self.protocol = self.plan.options["protocol"]
        if self.protocol.name not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol.name!r} for task {self.plan.task}; "
                              f"expected one of: {', '.join(PROTOCOLS)}")
        self.metric_names = self.protocol_metrics()[self.protocol.name]

    def accuracy_metrics(self) -> tuple[str, ...]:
        """The metrics of this run's protocol that are top-1 accuracies in %."""
        if self.protocol.name == "finetune":
            return (self.finetune_accuracy,) if self.finetune_accuracy else ()
        if "acc1" not in self.frozen_scores:
            return ()
        return frozen_metric_names(self.protocol.name, ("acc1",))

    def frozen_data(self, log=print) -> FrozenData:
        raise NotImplementedError(f"task {self.plan.task} has no frozen protocols")

    # ---------------------------------------------------------------- checks
    def sanity_warnings(self, metrics: dict, test_labels, log, *extra) -> list[str]:
        """The run's sanity warnings (:mod:`tasks.protocols`), each logged on one line:
        ``extra`` (e.g. a loss warning) and every accuracy metric within noise of the
        majority-class rate of ``test_labels``."""
        n, majority = len(test_labels), majority_rate(test_labels)
        found = [w for w in extra if w]
        for name in self.accuracy_metrics():
            w = accuracy_warning(name, metrics[name], n, majority)
            if w:
                found.append(w)
        for w in found:
            log(f"[warning] {self.plan.task}: {w}")
        return found

    def finetune_warnings(self, runner, metrics: dict, train_labels, num_classes: int,
                          smoothing: float, test_labels, log) -> None:
        """After a finetuning on ``runner``: ``metrics["final_train_loss"]`` (the mean loss
        of its last epoch) and ``metrics["warnings"]`` (:meth:`sanity_warnings` with the
        loss at the class prior of ``train_labels`` as the extra check)."""
        final = final_train_loss(runner, len(runner.train_dataloader))
        metrics["final_train_loss"] = final
        prior = class_prior_loss(train_labels, num_classes, smoothing)
        metrics["warnings"] = self.sanity_warnings(metrics, test_labels, log,
                                                   loss_warning(final, prior))

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
        has_pos = "pos_embed" in read_encoder_state(path)
        encoder = build_encoder(**{**plan.encoder.as_kwargs(),
                                   "pos_embed": "learn" if has_pos else "none"})
        load_encoder_weights(encoder, path, allowed_new=(), log=log)
        st = path.stat()
        return encoder, f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}", f"pretrained {path}"

    def frozen(self, pretrained, work_dir, log=print) -> dict:
        """Evaluate the frozen encoder by the plan's protocol (``knn`` or ``linear``):
        the metrics of :meth:`protocol_metrics`, ``frozen_encoder``, ``warnings``, and
        for the probe ``final_train_loss``, ``probe_epochs``, ``probe_steps``."""
        plan, proto = self.plan, self.protocol
        data = self.frozen_data(log)
        encoder, ident, what = self.frozen_encoder(pretrained, log)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        encoder.to(device)
        info: dict = {}
        out = probe_encoder(encoder, data.train, data.test, proto.name, batch_size=proto.batch_size,
                            device=device, num_workers=plan.loader.num_workers,
                            num_classes=data.num_classes, k=proto.knn_k,
                            temperature=proto.knn_temperature, work_dir=work_dir,
                            schedule=with_step_floor(plan.options["probe"], plan.sources, "probe"),
                            loader=plan.loader, seed=plan.seed,
                            cache_dir=self.cache_root / "features",
                            cache_key=feature_cache_key(checkpoint=ident, **data.key), log=log,
                            info=info, scores=self.frozen_scores)
        out["frozen_encoder"] = what
        extra = []
        if proto.name == "linear":
            out.update(final_train_loss=info["final_loss"], probe_epochs=info["epochs"],
                       probe_steps=info["steps"])
            prior = class_prior_loss(info["train_labels"], info["num_classes"])
            extra.append(loss_warning(info["final_loss"], prior))
        out["warnings"] = self.sanity_warnings(out, info["test_labels"], log, *extra)
        return out
