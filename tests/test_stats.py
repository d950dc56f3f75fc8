"""benchmarks.stats against values computed by hand."""
import math

import pytest

from benchmarks.stats import format_mean_ci, mean_ci, paired_difference, welch_difference

T_975_DF2 = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom (tables)


def test_mean_ci_by_hand():
    mean, std, half = mean_ci([1, 2, 3])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)                       # ddof = 1
    assert half == pytest.approx(T_975_DF2 / math.sqrt(3))  # 2.4841
    assert half == pytest.approx(2.484138, abs=1e-6)


def test_mean_ci_confidence_and_single_value():
    # 90 %: t_{0.95, 2} = 2.919986
    assert mean_ci([1, 2, 3], confidence=0.90)[2] == pytest.approx(2.919986 / math.sqrt(3), rel=1e-6)
    mean, std, half = mean_ci([86.8])
    assert mean == 86.8 and math.isnan(std) and math.isnan(half)
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1, 2], confidence=95)


def test_paired_difference_significant_by_hand():
    # d = a - b = [1, 2, 2]: mean 5/3, std sqrt(1/3), se 1/3, t = 5, df 2
    out = paired_difference([1, 2, 3], [0, 0, 1])
    assert out["mean_diff"] == pytest.approx(5 / 3)
    assert out["t"] == pytest.approx(5.0)
    assert out["df"] == 2 and out["n"] == 3
    # t with 2 df: P(T > t) = 1/2 - t / (2 sqrt(2 + t^2)); two-sided p
    assert out["p"] == pytest.approx(2 * (0.5 - 5 / (2 * math.sqrt(27))), rel=1e-9)
    assert out["half_width"] == pytest.approx(T_975_DF2 / 3)
    assert out["ci_low"] == pytest.approx(5 / 3 - T_975_DF2 / 3)
    assert out["significant"] is True


def test_paired_difference_not_significant():
    out = paired_difference([1, 2, 3], [2, 1, 3])  # d = [-1, 1, 0]
    assert out["mean_diff"] == pytest.approx(0.0)
    assert out["t"] == pytest.approx(0.0)
    assert out["p"] == pytest.approx(1.0)
    assert out["half_width"] == pytest.approx(T_975_DF2 * 1.0 / math.sqrt(3))
    assert out["significant"] is False
    # a large mean difference with a wide interval is not significant either
    out = paired_difference([10, 0, 11], [0, 1, 0])  # d = [10, -1, 11]
    assert out["mean_diff"] > 0 and out["ci_low"] < 0 and out["significant"] is False


def test_paired_difference_degenerate():
    same = paired_difference([1, 2, 3], [1, 2, 3])
    assert same["mean_diff"] == 0 and same["significant"] is False
    shifted = paired_difference([2, 3, 4], [1, 2, 3])  # every seed +1: interval [1, 1]
    assert shifted["half_width"] == pytest.approx(0.0) and shifted["significant"] is True
    one = paired_difference([2.0], [1.0])
    assert one["mean_diff"] == 1.0 and math.isnan(one["p"]) and one["significant"] is False
    with pytest.raises(ValueError, match="welch_difference"):
        paired_difference([1, 2], [1, 2, 3])


def test_welch_difference_by_hand():
    from scipy import stats

    a, b = [1, 2, 3], [4, 6, 8]     # means 2, 6; variances 1, 4
    se = math.sqrt(1 / 3 + 4 / 3)
    df = (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)  # Welch-Satterthwaite: 50/17
    out = welch_difference(a, b)
    assert out["mean_diff"] == pytest.approx(-4.0)
    assert out["t"] == pytest.approx(-4.0 / se)
    assert out["df"] == pytest.approx(50 / 17)
    assert df == pytest.approx(50 / 17)
    assert out["p"] == pytest.approx(2 * stats.t.sf(4.0 / se, df))
    assert out["half_width"] == pytest.approx(stats.t.ppf(0.975, df) * se)
    assert out["significant"] is False                 # p = 0.055: interval reaches past 0
    assert (out["n_a"], out["n_b"]) == (3, 3)
    far = welch_difference([1, 2, 3], [11, 12, 13, 14])
    assert far["significant"] is True and far["ci_high"] < 0
    assert welch_difference([1.0], [2.0, 3.0])["significant"] is False


def test_format_mean_ci():
    assert format_mean_ci([1, 2, 3]) == "2.0 ± 1.0 [-0.5, 4.5]"
    assert format_mean_ci([1, 2, 3], digits=2) == "2.00 ± 1.00 [-0.48, 4.48]"
    assert format_mean_ci([86.8]) == "86.8"
    assert format_mean_ci([86.84], digits=2) == "86.84"
