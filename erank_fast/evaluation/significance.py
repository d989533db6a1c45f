"""Is one ranking better than another on these queries? Paired comparisons of per-query metrics.

With a few dozen queries a difference of a few nDCG points is often noise: the standard error of
a mean over 43 DL19 queries is ~0.04. ``compare`` pairs two rankings' values query by query and
reports the mean difference with the paired t-test's confidence interval and two-sided p-value
(one test, so the interval leaves out 0 exactly when p < 1 − confidence), and beside them the
p-value of a paired randomisation test, which assumes nothing of the differences' distribution
(each query's difference given a random sign; exact over all 2^n signs for n ≤ 13 queries).
The two are the tests IR evaluation relies on and agree closely (Smucker, Allan and Carterette,
CIKM 2007). A bootstrap interval was not taken: over 10 queries (held-out DL21) it came out
narrower than either test implies. Both come from ``scipy.stats``; the randomisation is seeded,
so a report is the same in every run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

RANKINGS = ("first_stage", "reranked", "hybrid", "hybrid_order")
RESAMPLES = 9_999  # scipy's default; 2^13 = 8,192 sign patterns fit, so n <= 13 is exact


@dataclass(frozen=True)
class PairedComparison:
    """b against a over the queries both have: means, b − a with its paired-t confidence
    interval and p-value, and the paired randomisation test's p-value."""

    queries: int
    mean_a: float
    se_a: float
    mean_b: float
    se_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_randomisation: float
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """e.g. '0.5755 ± 0.0398 against 0.5058 ± 0.0387: +0.0697 [-0.0036, +0.1430],
        p 0.0618 (randomisation 0.0600)'."""
        return (f"{self.mean_b:.4f} ± {self.se_b:.4f} against {self.mean_a:.4f} ± "
                f"{self.se_a:.4f}: {self.difference:+.4f} [{self.ci_low:+.4f}, "
                f"{self.ci_high:+.4f}], p {self.p_value:.4f} (randomisation "
                f"{self.p_randomisation:.4f})")


def standard_error(values) -> float:
    """The standard error of the mean (sample standard deviation / √n); 0.0 for one value."""
    values = list(values)
    if not values:
        raise ValueError("standard_error needs at least one value")
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0


def compare(a: Mapping[str, float], b: Mapping[str, float], *, confidence: float = 0.95,
            resamples: int = RESAMPLES, seed: int = 0) -> PairedComparison:
    """b against a, paired by query id over the ids both have (at least 2).

    a, b: {query id: metric value}. The interval (for the mean of b − a, at ``confidence``) and
    ``p_value`` are the paired t-test's, ``p_randomisation`` the paired randomisation test's;
    both p-values two-sided."""
    import numpy as np
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    common = sorted(a.keys() & b.keys())
    if len(common) < 2:
        raise ValueError(f"a paired comparison needs at least 2 queries in common, got "
                         f"{len(common)} (a has {len(a)}, b has {len(b)})")
    x = np.array([a[q] for q in common], dtype=np.float64)
    y = np.array([b[q] for q in common], dtype=np.float64)
    d = y - x
    if np.all(d == d[0]):
        # No spread: the interval is the difference itself (t infinite, or 0/0 for none), and
        # a constant non-zero difference is the most extreme of the 2^n sign patterns.
        low = high = float(d[0])
        p = 1.0 if d[0] == 0 else 0.0
        p_random = 1.0 if d[0] == 0 else min(1.0, 2.0 / 2 ** len(d))
    else:
        t = stats.ttest_rel(y, x)
        interval = t.confidence_interval(confidence_level=confidence)
        low, high, p = float(interval.low), float(interval.high), float(t.pvalue)
        perm = stats.permutation_test((d,), np.mean, permutation_type="samples",
                                      n_resamples=resamples, alternative="two-sided",
                                      rng=np.random.default_rng(seed))
        p_random = float(perm.pvalue)
    return PairedComparison(queries=len(common), mean_a=float(x.mean()), se_a=standard_error(x),
                            mean_b=float(y.mean()), se_b=standard_error(y),
                            difference=float(d.mean()), ci_low=low, ci_high=high, p_value=p,
                            p_randomisation=p_random, confidence=confidence)


def per_query(result: Mapping, ranking: str, metric: str) -> dict[str, float]:
    """{query id: value} of one ranking's metric from an evaluation result (``run_evaluation``'s
    output, or the JSON ``erank-fast eval --out`` writes)."""
    if "per_query" not in result:
        raise ValueError("this evaluation result has no per-query values (written by an older "
                         "erank-fast eval?)")
    values = {}
    for qid, rankings in result["per_query"].items():
        if ranking not in rankings:
            raise ValueError(f"unknown ranking {ranking!r}; this result has {sorted(rankings)}")
        if metric not in rankings[ranking]:
            raise ValueError(f"unknown metric {metric!r}; this result has "
                             f"{sorted(rankings[ranking])}")
        values[qid] = rankings[ranking][metric]
    return values


def against_baseline(result: Mapping, baseline: str = "first_stage", metric: str = "ndcg@10",
                     **options) -> dict[str, PairedComparison]:
    """Every other ranking of one evaluation against its ``baseline`` ranking, on ``metric``."""
    base = per_query(result, baseline, metric)
    present = next(iter(result["per_query"].values()), {})
    return {name: compare(base, per_query(result, name, metric), **options)
            for name in RANKINGS if name != baseline and name in present}
