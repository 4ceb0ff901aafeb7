"""Bounded-memory samples of inter-token latencies: a fine log-spaced histogram that behaves like a sorted array.

A million requests with 32 tokens each are 31M gaps; keeping and sorting them costs tens of seconds and GBs. Instead
each (point repetition, class) keeps counts in log bins of ratio 1.005 from 1 us to 10,000 s. `HistSample[i]` is the
i-th order statistic, returned as its bin's geometric midpoint, so every quantile (and every bootstrap replicate,
which only picks order statistics, see suite.stats.bootstrap) is within RESOLUTION (0.25%) of the exact value;
gaps of 0 (tokens in one chunk) stay exactly 0, gaps under 1 us are reported as ~1 us. Count, sum, mean, std, min
and max are exact.
"""

from __future__ import annotations

import math

import numpy as np

LO, HI, RATIO = 1e-6, 1e4, 1.005
_LOG_R, _LOG_LO = math.log(RATIO), math.log(LO)
NBINS = math.ceil(math.log(HI / LO) / _LOG_R) + 1  # bin 0 holds gaps <= 0
RESOLUTION = math.sqrt(RATIO) - 1  # max relative error of a quantile: half a bin, geometrically
VALUES = np.concatenate([[0.0], LO * RATIO ** (np.arange(1, NBINS) - 0.5)])


def bins(x: np.ndarray) -> np.ndarray:
    """Bin index of each (finite) value. In place on one temporary: this runs over every inter-token gap."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log(x)
        t -= _LOG_LO
        t *= 1.0 / _LOG_R
        np.floor(t, out=t)
        t += 1
        np.clip(t, 1, NBINS - 1, out=t)
        t[x <= 0] = 0
    return t.astype(np.intp)


class HistAcc:
    """Accumulates values batch by batch (exact count/sum/sumsq/min/max, counts per bin)."""

    __slots__ = ("counts", "max", "min", "n", "sum", "sumsq")

    def __init__(self) -> None:
        self.counts = np.zeros(NBINS, dtype=np.int64)
        self.n, self.sum, self.sumsq, self.min, self.max = 0, 0.0, 0.0, math.inf, -math.inf

    def add(self, x: np.ndarray, b: np.ndarray | None = None) -> None:
        if not len(x):
            return
        self.counts += np.bincount(bins(x) if b is None else b, minlength=NBINS)
        self.n += len(x)
        self.sum += float(x.sum())
        self.sumsq += float(np.dot(x, x))
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))

    def sample(self) -> HistSample:
        nz = np.flatnonzero(self.counts)
        return HistSample(nz.astype(np.int32), self.counts[nz], self.sum, self.sumsq, self.min, self.max)


class HistSample:
    """A sorted sample, stored as (bin, count) pairs: len(), [i] (int or int arrays), mean(), std(), quantiles()."""

    __slots__ = ("_cum", "_vals", "bins", "counts", "max", "min", "sum", "sumsq")

    def __init__(self, bins_: np.ndarray, counts: np.ndarray, total: float, sumsq: float, lo: float, hi: float):
        self.bins, self.counts = bins_, counts
        self.sum, self.sumsq, self.min, self.max = total, sumsq, lo, hi
        self._cum = np.cumsum(counts)
        self._vals = VALUES[bins_]

    def __len__(self) -> int:
        return int(self._cum[-1]) if len(self._cum) else 0

    def __getitem__(self, i):
        return self._vals[np.searchsorted(self._cum, i, side="right")]

    def mean(self) -> float:
        return self.sum / len(self) if len(self) else math.nan

    def std(self, ddof: int = 0) -> float:
        n = len(self)
        if n - ddof <= 0:
            return math.nan
        return math.sqrt(max(0.0, (self.sumsq - self.sum * self.sum / n) / (n - ddof)))

    def quantiles(self, qs) -> np.ndarray:
        """Order-statistic quantiles x[ceil(q n) - 1] (numpy's inverted_cdf)."""
        n = len(self)
        idx = np.clip(np.ceil(np.asarray(qs, dtype=float) * n).astype(np.int64) - 1, 0, max(0, n - 1))
        return self[idx]


def merge(parts: list[HistSample]) -> HistSample:
    """Pool several samples (repetitions, classes) into one."""
    acc = np.zeros(NBINS, dtype=np.int64)
    for p in parts:
        np.add.at(acc, p.bins, p.counts)
    nz = np.flatnonzero(acc)
    return HistSample(nz.astype(np.int32), acc[nz], sum(p.sum for p in parts), sum(p.sumsq for p in parts),
                      min((p.min for p in parts), default=math.inf), max((p.max for p in parts), default=-math.inf))
