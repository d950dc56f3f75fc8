"""Evaluation metrics of the classification-style tasks, computed by scikit-learn.

Each is an mmengine ``BaseMetric`` over ``{"pred", "label"}`` dicts (what
:class:`tasks.classifier.ClassifierModel` returns in predict mode), registered in
mmengine's ``METRICS`` so that a Runner's ``test_evaluator`` can name it.
"""
from __future__ import annotations

from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

__all__ = ["Top1Accuracy", "SleepStagingMetrics"]


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
