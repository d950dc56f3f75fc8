"""The linear probe: one ``nn.Linear`` (:class:`LinearProbe`) trained on features computed
once from the frozen encoder, on mmengine's Runner (:func:`train_linear_probe`), under
the task's ``probe`` section (:class:`LinearProbePlan`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.utils.data as tud

from engine.plan import _Schedule, iters_per_epoch
from engine.runner import SuiteModel, build_runner

from ..base import RunnerSamples
from ..metrics import PredictionScores, check_scores
from .sanity import final_train_loss

#: the features the linear probe reads: [CLS] and the mean of the patch tokens
LINEAR_POOL = "cls+avg"


@dataclass(frozen=True)
class LinearProbePlan(_Schedule):
    """The linear probe's schedule, with the fields :func:`engine.runner.build_runner`
    reads. Epochs 100, no weight decay, cosine decay to 0 with no warmup, lr scaled
    as lr x global batch / 256 are DINO's ``eval_linear.py`` (lines 103-109, 265-269).
    The optimizer is AdamW, since ``build_runner`` trains with AdamW, not DINO's SGD
    (momentum 0.9): base lr 1e-3 (numerically DINO's default, which was tuned for
    SGD), betas (0.9, 0.999) and global batch 256 are our choices. The decay is per
    iteration (build_runner's), DINO's per epoch.

    ``standardize`` (our choice, on by default): every feature dimension is shifted and
    scaled by the training features' mean and standard deviation (+1e-6 in the
    variance), a fixed affine map computed once, so the probe stays one linear layer
    without BatchNorm. MAE's ``main_linprobe.py`` (facebookresearch/mae, commit 6a2ba40)
    puts a ``BatchNorm1d(affine=False, eps=1e-6)`` before its head for the same reason:
    frozen ViT features share a large common offset and small per-dimension spread
    (on the tiny preset: spread 0.1 around 0.5), which a linear layer trained for a few
    hundred steps does not get past."""
    epochs: int = 100
    global_batch_size: int = 256
    base_lr: float = 1e-3
    lr_reference_batch: int | None = 256
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_epochs: float = 0
    min_lr: float = 0.0
    grad_accum: int = 1
    min_steps: int | None = None  # a floor in optimizer steps (_Schedule.epochs_for)
    # standardise each feature by the training split's mean and std (computed once)
    standardize: bool = True


class LinearProbe(SuiteModel):
    """One ``nn.Linear`` on precomputed frozen features (no BatchNorm), trained with
    cross-entropy. Weights ~ N(0, 0.01^2), bias 0, as DINO's ``LinearClassifier``
    (eval_linear.py lines 242-244), drawn from a generator seeded with ``seed``.
    Inputs are ``{"inputs": (B, d) features, "data_samples": (B,) labels}``;
    predictions are the dicts :class:`tasks.metrics.PredictionScores` reads."""

    def __init__(self, dim: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=gen) * 0.01)
            self.linear.bias.zero_()
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, inputs, data_samples=None, mode: str = "loss"):
        logits = self.linear(inputs.float())
        if mode == "loss":
            return {"loss": self.criterion(logits, data_samples.long())}
        preds = logits.argmax(dim=-1)
        return [{"pred": p, "label": y} for p, y in zip(preds.tolist(), data_samples.tolist())]


def _feature_samples(feats: torch.Tensor, labels: torch.Tensor) -> RunnerSamples:
    return RunnerSamples(tud.TensorDataset(feats.float().cpu().contiguous(),
                                           labels.to(torch.int64).cpu()))


def train_linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                       test_labels: torch.Tensor, num_classes: int, work_dir: str | Path,
                       schedule: LinearProbePlan | None = None, batch_per_process: int | None = None,
                       loader=None, seed: int = 0, log=print, scores=("acc1",)) -> dict:
    """Train a :class:`LinearProbe` on cached features and score it: ``{<score>: value
    for each of scores (default: "acc1", top-1 %), "final_loss": mean training loss of
    the last epoch, "epochs", "steps"}``.

    The features are held in memory as a tensor data set (read every epoch, never
    recomputed) and trained on mmengine's Runner by :func:`engine.runner.build_runner`
    with ``schedule`` (default :class:`LinearProbePlan`), ``batch_per_process``
    (default: the schedule's global batch over ``WORLD_SIZE``), and ``loader``'s log
    interval (default 50). The loader runs in the main process: the samples are
    already tensors, workers would only add start-up time (our choice). ``work_dir``
    belongs to this probe alone: the Runner resumes from the last checkpoint it finds
    there. The scores are :class:`tasks.metrics.PredictionScores` on the test features.
    With ``schedule.min_steps``, epochs are raised so that the probe takes at least
    that many optimizer steps (:meth:`engine.plan._Schedule.epochs_for`).
    """
    schedule = schedule or LinearProbePlan()
    scores = check_scores(scores)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_per_process is None:
        batch_per_process = schedule.batch_per_process(world)
    iters = iters_per_epoch(len(train_feats), batch_per_process, world,
                            len(train_feats) >= batch_per_process, 1)
    epochs = schedule.epochs_for(iters)
    if epochs != schedule.epochs:
        log(f"linear probe: {schedule.epochs} epochs of {iters} steps are fewer than min_steps "
            f"{schedule.min_steps}: training {epochs} epochs")
        schedule = replace(schedule, epochs=epochs)
    if schedule.standardize:
        mean = train_feats.float().mean(dim=0)
        std = (train_feats.float().var(dim=0, unbiased=False) + 1e-6).sqrt()
        train_feats = (train_feats.float() - mean) / std
        test_feats = (test_feats.float() - mean) / std
    loader = SimpleNamespace(num_workers=0, log_interval=getattr(loader, "log_interval", 50))
    model = LinearProbe(train_feats.shape[1], num_classes, seed=seed)
    log(f"linear probe: {train_feats.shape[1]}-d features, {len(train_feats)} train / "
        f"{len(test_feats)} test, {num_classes} classes, {schedule.epochs} epochs, "
        f"lr {schedule.lr:g} ({schedule.lr_rule})")
    runner = build_runner(
        model, work_dir, _feature_samples(train_feats, train_labels), schedule=schedule,
        batch_per_process=batch_per_process, loader=loader, seed=seed,
        test_dataset=_feature_samples(test_feats, test_labels),
        test_evaluator=dict(type=PredictionScores.__name__, names=list(scores)),
        # the probe has no ``encoder`` for the layer-decay constructor to group
        optim_constructor="DefaultOptimWrapperConstructor",
        # unique: mmengine shares a message hub between Runners of one name and second
        experiment_name="linear_probe",
        # a probe's epochs are a few steps each (an EEG probe: 1000 epochs of one step):
        # about ten checkpoints a run, not one an epoch (the last epoch is always saved)
        checkpoint_every=math.ceil(schedule.epochs / 10))
    runner.train()
    metrics = runner.test()
    return {**{s: float(metrics[s]) for s in scores}, "final_loss": final_train_loss(runner, iters),
            "epochs": int(schedule.epochs), "steps": int(schedule.epochs * iters)}
