"""Frozen-encoder evaluation protocols: weighted kNN and a linear probe.

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

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.data as tud

from engine.atomic import atomic_torch_save
from engine.plan import _Schedule, iters_per_epoch, stable_hash
from engine.runner import SuiteModel, build_runner

from .base import RunnerSamples
from .metrics import PredictionScores, check_scores, score_predictions

__all__ = ["POOLS", "KNN_K", "KNN_TEMPERATURE", "LINEAR_POOL", "extract_features", "knn_classify",
           "knn_accuracy", "LinearProbe", "LinearProbePlan", "train_linear_probe", "probe_encoder",
           "frozen_metric_names", "KNN_POOLS",
           "cached_features", "feature_cache_key", "final_train_loss", "class_prior_loss",
           "majority_rate", "accuracy_interval", "LOSS_PRIOR_FRACTION", "NOISE_CONFIDENCE",
           "loss_warning", "accuracy_warning"]

POOLS = ("cls", "avg", "cls+avg")
#: DINO's kNN protocol (eval_knn.py): k = 20 ("20 is usually working the best"), T = 0.07
KNN_K = 20
KNN_TEMPERATURE = 0.07
#: the features the linear probe reads (see the module docstring)
LINEAR_POOL = "cls+avg"
#: the features kNN votes on, one vote each
KNN_POOLS = ("cls", "avg")


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


# ------------------------------------------------------------------------ features
def _pool_tokens(tokens: torch.Tensor, pool: str, num_prefix_tokens: int) -> torch.Tensor:
    """``forward_features`` output ``(B, prefix + N, d)`` -> ``(B, d)`` (``(B, 2d)`` for cls+avg)."""
    cls = tokens[:, 0]
    avg = tokens[:, num_prefix_tokens:].mean(dim=1)
    if pool == "cls":
        return cls
    if pool == "avg":
        return avg
    return torch.cat([cls, avg], dim=1)


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


def _extract_pools(encoder: nn.Module, dataset, pools: tuple[str, ...], batch_size: int,
                   device=None, num_workers: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One pass over ``dataset``: ``{pool: (n, d) float32}`` on the CPU, and labels ``(n,)`` int64."""
    for pool in pools:
        _check_pool(pool)
    if device is None:
        device = next(encoder.parameters()).device
    device = torch.device(device)
    param_device = next(encoder.parameters()).device
    if param_device != device:
        raise ValueError(f"the encoder's weights are on {param_device}, features were asked on {device}: "
                         f"move the encoder first (encoder.to({str(device)!r}))")
    loader = tud.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                            num_workers=num_workers)
    prefix = int(encoder.num_prefix_tokens)
    out: dict[str, list[torch.Tensor]] = {p: [] for p in pools}
    labels: list[torch.Tensor] = []
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for x, y in loader:
                tokens = encoder.forward_features(x.to(device, non_blocking=True)).float()
                for pool in pools:
                    out[pool].append(_pool_tokens(tokens, pool, prefix).cpu())
                labels.append(torch.as_tensor(y).reshape(-1).to(torch.int64))
    finally:
        encoder.train(was_training)
    if not labels:
        raise ValueError("cannot extract features from an empty data set")
    return {p: torch.cat(v).contiguous() for p, v in out.items()}, torch.cat(labels)


