"""run_load: one load point, headless, Locust master + N worker processes -> out_dir/requests.parquet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from suite.config import ConfigError
from suite.load.spec import LoadSpec
from suite.schema import Status

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "locustfiles" / "pd_mix.py"


class LoadSummary(BaseModel):
    sent: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    cancelled: int = 0
    by_class: dict[str, dict[str, int]] = Field(default_factory=dict)  # class -> {ok, error, timeout, cancelled}
    target_rps: float | None = None
    achieved_rps: float | None = None  # (sent - 1) / (last send - first send)
    send_lag_p99_ms: float | None = None
    send_lag_max_ms: float | None = None
    wall_s: float = 0.0
    emulated: bool = False
    records: Path | None = None
    failure: str | None = None  # one line when the run itself failed (no records)


def _preflight(spec: LoadSpec) -> None:
    """Everything that can be wrong with the input fails here, before any process starts."""
    from suite.load.prompts import make_tokenizer
    from suite.load.schedule import plans

    if spec.api == "chat":
        make_tokenizer(spec.tokenizer)
    if spec.arrival.kind != "concurrency" and not plans(spec):
        raise ConfigError("the load spec schedules no requests (duration too short or rate too low)")


def _budget(spec: LoadSpec) -> float:
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
    """Run headless; returns counts. Bad input raises ConfigError before load starts."""
    from suite.load.testserver import free_port

    _preflight(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "loadspec.json"
    spec_path.write_text(spec.model_dump_json(indent=1))
    parquet = out_dir / "requests.parquet"
    parquet.unlink(missing_ok=True)
    port = free_port()
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--skip-log-setup", "--loglevel", "WARNING"]
    master = [*base, "--master", "--headless", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
              "--expect-workers", str(workers), "-u", str(workers), "-r", str(workers), "--host", endpoint,
              "--pd-spec", str(spec_path), "--pd-model", model, "--pd-out", str(out_dir),
              "--pd-itl-events", "on" if itl_events else "off", "--only-summary", "--stop-timeout", "5"]
    worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
    limit = timeout_s or _budget(spec)
    t_start = time.monotonic()
    log = (out_dir / "locust.log").open("wb")
    procs = [subprocess.Popen(master, stdout=log, stderr=subprocess.STDOUT)]
    procs += [subprocess.Popen(worker, stdout=log, stderr=subprocess.STDOUT) for _ in range(workers)]
    failure = None
    try:
        procs[0].wait(timeout=limit)
    except subprocess.TimeoutExpired:
        failure = f"load did not finish within {limit:.0f} s"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        log.close()
    wall = time.monotonic() - t_start
    if not parquet.is_file():
        tail = (out_dir / "locust.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return LoadSummary(wall_s=wall, failure=failure or f"no records written (locust: {tail[0][:200]})")
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
        c = s.by_class.setdefault(r.request_class, {"ok": 0, "error": 0, "timeout": 0, "cancelled": 0})
        c[r.status.value] += 1
    s.ok = sum(r.status is Status.OK for r in recs)
    s.errors = sum(r.status is Status.ERROR for r in recs)
    s.timeouts = sum(r.status is Status.TIMEOUT for r in recs)
    s.cancelled = sum(r.status is Status.CANCELLED for r in recs)
    sent = np.sort([r.sent_s for r in recs if r.sent_s is not None])
    if len(sent) > 1 and sent[-1] > sent[0]:
        s.achieved_rps = (len(sent) - 1) / (sent[-1] - sent[0])
    lag = np.asarray([r.send_lag_s for r in recs if r.send_lag_s is not None])
    if spec is not None and spec.arrival.kind != "concurrency":
        sched = np.sort([r.scheduled_s for r in recs])
        if len(sched) > 1 and sched[-1] > sched[0]:
            s.target_rps = (len(sched) - 1) / (sched[-1] - sched[0])
        if len(lag):
            s.send_lag_p99_ms = float(np.percentile(lag, 99) * 1000)
            s.send_lag_max_ms = float(lag.max() * 1000)
    return s
