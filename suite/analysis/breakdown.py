"""Where a request's TTFT went: per-request phases from the engines' own spans, joined to the client's record.

Each engine's llm_request span (vLLM) gives its arrival (epoch, when its API server got the request), time in queue,
time in model prefill (scheduled -> first token) and TTFT from arrival; the client record gives when the request
left and when its first token arrived (load.json t0_wall + the record's seconds). On one host both are the same
clock, so the phases below partition the client's TTFT exactly (they add up to it by construction; a phase that
comes out negative means the clocks disagree, and the report says so):

P/D (spans from P and D):                       co-located (one span):
  router_in        client send -> P arrival       router_in        client send -> engine arrival
  prefill_queue    P: time in queue               prefill_queue    time in queue
  prefill_compute  P: scheduled -> first token    prefill_compute  scheduled -> first token
  prefill_engine   P: rest of its TTFT            engine_other     rest of its TTFT (tokenise, IPC, output)
  handoff          P's first token -> D arrival   first_token_out  engine first token -> client
                   (P's response, the router)
  kv_wait          D: time in queue (KV transfer,
                   waiting for it, scheduling)
  decode_first     D: scheduled -> first token
  decode_engine    D: rest of its TTFT
  first_token_out  D's first token -> client
Not part of TTFT: decode (D, or the engine: first -> last token).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from suite.analysis.spans import EngineSpan, join, point_spans

PD_PHASES = ("router_in", "prefill_queue", "prefill_compute", "prefill_engine", "handoff", "kv_wait",
             "decode_first", "decode_engine", "first_token_out")
CO_PHASES = ("router_in", "prefill_queue", "prefill_compute", "engine_other", "first_token_out")
PHASE_TEXT = {
    "router_in": "client -> engine (router, HTTP)", "prefill_queue": "prefill queue",
    "prefill_compute": "prefill compute", "prefill_engine": "P API server (tokenise, IPC, output)",
    "engine_other": "API server (tokenise, IPC, output)", "handoff": "P response -> router -> D",
    "kv_wait": "D queue: KV transfer + wait", "decode_first": "D first token compute",
    "decode_engine": "D API server", "first_token_out": "first token -> client"}
# Where an engine exports no request spans, the report falls back to these histograms (suite/report/tables.py)
HISTOGRAM_PHASES = {"prefill_queue": "queue_s (prefill role)", "prefill_compute": "prefill_s (prefill role)",
                    "kv_wait": "queue_s (decode role) / kv_transfer_s", "decode": "decode_s"}


def request_phases(sent: float, first: float, spans: list[EngineSpan]) -> dict[str, float] | None:
    """Phases of one request (seconds). sent/first: the client's epoch seconds. None: spans don't fit a shape."""
    by_role = {s.role: s for s in spans}
    if "prefill" in by_role and "decode" in by_role:
        p, d = by_role["prefill"], by_role["decode"]
        out = {"router_in": p.arrival - sent, "prefill_queue": p.queue_s, "prefill_compute": p.prefill_s,
               "prefill_engine": p.ttft_s - p.queue_s - p.prefill_s, "handoff": d.arrival - (p.arrival + p.ttft_s),
               "kv_wait": d.queue_s, "decode_first": d.prefill_s, "decode_engine": d.ttft_s - d.queue_s - d.prefill_s,
               "first_token_out": first - (d.arrival + d.ttft_s), "decode": d.decode_s}
    elif len(spans) == 1 and spans[0].role not in ("prefill", "decode"):  # a lone P or D span is half a P/D path
        e = spans[0]
        out = {"router_in": e.arrival - sent, "prefill_queue": e.queue_s, "prefill_compute": e.prefill_s,
               "engine_other": e.ttft_s - e.queue_s - e.prefill_s, "first_token_out": first - (e.arrival + e.ttft_s),
               "decode": e.decode_s}
    else:
        return None
    return out


@functools.lru_cache(maxsize=256)  # the report's sections (time, KV attribution) read the same points
def point_breakdown(point_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Per-request phases of one point repetition, and counts of what joined (nothing is dropped silently).
    Callers must not modify the returned frame (it is cached)."""
    from suite.load.records import read_records

    info = {"records": 0, "ok": 0, "joined": 0, "unmatched_spans": 0, "shape_mismatch": 0, "spans": 0}
    req_path, load_path = point_dir / "requests.parquet", point_dir / "load.json"
    spans = point_spans(point_dir)
    info["spans"] = len(spans)
    if not req_path.is_file() or not load_path.is_file() or not spans:
        return pd.DataFrame(), info
    t0 = float(json.loads(load_path.read_text())["t0_wall"])
    records = read_records(req_path)
    ok = [r for r in records if r.status.value == "ok" and r.first_token_s is not None and r.sent_s is not None]
    info["records"], info["ok"] = len(records), len(ok)
    joined = join(ok, spans)
    info["unmatched_spans"] = joined.unmatched_spans
    rows = []
    for r in ok:
        s = joined.by_request.get(r.request_id)
        if not s:
            continue
        ph = request_phases(t0 + r.sent_s, t0 + r.first_token_s, s)
        if ph is None:
            info["shape_mismatch"] += 1
            continue
        rows.append({"request_id": r.request_id, "request_class": r.request_class, "input_tokens": r.input_tokens,
                     "ttft_s": r.ttft_s, **ph})
    info["joined"] = len(rows)
    return pd.DataFrame(rows), info


def phases_of(df: pd.DataFrame) -> tuple[str, ...]:
    return PD_PHASES if "kv_wait" in df.columns else CO_PHASES


def distributions(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group and phase: mean, p50, p90, p99 (seconds) and the share of the mean TTFT."""
    rows = []
    if df.empty:
        return pd.DataFrame()
    for key, g in df.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ttft = float(g["ttft_s"].mean())
        for ph in (*phases_of(g.dropna(axis=1, how="all")), "ttft_s", "decode"):
            if ph not in g or g[ph].isna().all():
                continue
            v = g[ph].dropna().to_numpy()
            rows.append(dict(zip(keys, key, strict=True)) | {
                "phase": ph, "requests": len(v), "mean_s": float(v.mean()),
                "p50_s": float(np.percentile(v, 50)), "p90_s": float(np.percentile(v, 90)),
                "p99_s": float(np.percentile(v, 99)),
                "share_of_ttft": float(v.mean()) / ttft if ph not in ("ttft_s", "decode") and ttft else math.nan})
    return pd.DataFrame(rows)


def dataset_breakdown(points: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """All points of a report: per-request rows (with deployment/point/rep) and per-repetition join counts."""
    frames, infos = [], []
    for _, p in points.iterrows():
        if p.get("status") != "ok" or not isinstance(p.get("path"), str):
            continue
        df, info = point_breakdown(Path(p["path"]))
        infos.append({"deployment": p["deployment"], "framework": p["framework"], "point": p["point"],
                      "rep": p["rep"], "emulated": bool(p["emulated"])} | info)
        if not df.empty:
            frames.append(df.assign(deployment=p["deployment"], point=p["point"], rep=p["rep"]))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), infos
