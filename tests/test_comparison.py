"""distdiff.training.comparison: the paired difference, its 95% interval and the minimum detectable effect."""

import math

import pytest

from distdiff.training.comparison import ComparisonError, minimum_detectable_effect, paired_difference


def test_the_interval_is_students_t_over_the_paired_differences():
    # differences 1, 2, 3: mean 2, sd 1, n 3; t(0.975, 2) = 4.302653 (any t table), half-width 4.302653 / sqrt(3)
    result = paired_difference({1: 91.0, 2: 93.0, 3: 95.0}, {1: 90.0, 2: 91.0, 3: 92.0, 4: 50.0})
    assert result.replicates == (1, 2, 3)  # replicate 4 has no pair: left out, not averaged
    assert result.mean == pytest.approx(2.0)
    assert (result.low, result.high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))
    assert result.verdict.startswith("no difference > ")  # the interval [-0.48, 4.48] holds 0
    assert result.format() == "+2.00 [-0.48, +4.48] (n=3, MDE 3.26)"


def test_pairing_removes_what_the_replicates_share():
    # Replicates differ by 10 points between themselves, but the candidate is 1 point above in each: unpaired
    # intervals would overlap; paired, the difference is exactly +1 with no spread.
    base = {1: 80.0, 2: 90.0, 3: 70.0}
    result = paired_difference({r: v + 1.0 for r, v in base.items()}, base)
    assert (result.mean, result.low, result.high, result.mde) == pytest.approx((1.0, 1.0, 1.0, 0.0))
    assert result.verdict == "better"
    assert paired_difference(base, {r: v + 1.0 for r, v in base.items()}).verdict == "worse"


@pytest.mark.parametrize("n, effect", [(2, 11.549889754978167), (3, 3.264043552819638), (5, 1.6819970833232674), (10, 0.9960019107624178)])
def test_the_minimum_detectable_effect_matches_statsmodels(n, effect):
    # statsmodels 0.14 TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided"): the
    # standardized effect (sd 1) a paired t-test detects with 80% power; large n tends to (1.960 + 0.842) / sqrt(n).
    assert minimum_detectable_effect(1.0, n) == pytest.approx(effect, rel=1e-6)
    assert minimum_detectable_effect(2.5, n) == pytest.approx(2.5 * effect, rel=1e-6)  # it scales with the spread


def test_a_comparison_needs_two_shared_replicates():
    with pytest.raises(ComparisonError, match=r"at least 2 replicates that both methods finished; they share \[1\]"):
        paired_difference({1: 1.0, 2: 2.0}, {1: 1.0, 3: 2.0})
    with pytest.raises(ComparisonError, match="at least 2 replicates"):
        minimum_detectable_effect(1.0, 1)
