"""Import other harnesses' results so their runs sit in our report.

`vllm bench serve --save-result --save-detailed` JSON (vllm/benchmarks/serve.py): per-request `input_lens`,
`output_lens`, `ttfts` (s), `itls` (list of s per request), `errors` ("" when ok); run-level `duration`,
`request_rate`, `max_concurrency`, `backend`, `model_id`, `date`, optional `request_submit_times`. Without
--save-detailed only summary numbers exist: we refuse rather than invent requests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from suite.schema import PointResult, Workload

PER_REQUEST = ("input_lens", "output_lens", "ttfts", "itls", "errors")


def import_vllm_bench(path: str | Path, deployment: str | None = None) -> tuple[PointResult, pa.Table]:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(d, dict) or "duration" not in d or "completed" not in d:
        raise ValueError("not a `vllm bench serve` result (no duration/completed fields)")
    absent = [k for k in PER_REQUEST if k not in d]
    if absent:
        raise ValueError(f"saved without --save-detailed: per-request fields missing ({', '.join(absent)})")
    n = len(d["ttfts"])
    errors = [e or "" for e in d["errors"]]
    ok = np.array([not e for e in errors])
    ttft = np.asarray(d["ttfts"], dtype=float)
    sent = np.asarray(d.get("request_submit_times") or [0.0] * n, dtype=float)
    if len(sent) == n and sent.size and np.nanmin(sent) > 1e6:  # absolute epoch times: make them relative
        sent = sent - np.nanmin(sent)
    first = np.where(ok, sent + ttft, np.nan)
    itls = [list(x or []) for x in d["itls"]]
    token_times = [[f, *(f + np.cumsum(gaps)).tolist()] if o else [] for f, gaps, o in zip(first, itls, ok,
                                                                                           strict=True)]
    done = np.array([t[-1] if t else math.nan for t in token_times])
    out_lens = np.asarray(d["output_lens"], dtype=np.int64)
    table = pa.table({
        "request_class": pa.array(["default"] * n),
        "input_tokens": pa.array(np.asarray(d["input_lens"], dtype=np.int64)),
        "prompt_tokens": pa.array(np.asarray(d["input_lens"], dtype=np.int64)),
        "completion_tokens": pa.array(out_lens),
        "sent_s": pa.array(sent),
        "first_token_s": pa.array(first),
        "done_s": pa.array(done),
        "token_times_s": pa.array(token_times, type=pa.list_(pa.float64())),
        "status": pa.array(np.where(ok, "ok", "error").tolist()),
    })
    rate = d.get("request_rate")
    rate = float(rate) if isinstance(rate, int | float) and math.isfinite(rate) else None
    label = d.get("label") or d.get("backend") or "vllm-bench"
    point = f"rate={rate:g}" if rate else f"concurrency={d.get('max_concurrency')}"
    pr = PointResult(
        deployment=deployment or f"vllm-bench:{label}", framework="vllm", topology="imported", backend="gpu",
        emulated=False, point=point, repetition=0, started_at=str(d.get("date", "")),
        workload=Workload(arrival="poisson" if rate else "concurrency", rate_rps=rate,
                          concurrency=d.get("max_concurrency"), duration_s=d.get("duration")),
        status="ok", load_wall_s=d.get("duration"),
        native={"source": "vllm bench serve", "model_id": d.get("model_id"), "failed": d.get("failed"),
                "summary": {k: v for k, v in d.items() if k.endswith("_ms") or k.endswith("throughput")}})
    return pr, table
