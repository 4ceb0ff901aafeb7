"""run_load: one load point, headless, on a Locust master + N worker processes -> out_dir/requests.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from suite.config import ConfigError
from suite.load.spec import LoadSpec
from suite.schema import Status


class LoadSummary(BaseModel):
    sent: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    cancelled: int = 0
    by_class: dict[str, dict[str, int]] = Field(default_factory=dict)  # class -> {ok, error, timeout, cancelled}
    not_sent: int = 0  # planned, never sent (the point was stopped, the endpoint never took it...): reason recorded
    planned: int | None = None  # open loop: requests in the schedule (records == planned)
    target_rps: float | None = None  # the rate the spec asks for, averaged over its window
    offered_rps: float | None = None  # sent / window: what the point really offered (compare with target_rps)
    window_s: float | None = None  # the schedule's window (duration, steps' end, trace span)
    achieved_rps: float | None = None  # (sent - 1) / (last send - first send)
    send_lag_p99_ms: float | None = None
    send_lag_max_ms: float | None = None
    wall_s: float = 0.0
    emulated: bool = False
    records: Path | None = None
    failure: str | None = None  # one line when the run itself failed (no records)


def preflight(spec: LoadSpec) -> LoadSpec:
    """Everything that can be wrong with the input fails here, before any process starts. Returns the spec with
    `auto` fields made concrete where no deployment is known (see suite.load.resolve)."""
    from suite.load.prompts import make_tokenizer
    from suite.load.resolve import resolve_spec
    from suite.load.schedule import plans

    spec = resolve_spec(spec)
    if spec.text_prompts:
        make_tokenizer(spec.tokenizer)
    if spec.arrival.kind != "concurrency" and not plans(spec):
        raise ConfigError("the load spec schedules no requests (duration too short or rate too low)")
    return spec


def budget(spec: LoadSpec) -> float:
    a = spec.arrival
    if spec.duration_s is not None:
        span = spec.duration_s
    elif a.kind == "step":
        span = sum(d for d, _ in a.steps)
    elif a.kind == "trace":
        from suite.load.schedule import read_trace

        span = read_trace(a.trace, a.trace_time_unit)[-1][0] / a.trace_speedup
    else:
        span = (spec.num_requests or 1) / (a.rate_rps or 1) * 3 + 60
    return span + spec.drain_timeout_s + 30


def run_load(endpoint: str, model: str, spec: LoadSpec, out_dir: Path, workers: int = 2,
             timeout_s: float | None = None, itl_events: bool = False) -> LoadSummary:
    """One point, headless; returns counts. Bad input raises ConfigError before load starts.

    Inside `with LoadCluster(endpoint, model, workers):` the point runs on that persistent cluster; otherwise a
    cluster is started for this point alone."""
    from suite.load.cluster import LoadCluster

    cluster = LoadCluster.active(endpoint, model, workers)
    if cluster is not None:
        return cluster.run(spec, out_dir, timeout_s, itl_events)
    spec = preflight(spec)  # bad input: no process started
    with LoadCluster(endpoint, model, workers) as one_shot:
        return one_shot.run(spec, out_dir, timeout_s, itl_events)


def finish_summary(parquet: Path, spec: LoadSpec, out_dir: Path, wall: float, failure: str | None) -> LoadSummary:
    summary = summarise(parquet, spec)
    summary.wall_s, summary.failure = wall, failure
    info = out_dir / "load.json"
    if info.is_file():
        summary.emulated = bool(json.loads(info.read_text()).get("emulated"))
    (out_dir / "summary.json").write_text(summary.model_dump_json(indent=1))
    return summary


def summarise(parquet: Path, spec: LoadSpec | None = None) -> LoadSummary:
    from suite.load.records import read_records

    recs = read_records(parquet)
    s = LoadSummary(records=parquet, sent=sum(r.sent_s is not None for r in recs))
    for r in recs:
        c = s.by_class.setdefault(r.request_class, {st.value: 0 for st in Status})
        c[r.status.value] += 1
    s.ok = sum(r.status is Status.OK for r in recs)
    s.errors = sum(r.status is Status.ERROR for r in recs)
    s.timeouts = sum(r.status is Status.TIMEOUT for r in recs)
    s.cancelled = sum(r.status is Status.CANCELLED for r in recs)
    s.not_sent = sum(r.status is Status.NOT_SENT for r in recs)
    sent = np.sort([r.sent_s for r in recs if r.sent_s is not None])
    if len(sent) > 1 and sent[-1] > sent[0]:
        s.achieved_rps = (len(sent) - 1) / (sent[-1] - sent[0])
    lag = np.asarray([r.send_lag_s for r in recs if r.send_lag_s is not None])
    if spec is not None:
        from suite.load.schedule import plans, target_rps, window_s

        s.target_rps, s.window_s = target_rps(spec), window_s(spec)
        if spec.arrival.kind != "concurrency":
            s.planned = len(plans(spec))
        if s.window_s:
            s.offered_rps = s.sent / s.window_s
        elif s.achieved_rps is not None:  # num_requests without a duration: the sends' own span
            s.offered_rps = s.achieved_rps
    if spec is not None and spec.arrival.kind != "concurrency" and len(lag):
        s.send_lag_p99_ms = float(np.percentile(lag, 99) * 1000)
        s.send_lag_max_ms = float(lag.max() * 1000)
    return s
