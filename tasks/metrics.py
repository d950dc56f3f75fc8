"""Evaluation metrics of the classification-style tasks, computed by scikit-learn.

Each is an mmengine ``BaseMetric`` over ``{"pred", "label"}`` dicts (what
:class:`tasks.classifier.ClassifierModel` returns in predict mode), registered in
mmengine's ``METRICS`` so that a Runner's ``test_evaluator`` can name it.

:data:`SCORES` names the scores of (labels, predictions) that a task can ask the
frozen-encoder protocols for (:mod:`tasks.protocols`): ``acc1`` (top-1 accuracy, %),
``kappa`` (Cohen's, unweighted), ``macro_f1``; :class:`PredictionScores` computes a
chosen tuple of them in a Runner, :func:`score_predictions` outside one.
"""
from __future__ import annotations

from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

__all__ = ["Top1Accuracy", "SleepStagingMetrics", "SCORES", "check_scores", "score_predictions", "PredictionScores"]

#: score name -> f(labels, predictions): the metric suffixes of the frozen protocols
SCORES = {
    "acc1": lambda labels, preds: 100.0 * float(accuracy_score(labels, preds)),
    "kappa": lambda labels, preds: float(cohen_kappa_score(labels, preds)),
    "macro_f1": lambda labels, preds: float(f1_score(labels, preds, average="macro")),
}


def check_scores(names) -> tuple[str, ...]:
    """``names`` as a tuple, each one of :data:`SCORES` (else a ValueError naming it)."""
    names = tuple(names)
    unknown = [n for n in names if n not in SCORES]
    if unknown or not names:
        raise ValueError(f"scores must be a non-empty tuple of {tuple(SCORES)}, got {names!r}")
    return names


def score_predictions(labels, preds, names) -> dict[str, float]:
    """``{name: SCORES[name](labels, preds)}`` for each of ``names``, in their order."""
    return {n: SCORES[n](labels, preds) for n in check_scores(names)}


class _PredLabelMetric(BaseMetric):
    default_prefix = ""

    def process(self, data_batch, data_samples):
        for out in data_samples:
            self.results.append((int(out["pred"]), int(out["label"])))


@METRICS.register_module()
class Top1Accuracy(_PredLabelMetric):
    """``acc1``: top-1 accuracy in %."""

    def compute_metrics(self, results):
        preds, labels = zip(*results)
        return {"acc1": 100.0 * accuracy_score(labels, preds)}


@METRICS.register_module()
class SleepStagingMetrics(_PredLabelMetric):
    """``kappa`` (Cohen's, unweighted), ``acc`` (%) and ``macro_f1`` over all test epochs."""

    def compute_metrics(self, results):
        preds, labels = zip(*results)
        return {"kappa": float(cohen_kappa_score(labels, preds)),
                "acc": 100.0 * accuracy_score(labels, preds),
                "macro_f1": float(f1_score(labels, preds, average="macro"))}


@METRICS.register_module()
class PredictionScores(_PredLabelMetric):
    """The :data:`SCORES` named by ``names`` (e.g. ``("kappa", "acc1")``), over all test samples."""

    def __init__(self, names=("acc1",), **kwargs):
        super().__init__(**kwargs)
        self.names = check_scores(names)

    def compute_metrics(self, results):
        preds, labels = zip(*results)
        return score_predictions(labels, preds, self.names)
