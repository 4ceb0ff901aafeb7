"""Bootstrap replicates over requests within repetitions, and over repetitions when there are >= 3."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_B = 1000
ALPHA = 0.05
MIN_REPS_RESAMPLED = 3  # fewer repetitions than this: resample requests only
MEAN_CLT_N = 5000  # above this, the bootstrap distribution of a mean is normal to plotting precision
# A quantile resting on fewer observations per repetition than this sits at (or next to) the sample maximum: its
# estimate is biased low and its CI's upper end is that maximum. Reported, but marked as such.
MIN_SAMPLES = {0.99: 100, 0.9: 20}

# two-sided 95% Student t critical values, df 1..30 (AIPerf-style repetition CI without scipy)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int  # observations behind it (requests, gaps ...)
    reps: int

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        if math.isnan(self.value):
            return "-"
        return (f"{self.value * scale:.{digits}f} [{self.ci_low * scale:.{digits}f}, "
                f"{self.ci_high * scale:.{digits}f}]")


def quantile_sorted(x: np.ndarray, q: float) -> float:
    n = len(x)
    if n == 0:
        return math.nan
    return float(x[min(n - 1, max(0, math.ceil(q * n) - 1))])


def _rep_replicates(x: np.ndarray, stat: tuple, b: int, rng: np.random.Generator) -> np.ndarray:
    """B bootstrap replicates of `stat` over one repetition's values (x sorted for quantiles)."""
    n = len(x)
    if n == 0:
        return np.full(b, np.nan)
    if stat[0] == "quantile":
        k = min(n, max(1, math.ceil(stat[1] * n)))
        u = rng.beta(k, n + 1 - k, size=b)
        idx = np.clip(np.ceil(u * n).astype(np.int64) - 1, 0, n - 1)
        return x[idx]
    if stat[0] == "mean":
        if n > MEAN_CLT_N:
            return rng.normal(x.mean(), x.std(ddof=1) / math.sqrt(n), size=b)
        out = np.empty(b)
        chunk = max(1, 2_000_000 // n)  # bound the index matrix's memory
        for s in range(0, b, chunk):
            e = min(b, s + chunk)
            out[s:e] = x[rng.integers(0, n, size=(e - s, n))].mean(axis=1)
        return out
    raise ValueError(f"unknown statistic {stat!r}")


def _point(x: np.ndarray, stat: tuple) -> float:
    if len(x) == 0:
        return math.nan
    return quantile_sorted(x, stat[1]) if stat[0] == "quantile" else float(x.mean())


def too_few(q: float, n: int) -> bool:
    """Does a q-quantile from n observations (per repetition) rest on too few of them (see MIN_SAMPLES)?"""
    need = max((m for qq, m in MIN_SAMPLES.items() if q >= qq), default=0)
    return n < need


def _matrix(reps: list[np.ndarray], stat: tuple, b: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    point = float(np.mean([_point(r, stat) for r in reps]))
    return point, np.stack([_rep_replicates(r, stat, b, rng) for r in reps])  # (reps, B)


def _over_reps(mat: np.ndarray, pick: np.ndarray | None) -> np.ndarray:
    """Replicates of the mean over repetitions: repetitions resampled by `pick` (B x reps), or all of them."""
    if pick is None:
        return mat.mean(axis=0)
    return mat[pick, np.arange(mat.shape[1])[:, None]].mean(axis=1)


def replicates(reps: list[np.ndarray], stat: tuple, b: int = DEFAULT_B, seed: int = 0) -> tuple[float, np.ndarray]:
    """(point estimate, B replicates) of the mean over repetitions of a per-repetition statistic.

    reps: one array per repetition (sorted when stat is a quantile). stat: ("quantile", q) or ("mean",).
    """
    reps = [r for r in reps if len(r)]
    if not reps:
        return math.nan, np.full(b, np.nan)
    rng = np.random.default_rng(seed)
    point, mat = _matrix(reps, stat, b, rng)
    pick = rng.integers(0, len(reps), size=(b, len(reps))) if len(reps) >= MIN_REPS_RESAMPLED else None
    return point, _over_reps(mat, pick)


def _ci(reps_: np.ndarray) -> tuple[float, float]:
    ok = reps_[~np.isnan(reps_)]
    if len(ok) == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(ok, [ALPHA / 2, 1 - ALPHA / 2])
    return float(lo), float(hi)


def estimate(reps: list[np.ndarray], stat: tuple, b: int = DEFAULT_B, seed: int = 0) -> Estimate:
    point, rr = replicates(reps, stat, b, seed)
    lo, hi = _ci(rr)
    return Estimate(point, lo, hi, int(sum(len(r) for r in reps)), sum(1 for r in reps if len(r)))


def compare(a: list[np.ndarray], base: list[np.ndarray], stat: tuple, b: int = DEFAULT_B,
            seed: int = 0, paired: bool = False) -> Estimate:
    """Relative difference of a vs base in percent, e.g. -41 [-47, -35]: a's TTFT p99 is 41% lower.

    Unpaired: the two deployments are independent samples, their replicates drawn independently. Paired (a[r] and
    base[r] ran the same workload draw - same arrival schedule and prompts): requests are still resampled within
    each repetition independently, but repetitions are resampled jointly (the same r for both), so the variation
    between workload draws, common to both, cancels in the ratio instead of widening its CI."""
    if paired:
        pairs = [(x, y) for x, y in zip(a, base, strict=False) if len(x) and len(y)]
        if pairs:
            rng = np.random.default_rng(seed)
            pa, ma = _matrix([x for x, _ in pairs], stat, b, rng)
            pb, mb = _matrix([y for _, y in pairs], stat, b, rng)
            pick = rng.integers(0, len(pairs), size=(b, len(pairs))) if len(pairs) >= MIN_REPS_RESAMPLED else None
            return _relative(pa, _over_reps(ma, pick), pb, _over_reps(mb, pick),
                             int(sum(len(x) + len(y) for x, y in pairs)), len(pairs))
    pa, ra = replicates(a, stat, b, seed)
    pb, rb = replicates(base, stat, b, seed + 1)
    return _relative(pa, ra, pb, rb, int(sum(map(len, a)) + sum(map(len, base))), min(len(a), len(base)))


def _relative(pa: float, ra: np.ndarray, pb: float, rb: np.ndarray, n: int, reps: int) -> Estimate:
    if not pb or math.isnan(pb):
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (ra / rb - 1.0) * 100.0
    lo, hi = _ci(rel[np.isfinite(rel)])
    return Estimate((pa / pb - 1.0) * 100.0, lo, hi, n, reps)


def compare_reps(a: list[float], base: list[float]) -> Estimate:
    """Relative difference in percent of per-repetition scalars (throughput), paired by repetition: the mean of the
    per-pair changes with a Student-t 95% CI over the pairs (NaN CI from a single pair)."""
    rel = [(x / y - 1.0) * 100.0 for x, y in zip(a, base, strict=False)
           if x is not None and y and not (math.isnan(x) or math.isnan(y))]
    agg = aggregate_reps(rel)
    return Estimate(agg["mean"], agg["ci_low"], agg["ci_high"], agg["n"], agg["n"])


def aggregate_reps(values) -> dict:
    """mean, std, cv, ci_low/high (Student t, 95%) over per-repetition values, like AIPerf's multi-run aggregate."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "cv": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    half = (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * std / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "cv": std / mean if mean else math.nan,
            "ci_low": mean - half, "ci_high": mean + half}
