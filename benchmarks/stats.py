"""Interval statistics over seeds, for rankings a reader can check.

A table cell is a handful of seeds; its mean alone does not say whether one row beats
another. These helpers give Student-t intervals and tests, all from scipy:

- :func:`mean_ci`: mean, sample standard deviation (ddof = 1) and the half width of
  the t confidence interval of the mean, ``t_{(1+c)/2, n-1} x std / sqrt(n)``;
- :func:`paired_difference`: rows measured on the same seeds (same pretraining and
  finetuning seeds, so seed-to-seed noise is shared): paired t-test
  (``scipy.stats.ttest_rel``) and the interval of the mean difference;
- :func:`welch_difference`: rows that do not share seeds: Welch's unequal-variance
  t-test (``scipy.stats.ttest_ind(equal_var=False)``) and its interval;
- :func:`format_mean_ci`: ``"86.8 ± 1.2 [84.1, 89.5]"`` (mean ± std [CI low, CI high]).

A difference is ``significant`` only when its confidence interval excludes 0 (at
confidence 0.95, the same as p < 0.05 for the two-sided test). With one value (one
seed) there is no spread: std, half widths, t and p are NaN and nothing is
significant. Differences with zero spread over >= 2 seeds have an interval of width 0:
significant exactly when the difference is not 0.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["mean_ci", "paired_difference", "welch_difference", "format_mean_ci"]


def _values(values: Sequence[float], what: str = "values") -> np.ndarray:
    arr = np.asarray(list(values), dtype=float).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what}: need at least one value")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, std, half_width)``: std with ddof = 1; the interval is
    ``mean ± half_width`` with ``half_width = t.ppf((1 + confidence) / 2, n - 1) x std /
    sqrt(n)``. One value: ``(value, nan, nan)``."""
    _check_confidence(confidence)
    arr = _values(values)
    mean = float(arr.mean())
    n = arr.size
    if n < 2:
        return mean, math.nan, math.nan
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return mean, std, half


def _difference(mean_diff: float, result, confidence: float, **extra) -> dict:
    with np.errstate(all="ignore"):
        ci = result.confidence_interval(confidence_level=confidence)
    low, high = float(ci.low), float(ci.high)
    half = (high - low) / 2.0
    significant = bool(low > 0.0 or high < 0.0)  # False when the interval is NaN
    return dict(mean_diff=mean_diff, half_width=half, ci_low=low, ci_high=high,
                t=float(result.statistic), p=float(result.pvalue), df=float(result.df),
                significant=significant, **extra)


def _nan_difference(mean_diff: float, **extra) -> dict:
    return dict(mean_diff=mean_diff, half_width=math.nan, ci_low=math.nan, ci_high=math.nan,
                t=math.nan, p=math.nan, df=math.nan, significant=False, **extra)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired comparison of two rows over the same seeds (``a[i]`` and ``b[i]`` share
    seed i): ``mean_diff`` = mean of ``a - b``; ``half_width``, ``ci_low``, ``ci_high``
    of its t interval; ``t``, ``p`` (two-sided) and ``df`` of ``scipy.stats.ttest_rel``;
    ``significant`` when the interval excludes 0; ``n`` pairs."""
    _check_confidence(confidence)
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs one value per seed in both rows, got "
                         f"{a.size} and {b.size}; use welch_difference for rows without shared seeds")
    mean_diff = float((a - b).mean())
    if a.size < 2:
        return _nan_difference(mean_diff, n=int(a.size))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread: t = ±inf or nan
        result = stats.ttest_rel(a, b)
    return _difference(mean_diff, result, confidence, n=int(a.size))


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Comparison of two rows that do not share seeds: Welch's t-test
    (``scipy.stats.ttest_ind(equal_var=False)``) and the Welch-Satterthwaite interval
    of ``mean(a) - mean(b)``. Same keys as :func:`paired_difference`, with ``n_a`` and
    ``n_b`` instead of ``n``. Needs >= 2 values in each row for an interval."""
    _check_confidence(confidence)
    a, b = _values(a, "a"), _values(b, "b")
    mean_diff = float(a.mean() - b.mean())
    sizes = dict(n_a=int(a.size), n_b=int(b.size))
    if a.size < 2 or b.size < 2:
        return _nan_difference(mean_diff, **sizes)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return _difference(mean_diff, result, confidence, **sizes)


def format_mean_ci(values: Sequence[float], digits: int = 1, confidence: float = 0.95) -> str:
    """``"mean ± std [CI low, CI high]"``, e.g. ``"86.8 ± 1.2 [84.1, 89.5]"``; one value:
    just ``"86.8"``."""
    mean, std, half = mean_ci(values, confidence)
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"
