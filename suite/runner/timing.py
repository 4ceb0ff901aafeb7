"""Where a plan's wall time goes: load generation, model load, and the runner's own overhead (docs/benchmarks.md).

Definitions (also written into manifest.json `timings.definition` and shown in the report):
- load generation = each point's *load window*: from the schedule's t0 (the arrival process starts; its first
  gap is load time like every later gap; closed loop sends at t0) to the point's last response, error, timeout
  or cancellation (requests in flight count: the engines are working). Taken from the point's own records
  (requests.parquet + load.json t0), not from how long the load call took.
- model load = deployment start until every service answers /health (`up_s`): excluded from the budget.
- overhead = everything else: leftover clean-up before start, Locust cluster start not hidden behind model load,
  warm-up, each point's lead-in (spec checks, hand-out to the workers, the glue's start delay up to the schedule's
  t0), the tail (records flushed and written, summary), /metrics scrapes, liveness checks and point bookkeeping,
  logs + down. `other_s` is what no phase claimed, so the phases always add up to the wall time.
- overhead_ratio = (wall - up - load) / (wall - up).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

DEFINITION = ("load = per point, schedule t0 -> last response/timeout (in-flight requests count); "
              "model load = deployment start -> healthy (excluded); overhead = everything else "
              "(wall - up - load); overhead_ratio = overhead / (wall - up)")

# overhead phases, in the order a plan goes through them (report and docs use these names)
PHASES = {
    "cleanup_s": "leftover clean-up and spec checks before start",
    "cluster_start_s": "Locust cluster start (the part not overlapped with model load)",
    "warmup_s": "warm-up requests",
    "point_lead_s": "point lead-in: spec, hand-out to the workers, start delay (to the schedule's t0)",
    "point_tail_s": "point tail: records flushed and written after the last response",
    "scrape_s": "/metrics scrapes before and after each point",
    "check_s": "liveness checks and point bookkeeping",
    "down_s": "logs + down",
}


@dataclass
class Timings:
    """Seconds summed over a plan (a resumed run adds its attempts: see `merged`)."""

    up_s: float = 0.0  # model load: excluded from the budget
    load_s: float = 0.0  # sum of the points' load windows
    cleanup_s: float = 0.0
    cluster_start_s: float = 0.0
    warmup_s: float = 0.0
    point_lead_s: float = 0.0
    first_arrival_s: float = 0.0  # unused since the first gap counts as load; kept so older manifests still load
    point_tail_s: float = 0.0
    scrape_s: float = 0.0
    check_s: float = 0.0
    down_s: float = 0.0
    wall_s: float = 0.0
    points: int = 0

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.wall_s - self.up_s - self.load_s)

    @property
    def other_s(self) -> float:
        """Overhead no phase claimed (progress output, Python between phases); negative means double counting."""
        return self.overhead_s - sum(getattr(self, k) for k in PHASES)

    @property
    def overhead_ratio(self) -> float:
        """Share of the plan's wall time (model load excluded) spent outside load generation."""
        base = self.wall_s - self.up_s
        return 0.0 if base <= 0 else self.overhead_s / base

    def as_dict(self) -> dict:
        d = {f.name: (round(getattr(self, f.name), 3) if f.name != "points" else self.points)
             for f in fields(self)}
        return d | {"overhead_s": round(self.overhead_s, 3), "other_s": round(self.other_s, 3),
                    "overhead_ratio": round(self.overhead_ratio, 4), "definition": DEFINITION}

    @classmethod
    def merged(cls, prev: dict, cur: Timings) -> Timings:
        """A resumed run: every measured field adds to what the earlier attempts measured; the ratio is
        recomputed from the totals (not taken from the last attempt)."""
        out = cls()
        for f in fields(cls):
            v = prev.get(f.name, 0)
            base = v if isinstance(v, int | float) and math.isfinite(v) else 0
            setattr(out, f.name, type(getattr(cur, f.name))(base + getattr(cur, f.name)))
        return out


@dataclass
class Window:
    """A point's load on the wall clock: schedule t0 (load.json), first send, last response."""

    t0: float
    first: float
    last: float


def load_window(point_dir: Path) -> Window | None:
    """A point's load window from its records (load.json t0 + record times), or None when the point has no
    readable records. A request that never left (no sent_s) is not load; one that left counts until it ended or
    was given up (done_s is set on errors, timeouts and cancellations; without one, until its send)."""
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        t0 = float(json.loads((point_dir / "load.json").read_text())["t0_wall"])
        table = pq.read_table(point_dir / "requests.parquet", columns=["sent_s", "done_s"])
    except Exception:  # no records (failed before load), or a stand-in in tests
        return None
    sent = table.column("sent_s")
    done = pc.if_else(pc.is_null(table.column("done_s")), sent, table.column("done_s"))
    first, last = pc.min(sent).as_py(), pc.max(done).as_py()
    if first is None or last is None:
        return None
    return Window(t0, t0 + first, t0 + max(first, last))


def split_call(call_start: float, call_s: float, w: Window | None) -> tuple[float, float, float, float]:
    """Split one load call (wall-clock start, duration) into (lead-in up to t0, wait for the first arrival, load
    window, tail), each >= 0, summing to call_s. Everything is clipped to the call (one host's clocks, but never
    more load than the call lasted)."""
    if w is None or call_s <= 0:
        return max(call_s, 0.0), 0.0, 0.0, 0.0
    end = call_start + call_s

    def at(x: float) -> float:
        return min(max(x, call_start), end)

    t0, first, last = at(w.t0), at(w.first), at(w.last)
    t0 = min(t0, first)
    lead, wait, load = t0 - call_start, first - t0, max(last - first, 0.0)
    return lead, wait, load, max(call_s - lead - wait - load, 0.0)
