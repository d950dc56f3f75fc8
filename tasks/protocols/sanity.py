"""Sanity checks of a training and its score: :func:`loss_warning` (a final training loss
still at the class-prior level, :func:`class_prior_loss`) and :func:`accuracy_warning`
(an accuracy within noise of the majority-class rate, :func:`accuracy_interval`).
"""
from __future__ import annotations

import math

import numpy as np
import torch



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
