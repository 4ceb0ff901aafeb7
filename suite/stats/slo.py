"""Goodput under per-class SLOs, and the client- vs server-side TTFT consistency check."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from suite.normalise.metrics import hist_bucket, hist_quantile
from suite.stats.bootstrap import quantile_sorted

# Used for classes the plan gives no SLO; stated in every report that uses it.
DEFAULT_SLO = {"ttft_s": 2.0, "tpot_s": 0.1}


def goodput_mask(ttft: np.ndarray, tpot: np.ndarray, ok: np.ndarray, classes: np.ndarray,
                 slos: dict) -> np.ndarray:
    """True where a request succeeded and met its class's TTFT and TPOT SLOs.
    A request with one output token has no TPOT (NaN): only its TTFT is judged."""
    good = ok.copy()
    for cls in np.unique(classes):
        slo = slos.get(cls.item() if hasattr(cls, "item") else cls) or DEFAULT_SLO  # keys: names or int codes
        sel = classes == cls
        t_ok = ttft[sel] <= slo.get("ttft_s", math.inf)
        p_ok = np.isnan(tpot[sel]) | (tpot[sel] <= slo.get("tpot_s", math.inf))
        good[sel] &= t_ok & p_ok
    return good


@dataclass
class Consistency:
    ok: bool
    client_n: int
    server_n: float
    rows: list[dict] = field(default_factory=list)  # per quantile: client, server estimate, bucket, agree
    note: str = ""


def ttft_consistency(client_sorted: np.ndarray, le, cum, quantiles=(0.5, 0.9), rel_tol: float = 0.25,
                     abs_tol_s: float = 0.005) -> Consistency:
    """Do the client's TTFT percentiles fall in (or near) the server histogram's bucket for the same quantile?

    The server histogram only knows buckets, so agreement means: client value within the bucket holding that
    quantile, widened by rel_tol and abs_tol_s (network, router and detokenisation sit between the two).
    """
    server_n = float(cum[-1]) if len(cum) else 0.0
    c = Consistency(True, len(client_sorted), server_n)
    if not len(client_sorted) or server_n <= 0:
        c.ok, c.note = False, "no server-side TTFT observations" if server_n <= 0 else "no client TTFTs"
        return c
    for q in quantiles:
        cv = quantile_sorted(client_sorted, q)
        _, lo, hi = hist_bucket(le, cum, q)
        lo_ok = lo * (1 - rel_tol) - abs_tol_s
        hi_ok = (hi if not math.isinf(hi) else math.inf) * (1 + rel_tol) + abs_tol_s
        agree = lo_ok <= cv <= hi_ok
        c.rows.append({"q": q, "client_s": cv, "server_est_s": hist_quantile(le, cum, q), "bucket_lo_s": lo,
                       "bucket_hi_s": hi, "agree": agree})
        c.ok &= agree
    if abs(server_n - len(client_sorted)) > max(2, 0.05 * len(client_sorted)):
        c.note = (f"server counted {server_n:g} requests, client {len(client_sorted)}: the snapshots do not cover the "
                  "same requests (warm-up, retries or other traffic)")
    return c
