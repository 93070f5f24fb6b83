"""The one rule for comparing two methods: a paired difference over whole-pipeline replicates.

Replicate r of an experiment is the whole pipeline run with seed r: its own guide, its own
expansion and its own classifier. Two methods are compared replicate by replicate: d_r =
candidate_r - baseline_r. We report the mean of d, its 95% confidence interval (Student's t over
the n replicates, n - 1 degrees of freedom) and the smallest true difference the run could detect,
the minimum detectable effect: the mean difference a two-sided paired t-test at level 0.05 would
find with 80% power given the observed spread of d (noncentral t, no normal approximation). A
method beats another only where the interval excludes 0; where it does not, the honest reading is
"no difference larger than the MDE was detectable", not "no difference".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import optimize, stats

from distdiff.errors import UserError

CONFIDENCE = 0.95  # the interval's level, and the two-sided test's 1 - alpha
POWER = 0.80  # the usual power for a minimum detectable effect (Cohen 1988)


class ComparisonError(UserError):
    """Two methods cannot be compared (no replicate in common, or too few)."""


@dataclass(frozen=True)
class PairedDifference:
    """candidate - baseline over the replicates both have: mean, 95% interval, minimum detectable effect."""

    replicates: tuple[int, ...]
    mean: float
    low: float
    high: float
    mde: float  # smallest true mean difference detectable at POWER (two-sided, level 1 - CONFIDENCE)

    @property
    def n(self) -> int:
        return len(self.replicates)

    @property
    def verdict(self) -> str:
        """'better' / 'worse' where the interval excludes 0, else 'no difference > MDE'."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return f"no difference > {self.mde:.2f}"

    def format(self) -> str:
        """'+1.72 [-0.40, +3.84] (n=5, MDE 2.95)'."""
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] (n={self.n}, MDE {self.mde:.2f})"


def minimum_detectable_effect(sd: float, n: int, *, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """The true mean difference a two-sided one-sample t-test on n paired differences of standard deviation
    `sd` detects with probability `power` at level 1 - `confidence` (noncentral t)."""
    if n < 2:
        raise ComparisonError(f"a detectable effect needs at least 2 replicates, got {n}.")
    if sd == 0:
        return 0.0
    df = n - 1
    critical = stats.t.ppf(1 - (1 - confidence) / 2, df)

    def shortfall(effect: float) -> float:
        noncentrality = effect * math.sqrt(n) / sd
        lower = stats.nct.cdf(-critical, df, noncentrality)
        # scipy returns NaN where this far tail underflows (e.g. df 1, noncentrality 15: ~1e-16), so it counts as 0
        return stats.nct.sf(critical, df, noncentrality) + (0.0 if math.isnan(lower) else lower) - power

    upper = sd
    while shortfall(upper) < 0:  # the power grows with the effect: bracket the root
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-10))


def paired_difference(candidate: dict[int, float], baseline: dict[int, float], *,
                      confidence: float = CONFIDENCE, power: float = POWER) -> PairedDifference:
    """candidate - baseline paired by replicate ({replicate: value}); only replicates both have count."""
    common = tuple(sorted(set(candidate) & set(baseline)))
    if len(common) < 2:
        raise ComparisonError(f"a paired comparison needs at least 2 replicates that both methods finished; they "
                              f"share {list(common)} (candidate {sorted(candidate)}, baseline {sorted(baseline)}).")
    differences = [candidate[r] - baseline[r] for r in common]
    n, mean, sd = len(differences), statistics.fmean(differences), statistics.stdev(differences)
    half = stats.t.ppf(1 - (1 - confidence) / 2, n - 1) * sd / math.sqrt(n)
    return PairedDifference(replicates=common, mean=mean, low=float(mean - half), high=float(mean + half),
                            mde=minimum_detectable_effect(sd, n, confidence=confidence, power=power))