def extract_features(encoder: nn.Module, dataset, batch_size: int, pool: str = "cls", device=None,
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of every sample of ``dataset`` (which yields ``(x, label)``).

    ``encoder``: a timm ``VisionTransformer`` (our :class:`methods.backbone.ViTEncoder`,
    with or without position embeddings). Its ``forward_features`` output (after the
    final norm) is pooled: ``cls`` = token 0, ``avg`` = mean of the tokens after the
    ``encoder.num_prefix_tokens`` prefix tokens, ``cls+avg`` = both concatenated.
    Eval mode (restored afterwards), no gradients, the data set's order. ``device``:
    where the encoder runs (None: where its weights are; they are never moved here).

    Returns ``(features float32 (n, d), labels int64 (n,))``, both on the CPU.
    """
    feats, labels = _extract_pools(encoder, dataset, (pool,), batch_size, device, num_workers)
    return feats[pool], labels


# ------------------------------------------------------------------------ cache
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


def feature_cache_key(**parts) -> str:
    """A file-name-safe key for :func:`cached_features` from what makes features differ:
    e.g. ``feature_cache_key(checkpoint=..., data=..., split="train", pool="cls",
    img_size=32)``. Readable prefix (split and pool when given) + a hash of all parts."""
    readable = [str(parts[k]) for k in ("split", "pool") if k in parts]
    readable = [re.sub(r"[^A-Za-z0-9.=+-]", "-", r) for r in readable]
    return "__".join(["feat", *readable, stable_hash(parts, n=16)])


def cached_features(cache_dir: str | Path | None, key: str, compute_fn: Callable[[], object]):
    """``compute_fn()``'s result (tensors, or tuples/dicts of tensors), kept in
    ``cache_dir/<key>.pt``: read when the file exists, else computed and written
    atomically (temporary file + ``os.replace``: a killed run leaves no half file).
    ``cache_dir=None`` computes without caching. ``key`` must be a plain file name."""
    if cache_dir is None:
        return compute_fn()
    if not _KEY.match(key):
        raise ValueError(f"feature cache key must be a plain file name ([A-Za-z0-9._=+-]), got {key!r}")
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute_fn()
    atomic_torch_save(value, path)
    return value


# ------------------------------------------------------------------------ kNN
@torch.no_grad()
def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 k: int = KNN_K, temperature: float = KNN_TEMPERATURE, num_classes: int | None = None,
                 chunk: int = 256) -> torch.Tensor:
    """Weighted kNN predictions ``(n_test,)`` int64, on ``test_feats``' device.

    DINO's protocol, as its public ``eval_knn.py`` does it (facebookresearch/dino,
    commit 7c446df, checked for this function): features are L2-normalised (lines
    81-82), similarity is their dot product, i.e. the cosine (line 158), the ``k``
    most similar training samples vote (line 159) with weight ``exp(sim / T)``
    (line 165) summed per class (lines 166-172), and the class with the largest sum
    wins (line 173). Defaults k = 20 and T = 0.07: its ``--nb_knn`` (20 among 10, 20,
    100, 200; "20 is usually working the best", lines 194-195) and ``--temperature``
    (line 196). ``k`` larger than the training set is clipped to its size (our choice;
    DINO's ``topk`` would fail). Ties go to the lowest class index (``argmax``).

    ``chunk`` test samples are scored at a time, so memory is ``chunk x n_train``
    similarities whatever the test set's size; predictions do not depend on it.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be (n, d) with one d, got {tuple(train_feats.shape)} and "
                         f"{tuple(test_feats.shape)}")
    if len(train_labels) != len(train_feats):
        raise ValueError(f"{len(train_feats)} training features but {len(train_labels)} labels")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    device = test_feats.device
    train = F.normalize(train_feats.float().to(device), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    labels = train_labels.to(device=device, dtype=torch.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    k = min(int(k), train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start:start + chunk] @ train.T                # (b, n_train) cosines
        top_sim, top_idx = sim.topk(k, dim=1, largest=True, sorted=True)
        weights = (top_sim / temperature).exp()                  # (b, k)
        votes = torch.zeros(top_sim.shape[0], num_classes, device=device, dtype=weights.dtype)
        votes.scatter_add_(1, labels[top_idx], weights)          # (b, classes)
        preds.append(votes.argmax(dim=1))
    if not preds:
        return torch.zeros(0, dtype=torch.int64, device=device)
    return torch.cat(preds)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = KNN_K, temperature: float = KNN_TEMPERATURE,
                 num_classes: int | None = None, chunk: int = 256) -> float:
    """Top-1 accuracy (%) of :func:`knn_classify`, by scikit-learn's ``accuracy_score``."""
    preds = knn_classify(train_feats, train_labels, test_feats, k=k, temperature=temperature,
                         num_classes=num_classes, chunk=chunk)
    return score_predictions(test_labels.cpu().numpy(), preds.cpu().numpy(), ("acc1",))["acc1"]


# ------------------------------------------------------------------------ linear probe
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


# ------------------------------------------------------------------------ sanity checks
#: A final training loss at or above this fraction of the class-prior loss means the
#: model learnt (next to) nothing (our choice: on the tiny preset's embedded data, runs
#: that reach 76-92 % end at 0.80-0.88 of it under DeiT's Mixup/CutMix recipe).
LOSS_PRIOR_FRACTION = 0.95
#: The confidence of the accuracy interval that "within noise" is judged by.
NOISE_CONFIDENCE = 0.95


def final_train_loss(runner, last_iters: int) -> float | None:
    """Mean training loss over the last ``last_iters`` iterations (the last epoch) as
    the Runner's message hub logged them (``train/loss``), or None if none was."""
    try:
        values = runner.message_hub.get_scalar("train/loss").data[0]
    except KeyError:
        return None
    if len(values) == 0:
        return None
    return float(np.mean(values[-max(1, int(last_iters)):]))


def class_prior_loss(labels, num_classes: int, smoothing: float = 0.0) -> float:
    """The training loss (nats) of the best constant prediction: the entropy of the mean
    training target ``q = (1 - smoothing) p + smoothing / C``, with ``p`` the label
    frequencies of ``labels`` over ``C = num_classes`` classes. Mixup/CutMix with label
    smoothing (timm's targets) and label-smoothed cross-entropy both have this mean
    target; plain cross-entropy is ``smoothing = 0``: H(p)."""
    counts = torch.bincount(torch.as_tensor(labels).long().reshape(-1), minlength=num_classes)
    p = counts.double() / counts.sum()
    q = (1.0 - smoothing) * p + smoothing / num_classes
    q = q[q > 0]
    return float(-(q * q.log()).sum())


def majority_rate(labels) -> float:
    """The accuracy of always predicting ``labels``' most frequent class (a fraction)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    return float(torch.bincount(labels).max()) / len(labels)


def accuracy_interval(correct: int, n: int, confidence: float = NOISE_CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of an accuracy of ``correct`` / ``n``,
    as fractions: ``low = Beta((1-c)/2; k, n-k+1)`` (0 when k = 0), ``high =
    Beta((1+c)/2; k+1, n-k)`` (1 when k = n). For k = n: low = ((1-c)/2)^(1/n)."""
    from scipy.stats import beta

    k, n = int(correct), int(n)
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got {k} of {n}")
    a = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return low, high


def accuracy_warning(metric: str, acc: float, n: int, majority: float,
                     confidence: float = NOISE_CONFIDENCE) -> str | None:
    """One line when the accuracy ``acc`` (%) on ``n`` test samples is within noise of
    the majority-class rate ``majority`` (a fraction): the lower end of its
    ``confidence`` Clopper-Pearson interval (:func:`accuracy_interval`) does not exceed
    the majority rate; equivalently, an exact one-sided binomial test cannot say at
    level (1 - confidence) / 2 that the classifier beats always predicting the largest
    class. None otherwise. The line starts with ``"<metric>: "``."""
    k = int(round(float(acc) * n / 100.0))
    low, high = accuracy_interval(k, n, confidence)
    if low > majority:
        return None
    return (f"{metric}: {acc:.1f}% is within noise of the majority-class rate {100 * majority:.1f}% "
            f"({confidence:.0%} Clopper-Pearson interval of {k}/{n} test samples: "
            f"[{100 * low:.1f}, {100 * high:.1f}]%)")


def loss_warning(final_loss: float | None, prior_loss: float,
                 fraction: float = LOSS_PRIOR_FRACTION) -> str | None:
    """One line when the final training loss is still at the class-prior level:
    ``final_loss >= fraction x prior_loss`` (:func:`class_prior_loss`). None otherwise,
    or when no loss was logged. The line starts with ``"training: "``."""
    if final_loss is None or not math.isfinite(final_loss):
        return None
    if final_loss < fraction * prior_loss:
        return None
    return (f"training: final training loss {final_loss:.3f} is at the class-prior level "
            f"{prior_loss:.3f} (>= {fraction:.0%} of it): the model learnt (next to) nothing")


# ------------------------------------------------------------------------ one call
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
