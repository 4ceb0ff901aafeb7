"""Statistics the report trusts: percentiles with bootstrap CIs, repetition aggregates, differences between
deployments with CIs, goodput under per-class SLOs, client- vs server-side TTFT consistency.

Percentile bootstrap without resampling arrays: the k-th order statistic of a resample of sorted x is
x[ceil(n * U_(k)) - 1] with U_(k) ~ Beta(k, n + 1 - k) (the k-th of n uniforms), so B replicates of a quantile cost
B Beta draws after one sort - exact, and cheap at 1M requests. Quantiles use the order-statistic definition
x[ceil(q n) - 1] (numpy's "inverted_cdf").
"""

from suite.stats.bootstrap import (
    DEFAULT_B,
    MIN_SAMPLES,
    Estimate,
    aggregate_reps,
    compare,
    compare_reps,
    estimate,
    quantile_sorted,
    replicates,
    too_few,
)
from suite.stats.slo import DEFAULT_SLO, Consistency, goodput_mask, ttft_consistency

__all__ = ["DEFAULT_B", "DEFAULT_SLO", "MIN_SAMPLES", "Consistency", "Estimate", "aggregate_reps", "compare",
           "compare_reps", "estimate", "goodput_mask", "quantile_sorted", "replicates", "too_few", "ttft_consistency"]
