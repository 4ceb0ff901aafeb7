"""Arrivals and request plans, computed from the seed up front. Worker i of N takes plans i, i+N, i+2N, ...

Open-loop arrival times never depend on response times. Each request's class and lengths come from its own
generator seeded by (seed, index), so any worker can rebuild request k on its own.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from suite.config import ConfigError
from suite.load.spec import LoadSpec

MAX_OPEN_LOOP = 2_000_000  # sanity bound on one schedule's size


@dataclass(slots=True)
class Planned:
    index: int
    request_class: str
    input_tokens: int
    max_tokens: int
    scheduled_s: float | None  # None: closed loop (sent when a stream is free)


def request_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def draw(spec: LoadSpec, index: int, shares: dict[str, float] | None = None) -> tuple[str, int, int]:
    """Class and lengths of request `index` (deterministic)."""
    shares = shares or spec.shares()
    rng = request_rng(spec.seed, index)
    names = list(shares)
    name = names[int(rng.choice(len(names), p=list(shares.values())))]
    c = spec.classes[name]
    return name, int(rng.integers(c.input.min, c.input.max + 1)), int(rng.integers(c.output.min, c.output.max + 1))


def _thinned(rng: np.random.Generator, rate_at, rmax: float, duration: float, limit: int) -> list[float]:
    out: list[float] = []
    t = 0.0
    while len(out) < limit:
        t += rng.exponential(1.0 / rmax)
        if t >= duration:
            break
        if rng.random() * rmax <= rate_at(t):
            out.append(t)
    return out


def arrival_times(spec: LoadSpec, rate_rps: float | None = None, start_s: float = 0.0) -> np.ndarray:
    """Open-loop send times (seconds from t0). `rate_rps`/`start_s` re-plan the rest of a run at a new rate."""
    a = spec.arrival
    limit = min(spec.num_requests or MAX_OPEN_LOOP, MAX_OPEN_LOOP)
    duration = spec.duration_s if spec.duration_s is not None else float("inf")
    rng = np.random.default_rng([spec.seed, 0xA771, int(start_s * 1000)])
    if a.kind in ("poisson", "constant"):
        rate = rate_rps or a.rate_rps
        span = duration - start_s
        n = limit if span == float("inf") else min(limit, int(span * rate * 1.5 + 50))
        if a.kind == "poisson":
            t = start_s + np.cumsum(rng.exponential(1.0 / rate, size=n))
        else:  # k / rate, not a sum of gaps: 1 s at 10 req/s is 10 requests, not 11 by rounding
            t = start_s + np.arange(n) / rate
        return t[t < duration][:limit]
    if a.kind == "ramp":
        r0, r1 = a.rate_rps, a.end_rps
        times = _thinned(rng, lambda t: r0 + (r1 - r0) * t / duration, max(r0, r1), duration, limit)
        return np.asarray(times)
    if a.kind == "step":
        edges = np.cumsum([d for d, _ in a.steps])
        rates = [r for _, r in a.steps]
        total = min(duration, float(edges[-1]))

        def rate_at(t: float) -> float:
            return rates[min(int(np.searchsorted(edges, t, side="right")), len(rates) - 1)]

        return np.asarray(_thinned(rng, rate_at, max(rates) or 1e-9, total, limit))
    raise ValueError(f"no arrival times for {a.kind}")


def window_s(spec: LoadSpec) -> float | None:
    """The span the schedule offers load over (seconds from t0), when the spec fixes it: the duration, a step
    schedule's end, a trace's last arrival. None: only the requests' own times tell (num_requests, no duration)."""
    a = spec.arrival
    duration = spec.duration_s
    if a.kind == "step":
        total = float(sum(d for d, _ in a.steps))
        return min(total, duration) if duration is not None else total
    if a.kind == "trace" and duration is None:
        used = plans(spec)
        return (used[-1].scheduled_s or None) if used else None
    return duration


