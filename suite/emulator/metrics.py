"""Prometheus families of the emulated framework, built from its declarative table
(`emulator_metrics` in suite/frameworks/<name>.py), plus `pdsuite_emulated_info`.

Callers record in seconds / bytes / tokens under the table's keys; each family converts to its native unit
(scale) and keeps only the labels it declares. Keys a framework does not expose are ignored.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

import prometheus_client.metrics as _pm
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from suite.frameworks.base import Framework, Role

_KINDS = {"histogram": Histogram, "counter": Counter, "gauge": Gauge}


class EmuMetrics:
    def __init__(self, fw: Framework, role: Role, model: str, hardware: str) -> None:
        self.registry = CollectorRegistry()
        self.created = getattr(fw, "emulator_created_series", True)
        static = fw.emulator_labels(role, model)
        self._fams: dict[str, tuple[object, tuple[str, ...], dict[str, str], float, str]] = {}
        for key, spec in fw.emulator_metrics.items():
            name, kind, doc, labels, buckets = spec[:5]
            scale = spec[5] if len(spec) > 5 else 1.0
            kwargs = {"buckets": buckets} if kind == "histogram" else {}
            # prometheus_client appends _total to counters itself
            base = name.removesuffix("_total") if kind == "counter" else name
            fam = _KINDS[kind](base, doc, labelnames=list(labels), registry=self.registry, **kwargs)
            fixed = {k: v for k, v in static.items() if k in labels}
            self._fams[key] = (fam, tuple(labels), fixed, scale, kind)
            if len(fixed) == len(labels):
                fam.labels(**fixed)  # expose the series at zero from the start, as the engines do
        info = Gauge("pdsuite_emulated_info", "This engine is the pdsuite stand-in (emulated), not a real one.",
                     ["flavor", "role", "hardware", "model_name"], registry=self.registry)
        info.labels(flavor=fw.name, role=role.value, hardware=hardware, model_name=model).set(1)

    def has(self, key: str) -> bool:
        return key in self._fams

    def _series(self, key: str, labels: dict[str, str]):
        fam, names, fixed, scale, _ = self._fams[key]
        values = {n: fixed[n] if n in fixed else str(labels.get(n, "")) for n in names}
        return fam.labels(**values), scale

    def observe(self, key: str, value: float, **labels: str) -> None:
        if key in self._fams:
            s, scale = self._series(key, labels)
            s.observe(value * scale)

    def observe_many(self, key: str, values: Iterable[float], **labels: str) -> None:
        """observe() for many values at once: bucket counts and sum added once per bucket (same exposition as
        observing one by one; per-token observe() calls cost the engine loop more than the token writes)."""
        if key not in self._fams:
            return
        s, scale = self._series(key, labels)
        bounds = s._upper_bounds  # prometheus_client keeps per-bucket (non-cumulative) counts, +Inf last
        counts = [0] * len(bounds)
        total = 0.0
        for v in values:
            v *= scale
            total += v
            counts[bisect_left(bounds, v)] += 1
        s._sum.inc(total)
        for i, c in enumerate(counts):
            if c:
                s._buckets[i].inc(c)

    def inc(self, key: str, value: float = 1.0, **labels: str) -> None:
        if key in self._fams:
            s, scale = self._series(key, labels)
            s.inc(value * scale)

    def set(self, key: str, value: float, **labels: str) -> None:
        if key in self._fams:
            s, scale = self._series(key, labels)
            s.set(value * scale)

    def render(self) -> bytes:
        # prometheus_client decides on *_created samples at collect time, from a module flag
        keep = _pm._use_created
        _pm._use_created = self.created and keep
        try:
            return generate_latest(self.registry)
        finally:
            _pm._use_created = keep
