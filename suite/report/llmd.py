"""Export to the llm-d-benchmark "benchmark report" format, v0.1 (llm-d/llm-d-benchmark,
workload/report/benchmark_report_v0_1.py): scenario {host, platform, model, load} + metrics {time, requests,
latency, throughput}; one report per deployment x point, repetitions and classes pooled. Native extras go under
`metadata` as that schema intends. Note: its `load.name` enum lists known harnesses; ours is written as "pdsuite".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from suite.stats.histogram import HistSample, merge

VERSION = "0.1"
HOST_TYPE = {"prefill": "prefill", "decode": "decode", "colocated": "replica"}


QS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
KEYS = ("p0p1", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99p9")


def stats(x, units: str) -> dict:
    """x: values, or a HistSample (ITL: quantiles within its resolution, mean/std/min/max exact)."""
    if isinstance(x, HistSample):
        if not len(x):
            return {"units": units, "mean": 0.0}
        return {"units": units, "mean": x.mean(), "stddev": x.std(), "min": x.min, "max": x.max} | {
            k: float(v) for k, v in zip(KEYS, x.quantiles(QS), strict=True)}
    x = x[np.isfinite(x)]
    if not len(x):
        return {"units": units, "mean": 0.0}
    q = np.quantile(x, QS, method="inverted_cdf")
    return {"units": units, "mean": float(x.mean()), "stddev": float(x.std()), "min": float(x.min()),
            "max": float(x.max())} | {k: float(v) for k, v in zip(KEYS, q, strict=True)}


def report(ds, dep: str, point: str) -> dict:
    pts = ds.points[(ds.points["deployment"] == dep) & (ds.points["point"] == point)]
    sel = ds.requests["pidx"].isin(pts.index)
    r = ds.requests[sel]
    ok = r["ok"].to_numpy()
    mine = set(pts.index.tolist())
    itl = merge([h for (p, _), h in ds.itl.items() if p in mine])
    first = pts.iloc[0]
    services = json.loads(first["services"]) if isinstance(first.get("services"), str) else {}
    engines = [role for role in services.values() if role in HOST_TYPE]
    span = r.groupby("pidx")[["sent", "done"]].agg({"sent": "min", "done": "max"})
    dur = float(np.nansum(span["done"] - span["sent"]))
    n_in = float(np.nansum(r["prompt_tokens"].where(r["prompt_tokens"].notna(), r["input_tokens"])[ok]))
    n_out = float(np.nansum(r["n_out"][ok]))
    per_s = (lambda v: v / dur) if dur > 0 else (lambda v: math.nan)
    return {
        "version": VERSION,
        "scenario": {
            "description": f"pdsuite {dep} at {point}",
            "host": {"accelerator": [{"model": "unknown", "count": 1} for _ in engines],
                     "type": [HOST_TYPE[e] for e in engines]} if engines else None,
            "platform": {"engine": [{"name": first["framework"]} for _ in engines]} if engines else None,
            "model": {"name": next((m.get("settings", {}).get("MODEL") for m in ds.manifests
                                    if m.get("_path") == first["run"]), None) or "unknown"},
            "load": {"name": "pdsuite", "type": first["arrival"],
                     "args": {"rate_rps": None if math.isnan(first["rate_rps"]) else first["rate_rps"],
                              "concurrency": None if math.isnan(first["concurrency"]) else first["concurrency"]}},
            "metadata": {"deployment": dep, "topology": first["topology"], "backend": first["backend"],
                         "emulated": bool(pts["emulated"].any()), "repetitions": len(pts)},
        },
        "metrics": {
            "time": {"duration": dur},
            "requests": {"total": len(r), "failures": int(r["err"].sum()),
                         "incomplete": int((~ok).sum()),
                         "input_length": stats(r["input_tokens"].to_numpy(float), "count"),
                         "output_length": stats(r["n_out"].to_numpy(float)[ok], "count")},
            "latency": {"time_to_first_token": stats(r["ttft"].to_numpy()[ok], "s"),
                        "time_per_output_token": stats(r["tpot"].to_numpy()[ok], "s/token"),
                        "inter_token_latency": stats(itl, "s/token"),
                        "request_latency": stats(r["e2e"].to_numpy()[ok], "s")},
            "throughput": {"input_tokens_per_sec": per_s(n_in), "output_tokens_per_sec": per_s(n_out),
                           "total_tokens_per_sec": per_s(n_in + n_out), "requests_per_sec": per_s(float(ok.sum()))},
        },
    }


def _clean(o):
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items() if v is not None}
    if isinstance(o, np.generic):  # a column without NaN stays int64 (all points closed-loop: concurrency)
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def export(ds, t, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (dep, point), _ in ds.points.groupby(["deployment", "point"]):
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in f"{dep}__{point}")
        path = out_dir / f"{safe}.json"
        path.write_text(json.dumps(_clean(report(ds, dep, point)), indent=1))
        written.append(str(path))
    return written
