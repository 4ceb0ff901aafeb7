"""Torch-free pieces of the probe: op layouts per pattern, timing statistics, and the summary of a result
(copy peak, coalesced vs copy for NCCL and NIXL, per-layer overhead, a latency + bandwidth fit of the coalesced
sends)."""

from __future__ import annotations

import math
import statistics

from suite.kvprofile.sizing import kv_segments
from suite.modelcfg import ModelSize

PATTERNS = ("coalesced", "per_layer", "per_block")


def op_sizes(m: ModelSize, tokens: int, pattern: str, block_tokens: int = 16, kv_dtype: str = "auto") -> list[int]:
    """Byte size of each point-to-point op that moves one request's KV.

    coalesced: one send of everything; per_layer: one op per layer and K/V (MLA: per layer), as a connector that
    ships each layer's cache tensor separately; per_block: one op per block of `block_tokens` tokens holding all
    layers (a paged cache read block by block; vLLM's NIXL descriptors are finer still: layers x K/V x blocks).
    """
    per_token = m.kv_bytes_per_token(kv_dtype)
    if pattern == "coalesced":
        return [tokens * per_token]
    if pattern == "per_layer":
        segs = m.layers * kv_segments(m)
        return [tokens * per_token // segs] * segs
    if pattern == "per_block":
        full, rest = divmod(tokens, block_tokens)
        return [block_tokens * per_token] * full + ([rest * per_token] if rest else [])
    raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")


def timing_stats(samples_s: list[float]) -> dict:
    """median / p99 / mean / min in ms; p99 by linear interpolation (exact for n >= 2)."""
    if not samples_s:
        raise ValueError("no samples")
    xs = sorted(samples_s)
    p99 = statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) > 1 else xs[0]
    return {"n": len(xs), "median_ms": statistics.median(xs) * 1e3, "p99_ms": p99 * 1e3,
            "mean_ms": statistics.fmean(xs) * 1e3, "min_ms": xs[0] * 1e3}


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms / 1e3) / 1e9 if ms > 0 else math.inf


def _nearest_copy_gbps(copy: list[dict], nbytes: int) -> float | None:
    if not copy:
        return None
    return min(copy, key=lambda c: abs(math.log(c["bytes"] / nbytes)))["gbps"]


def fit_link(points: list[dict]) -> dict | None:
    """Least-squares time = latency + bytes / bandwidth over measured (bytes, median_ms) points."""
    pts = [(p["bytes"], p["median_ms"] / 1e3) for p in points if "median_ms" in p]
    if len(pts) < 2 or len({b for b, _ in pts}) < 2:
        return None
    slope, intercept = statistics.linear_regression([b for b, _ in pts], [t for _, t in pts])
    if slope <= 0:
        return None
    return {"latency_us": intercept * 1e6, "bandwidth_gbps": 1 / slope / 1e9, "points": len(pts)}


def _vs_copy(rows: list[dict], copy: list[dict], peak: float | None) -> list[dict]:
    """Coalesced rows against the copy baseline: the copy of the nearest size, and the copy peak."""
    out = []
    for p in sorted((p for p in rows if p["pattern"] == "coalesced" and "gbps" in p), key=lambda p: p["tokens"]):
        near = _nearest_copy_gbps(copy, p["bytes"])
        out.append({"tokens": p["tokens"], "bytes": p["bytes"], "gbps": p["gbps"],
                    "copy_gbps_same_size": near, "ratio_same_size": p["gbps"] / near if near else None,
                    "ratio_peak": p["gbps"] / peak if peak else None})
    return out


def summarize(result: dict, big_bytes: int = 256 * 10**6, target_ratio: float = 0.95) -> dict:
    copy = result.get("copy") or []
    p2p = [p for p in result.get("p2p", []) if "median_ms" in p]
    by = {(p["pattern"], p["tokens"]): p for p in p2p}
    peak = max((c["gbps"] for c in copy), default=None)
    vs_copy = _vs_copy(p2p, copy, peak)
    big = [v for v in vs_copy if v["bytes"] >= big_bytes and v["ratio_peak"] is not None]
    overhead = []
    for (pattern, tokens), p in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        base = by.get(("coalesced", tokens))
        if pattern == "coalesced" or not base:
            continue
        extra = p["median_ms"] - base["median_ms"]
        overhead.append({"pattern": pattern, "tokens": tokens, "ops": p["ops"], "extra_ms": extra,
                         "extra_us_per_op": extra * 1e3 / max(p["ops"] - 1, 1)})
    # NIXL (D READs from P in another process): the same comparison; a point whose bytes were wrong meets nothing
    nixl_rows = [r for r in (result.get("nixl") or {}).get("results") or [] if "median_ms" in r]
    nixl_vs = _vs_copy(nixl_rows, copy, peak)
    bad = {r["tokens"] for r in nixl_rows if r["pattern"] == "coalesced" and r.get("data_ok") is False}
    for v in nixl_vs:
        v["data_ok"] = v["tokens"] not in bad
    nixl_big = [v for v in nixl_vs if v["bytes"] >= big_bytes and v["ratio_peak"] is not None]
    return {
        "copy_peak_gbps": peak,
        "coalesced_vs_copy": vs_copy,
        "coalesced_big_min_ratio_peak": min((v["ratio_peak"] for v in big), default=None),
        "coalesced_big_meets_target": all(v["ratio_peak"] >= target_ratio for v in big) if big else None,
        "target": {"min_bytes": big_bytes, "ratio": target_ratio},
        "overhead_vs_coalesced": overhead,
        "link_fit_coalesced": fit_link([p for p in p2p if p["pattern"] == "coalesced"]),
        "nixl_coalesced_vs_copy": nixl_vs,
        "nixl_big_min_ratio_same_size": min((v["ratio_same_size"] for v in nixl_big
                                             if v["ratio_same_size"] is not None), default=None),
        "nixl_big_min_ratio_peak": min((v["ratio_peak"] for v in nixl_big), default=None),
        "nixl_big_meets_target": (all(v["ratio_peak"] >= target_ratio and v["data_ok"] for v in nixl_big)
                                  if nixl_big else None),
        "link_fit_nixl_coalesced": fit_link([r for r in nixl_rows if r["pattern"] == "coalesced"]),
    }
