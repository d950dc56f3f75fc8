"""Frozen-encoder evaluation protocols: weighted kNN and a linear probe.

One module a concern (:mod:`.features`, :mod:`.knn`, :mod:`.probe`, :mod:`.sanity`);
this module composes them into one evaluation (:func:`probe_encoder`).

Both read the pretrained encoder as it is (finetuning changes every weight):

- **kNN** (:func:`knn_classify`, :func:`knn_accuracy`): DINO's weighted k-nearest-
  neighbour vote on L2-normalised features, no training at all.
- **linear probe** (:class:`LinearProbe`, :func:`train_linear_probe`): one
  ``nn.Linear`` trained on features computed once from the frozen encoder, on
  mmengine's Runner through :func:`engine.runner.build_runner`.

:func:`extract_features` gives the encoder's ``forward_features`` output (after its
final norm) pooled by ``pool`` (:data:`POOLS`: ``"cls"``, ``"avg"``, ``"cls+avg"``),
in the data set's order, in eval mode, without gradients. :func:`cached_features`
keeps features on disk, one ``.pt`` per key (:func:`feature_cache_key`), written
atomically.

:func:`probe_encoder` runs one protocol and returns metrics with fixed names
(:func:`frozen_metric_names`), one per score of ``scores`` (names of
:data:`tasks.metrics.SCORES`), computed by scikit-learn from the predictions:
``protocol="knn"`` gives ``knn_<score>_cls`` and ``knn_<score>_avg``;
``protocol="linear"`` gives ``linear_<score>`` of a probe on ``[CLS] ‖ mean of patch
tokens`` (:data:`LINEAR_POOL`). An unknown protocol or pool, or a linear probe without
``work_dir``, raises ValueError. :func:`loss_warning` and :func:`accuracy_warning` are
the sanity checks (a loss at the class-prior level, an accuracy within noise of the
majority-class rate).

Details: docs/reference/classification.md.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..metrics import check_scores, score_predictions
from .features import POOLS, _extract_pools, cached_features, extract_features, feature_cache_key
from .knn import KNN_K, KNN_POOLS, KNN_TEMPERATURE, knn_accuracy, knn_classify
from .probe import LINEAR_POOL, LinearProbe, LinearProbePlan, train_linear_probe
from .sanity import (LOSS_PRIOR_FRACTION, NOISE_CONFIDENCE, accuracy_interval, accuracy_warning,
                     class_prior_loss, final_train_loss, loss_warning, majority_rate)

__all__ = ["POOLS", "KNN_K", "KNN_TEMPERATURE", "LINEAR_POOL", "extract_features", "knn_classify",
           "knn_accuracy", "LinearProbe", "LinearProbePlan", "train_linear_probe", "probe_encoder",
           "frozen_metric_names", "KNN_POOLS",
           "cached_features", "feature_cache_key", "final_train_loss", "class_prior_loss",
           "majority_rate", "accuracy_interval", "LOSS_PRIOR_FRACTION", "NOISE_CONFIDENCE",
           "loss_warning", "accuracy_warning"]


def frozen_metric_names(protocol: str, scores=("acc1",)) -> tuple[str, ...]:
    """The metrics :func:`probe_encoder` returns for ``protocol`` and ``scores``:
    ``knn``: ``knn_<score>_<pool>`` for each pool of :data:`KNN_POOLS`, scores within a
    pool in their order (``("knn_kappa_cls", "knn_acc1_cls", "knn_kappa_avg", ...)``);
    ``linear``: ``linear_<score>``."""
    scores = check_scores(scores)
    if protocol == "knn":
        return tuple(f"knn_{s}_{pool}" for pool in KNN_POOLS for s in scores)
    if protocol == "linear":
        return tuple(f"linear_{s}" for s in scores)
    raise ValueError(f"protocol must be 'knn' or 'linear', got {protocol!r}")


# ------------------------------------------------------------------------ one call: the evaluator
def _num_classes(train_set, *label_sets: torch.Tensor) -> int:
    classes = getattr(train_set, "classes", None)
    if classes is not None:
        return len(classes)
    return int(max(int(lab.max()) for lab in label_sets)) + 1


def _not_cached():
    raise FileNotFoundError("a feature file went missing while it was read")


def _split_features(encoder, dataset, split: str, pools: tuple[str, ...], batch_size: int, device,
                    num_workers: int, cache_dir, cache_key: str | None):
    """{pool: features}, labels for one split; with a cache, one encoder pass computes
    every pool that is not cached yet (cls and avg stored apart; cls+avg is their
    concatenation)."""
    stored = tuple(dict.fromkeys(p for pool in pools for p in (("cls", "avg") if pool == "cls+avg"
                                                                 else (pool,))))
    if cache_dir is None or cache_key is None:
        feats, labels = _extract_pools(encoder, dataset, stored, batch_size, device, num_workers)
    else:
        keys = {p: f"{cache_key}__{split}__{p}" for p in stored}
        missing = [p for p in stored if not (Path(cache_dir) / f"{keys[p]}.pt").is_file()]
        if missing:  # one pass for every pool (cheaper than reading some back)
            feats, labels = _extract_pools(encoder, dataset, stored, batch_size, device, num_workers)
            for p in missing:
                cached_features(cache_dir, keys[p], lambda p=p: (feats[p], labels))
        else:
            loaded = {p: cached_features(cache_dir, keys[p], _not_cached) for p in stored}
            feats = {p: loaded[p][0] for p in stored}
            labels = loaded[stored[0]][1]
    out = {}
    for pool in pools:
        out[pool] = torch.cat([feats["cls"], feats["avg"]], dim=1) if pool == "cls+avg" else feats[pool]
    return out, labels


def probe_encoder(encoder: nn.Module, train_set, test_set, protocol: str, *, batch_size: int = 256,
                  device=None, num_workers: int = 0, num_classes: int | None = None,
                  k: int = KNN_K, temperature: float = KNN_TEMPERATURE, work_dir: str | Path | None = None,
                  schedule: LinearProbePlan | None = None, batch_per_process: int | None = None,
                  loader=None, seed: int = 0, cache_dir: str | Path | None = None,
                  cache_key: str | None = None, log=print, info: dict | None = None,
                  scores=("acc1",)) -> dict:
    """Evaluate a frozen ``encoder`` with one protocol; metrics with fixed names
    (:func:`frozen_metric_names` of ``protocol`` and ``scores``).

    ``protocol="knn"``: ``{"knn_<score>_cls", "knn_<score>_avg"}``, the scores of
    :func:`knn_classify`'s predictions (k, temperature) on [CLS] and on the mean patch
    token (the vote runs on ``device``). ``protocol="linear"``: ``{"linear_<score>"}``,
    :func:`train_linear_probe` on ``[CLS] ‖ mean patch token`` (:data:`LINEAR_POOL`) in
    ``work_dir``. ``scores``: names of :data:`tasks.metrics.SCORES` (default ``acc1``).

    ``train_set``/``test_set`` yield ``(x, label)`` with evaluation transforms (no
    augmentation: features are computed once). With ``cache_dir`` and ``cache_key``
    (e.g. :func:`feature_cache_key` of the checkpoint and data), features are kept as
    ``<cache_key>__<split>__<pool>.pt`` and the next protocol reuses them. The encoder's
    weights and train/eval mode are left as they were.

    ``info``: a dict that receives what the sanity checks need: ``train_labels``,
    ``test_labels``, ``num_classes``, and for the linear probe ``final_loss``,
    ``epochs`` and ``steps`` (:func:`train_linear_probe`).
    """
    scores = check_scores(scores)
    if protocol == "knn":
        pools: tuple[str, ...] = KNN_POOLS
    elif protocol == "linear":
        pools = (LINEAR_POOL,)
        if work_dir is None:
            raise ValueError("the linear probe needs a work_dir (its Runner's checkpoints and logs)")
    else:
        raise ValueError(f"protocol must be 'knn' or 'linear', got {protocol!r}")
    args = (batch_size, device, num_workers, cache_dir, cache_key)
    train, train_labels = _split_features(encoder, train_set, "train", pools, *args)
    test, test_labels = _split_features(encoder, test_set, "test", pools, *args)
    if num_classes is None:
        num_classes = _num_classes(train_set, train_labels, test_labels)
    if info is not None:
        info.update(train_labels=train_labels, test_labels=test_labels, num_classes=num_classes)
    if protocol == "knn":
        vote_device = device if device is not None else next(encoder.parameters()).device
        out = {}
        for pool in pools:
            preds = knn_classify(train[pool].to(vote_device), train_labels, test[pool].to(vote_device),
                                 k=k, temperature=temperature, num_classes=num_classes)
            got = score_predictions(test_labels.numpy(), preds.cpu().numpy(), scores)
            out.update({f"knn_{s}_{pool}": v for s, v in got.items()})
        return out
    result = train_linear_probe(train[LINEAR_POOL], train_labels, test[LINEAR_POOL], test_labels,
                                num_classes, work_dir, schedule=schedule,
                                batch_per_process=batch_per_process, loader=loader, seed=seed, log=log,
                                scores=scores)
    if info is not None:
        info.update({k: result[k] for k in ("final_loss", "epochs", "steps")})
    return {f"linear_{s}": result[s] for s in scores}