def target_rps(spec: LoadSpec) -> float | None:
    """The rate a point asks for, averaged over its window (what a label such as rate=2 promises). Trace: the
    trace's own rate over its window. Closed loop: None (the rate is whatever the streams achieve)."""
    a = spec.arrival
    if a.kind in ("poisson", "constant"):
        return a.rate_rps
    if a.kind == "ramp":
        return (a.rate_rps + a.end_rps) / 2
    if a.kind == "step":
        left, area = window_s(spec), 0.0
        total = left
        for d, r in a.steps:
            take = min(d, left)
            area, left = area + take * r, left - take
        return area / total if total else None
    if a.kind == "trace":
        w = window_s(spec)
        return len(plans(spec)) / w if w else None
    return None


def plans(spec: LoadSpec, worker: int = 0, workers: int = 1) -> list[Planned]:
    """This worker's share of an open-loop or trace schedule, in send order."""
    if spec.arrival.kind == "concurrency":
        raise ValueError("closed loop has no schedule; use draw()")
    if spec.arrival.kind == "trace":
        rows = read_trace(spec.arrival.trace, spec.arrival.trace_time_unit)
        out = []
        for i, (t, n_in, n_out) in enumerate(rows):
            t /= spec.arrival.trace_speedup
            if spec.duration_s is not None and t >= spec.duration_s:
                break
            if spec.num_requests is not None and i >= spec.num_requests:
                break
            if i % workers == worker:
                out.append(Planned(i, trace_class(spec, n_in), n_in, n_out, t))
        return out
    times = arrival_times(spec)
    out = []
    for i in range(worker, len(times), workers):
        name, n_in, n_out = draw(spec, i)
        out.append(Planned(i, name, n_in, n_out, float(times[i])))
    return out


def trace_class(spec: LoadSpec, n_in: int) -> str:
    for name, c in spec.classes.items():
        if c.input.min <= n_in <= c.input.max:
            return name
    return "trace"


# --- traces --------------------------------------------------------------------------------------------
_COLUMNS = (("timestamp", "input_length", "output_length"), ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))


def read_trace(path: Path, time_unit: str = "ms") -> list[tuple[float, int, int]]:
    """(seconds from the first request, input tokens, output tokens), sorted by time. One clear error if malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"trace {path}: {e.strerror}") from e
    records = _parse_jsonl(path, text) if path.suffix in (".jsonl", ".json") else _parse_csv(path, text)
    if not records:
        raise ConfigError(f"trace {path}: no requests")
    cols = next((c for c in _COLUMNS if set(c) <= set(records[0])), None)
    if cols is None:
        raise ConfigError(f"trace {path}: needs columns timestamp,input_length,output_length "
                          f"or TIMESTAMP,ContextTokens,GeneratedTokens; got {sorted(records[0])}")
    ts, rows = [], []
    for k, r in enumerate(records, start=1):
        try:
            n_in, n_out = int(r[cols[1]]), int(r[cols[2]])
            t = _timestamp(r[cols[0]], time_unit)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"trace {path}: row {k} is malformed ({e.__class__.__name__}: {e})") from e
        if n_in < 1 or n_out < 0:
            raise ConfigError(f"trace {path}: row {k}: input length must be >= 1 and output >= 0")
        ts.append(t)
        rows.append((n_in, max(1, n_out)))  # output 0 (Azure has some) cannot be streamed: ask for 1
    order = np.argsort(np.asarray(ts), kind="stable")
    t0 = ts[order[0]]
    return [(ts[i] - t0, *rows[i]) for i in order]


def _timestamp(v, unit: str) -> float:
    if isinstance(v, (int, float)):
        return float(v) / (1000.0 if unit == "ms" else 1.0)
    try:
        return float(v) / (1000.0 if unit == "ms" else 1.0)
    except ValueError:
        from datetime import datetime

        s = str(v).strip()
        if "." in s:  # Azure writes 7 fractional digits; datetime takes 6
            head, frac = s.split(".", 1)
            s = f"{head}.{frac[:6]}"
        return datetime.fromisoformat(s).timestamp()


def _parse_jsonl(path: Path, text: str) -> list[dict]:
    out = []
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise ConfigError(f"trace {path}: line {k} is not JSON ({e})") from e
        if not isinstance(obj, dict):
            raise ConfigError(f"trace {path}: line {k} is not a JSON object")
        out.append(obj)
    return out


def _parse_csv(path: Path, text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for k, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise ConfigError(f"trace {path}: line {k} has the wrong number of fields")
        rows.append(row)
    return rows
