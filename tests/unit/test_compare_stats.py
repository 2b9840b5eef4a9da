"""tools/compare_stats.py: mean/std over seeds and the paired gain's 95 % t interval."""

import math

import pytest

from tools.compare_stats import mean_std, paired_gain, summarize, t_quantile_975

PLAIN = [30.0, 31.0, 29.5]
DISTILLED = [32.0, 32.5, 31.0]


def test_mean_std_of_a_known_sample():
    # By hand: mean 95.5 / 3; squared deviations 1/36 + 16/36 + 25/36 = 42/36, / (n - 1) = 7/12.
    out = mean_std(DISTILLED)
    assert out["mean"] == pytest.approx(95.5 / 3)
    assert out["std"] == pytest.approx(math.sqrt(7 / 12))
    assert out["n"] == 3 and out["n_missing"] == 0


def test_paired_gain_interval_of_a_known_sample():
    # Differences 2.0, 1.5, 1.5: mean 5/3, std sqrt((1/9 + 1/36 + 1/36) / 2) = sqrt(1/12),
    # half-width t_{0.975, 2} * sqrt(1/12) / sqrt(3) = 4.302653 / 6 (t from a printed table).
    g = paired_gain(PLAIN, DISTILLED)
    assert g["mean"] == pytest.approx(5 / 3)
    assert g["std"] == pytest.approx(math.sqrt(1 / 12))
    assert g["ci_low"] == pytest.approx(5 / 3 - 4.302653 / 6, abs=1e-6)
    assert g["ci_high"] == pytest.approx(5 / 3 + 4.302653 / 6, abs=1e-6)
    assert g["contains_zero"] is False and g["n"] == 3


def test_interval_that_contains_zero_and_pairs_with_a_nan_left_out():
    g = paired_gain([10.0, 10.0, 10.0, 10.0], [11.0, 9.0, 10.5, float("nan")])
    assert g["n"] == 3 and g["mean"] == pytest.approx(0.5 / 3)
    assert g["contains_zero"] is True


def test_one_pair_has_no_interval_and_unequal_lengths_are_refused():
    g = paired_gain([1.0], [2.0])
    assert g["mean"] == 1.0 and g["std"] is None and g["ci_low"] is None
    with pytest.raises(ValueError, match="not paired"):
        paired_gain([1.0, 2.0], [1.0])


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed")
    for df in (1, 2, 3, 5, 10, 29, 30, 31, 50, 200):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-5), df
    with pytest.raises(ValueError, match="2 samples"):
        t_quantile_975(0)


def test_summarize_pairs_by_seed():
    plain = {1: {"AP": 30.0}, 2: {"AP": 31.0}, 3: {"AP": 29.5}, 9: {"AP": 0.0}}
    kd = {3: {"AP": 31.0}, 1: {"AP": 32.0}, 2: {"AP": 32.5}}  # seed 9 has no pair
    out = summarize(plain, kd, ["AP"])["AP"]
    assert out["gain"]["mean"] == pytest.approx(5 / 3)
    assert out["plain"]["n"] == 3 and out["plain"]["mean"] == pytest.approx(90.5 / 3)
