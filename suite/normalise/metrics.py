"""Exposition text -> normalised series, per role; before/after deltas; histogram quantile estimates.

One `Series` per (normalised name, role): counters and histograms are summed over the selected native series
(TP ranks, streaming flags, finish reasons), gauges combined with the table's `agg`. Units are converted with the
table's `scale` (SGLang ms/MB/GB/s -> s/bytes/bytes/s), histogram bucket bounds included.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

from suite.frameworks.base import Framework, MetricMap, all_frameworks, get

CORE = ("ttft_s", "e2e_s", "prompt_tokens", "generation_tokens")  # an engine page without these is not one we know
# The emulated shared KV pool's own page (suite/emulator/kvpool.py; disagg-kvpool). Hits as the engines see them
# are on the prefill engine's page (vLLM external_cache_hit_tokens, SGLang kvpool_hit_tokens).
KVPOOL_METRICS = {
    "kvpool_lookups": MetricMap("pdsuite_kvpool_lookups"),
    "kvpool_queried_blocks": MetricMap("pdsuite_kvpool_queried_blocks"),
    "kvpool_hit_blocks": MetricMap("pdsuite_kvpool_hit_blocks"),
    "kvpool_stored_blocks": MetricMap("pdsuite_kvpool_stored_blocks"),
    "kvpool_blocks": MetricMap("pdsuite_kvpool_blocks"),
    "kvpool_bytes": MetricMap("pdsuite_kvpool_bytes"),
}
QUANTILES = (0.5, 0.9, 0.99)


class MetricsError(ValueError):
    """Text that is not Prometheus exposition, or whose framework cannot be told."""


@dataclass
class Series:
    name: str  # normalised name, e.g. ttft_s
    role: str  # prefill | decode | colocated | router | unknown
    kind: str  # counter | gauge | histogram
    native: str
    value: float | None = None  # counter total (or delta) / gauge value
    count: float | None = None  # histogram
    sum: float | None = None
    le: tuple[float, ...] = ()  # ascending upper bounds, last is +inf
    cum: tuple[float, ...] = ()  # cumulative counts per bound
    n_series: int = 0  # native series combined
    reset: bool = False  # counter went backwards between snapshots (engine restarted)

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float:
        return hist_quantile(self.le, self.cum, q)

    def row(self) -> dict:
        r = {"metric": self.name, "role": self.role, "kind": self.kind, "native": self.native,
             "value": self.value, "count": self.count, "sum": self.sum, "mean": self.mean, "reset": self.reset}
        for q in QUANTILES:
            r[f"p{round(q * 100)}"] = self.quantile(q) if self.kind == "histogram" and self.count else None
        return r


@dataclass
class Snapshot:
    framework: str
    series: dict[tuple[str, str], Series] = field(default_factory=dict)  # (name, role) -> Series
    page: str = "engine"  # engine | router | empty
    missing: list[str] = field(default_factory=list)  # table names whose family is absent
    unknown: list[str] = field(default_factory=list)  # families in the framework's namespaces we do not map
    other: list[str] = field(default_factory=list)  # other families (process_, python_, http_ ...)

    @property
    def warnings(self) -> list[str]:
        w = []
        if self.page == "engine":
            lost = [c for c in CORE if c in self.missing]
            if lost:
                w.append(f"{self.framework} engine metrics lack {', '.join(lost)}: unknown or unsupported version?")
        if self.page == "empty":
            w.append(f"no {self.framework} metric families on this page (metrics disabled, or unknown version?)")
        if any(s.reset for s in self.series.values()):
            w.append("a counter went backwards between snapshots: the engine restarted during the point")
        return w

    def get(self, name: str, role: str | None = None) -> Series | None:
        if role is not None:
            return self.series.get((name, role))
        hits = [s for (n, _), s in self.series.items() if n == name]
        return hits[0] if len(hits) == 1 else None

    def rows(self) -> list[dict]:
        return [s.row() for s in self.series.values()]


# ---- parsing ----------------------------------------------------------------------------------------------
def parse_families(text: str) -> dict:
    """Family name -> prometheus_client Metric. Corrupt text raises MetricsError (one line)."""
    from prometheus_client.parser import text_string_to_metric_families

    if "\x00" in text:
        raise MetricsError("not Prometheus exposition text: NUL bytes (a binary file?)")
    try:
        fams = {f.name: f for f in text_string_to_metric_families(text)}
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise MetricsError(f"not Prometheus exposition text: {str(e).splitlines()[0] if str(e) else e!r}") from None
    if not fams and text.strip():
        raise MetricsError("not Prometheus exposition text: no metric families found")
    for fam in fams.values():
        check_family(fam)
    return fams


def check_family(fam) -> None:
    """Counters and histograms only count up from zero: a NaN, an infinity or a negative value, or histogram
    buckets that are not cumulative, would turn into wrong deltas and quantiles (p50 = 2.5 ns), so the page is
    refused with the family and sample named."""
    kind = _kind(fam)
    if kind not in ("counter", "histogram"):
        return
    buckets: dict[tuple, list[tuple[float, float]]] = {}
    counts: dict[tuple, float] = {}
    for smp in fam.samples:
        if smp.name.endswith("_created"):
            continue
        v = smp.value
        if not math.isfinite(v) or v < 0:
            raise MetricsError(f"{kind} {smp.name}{_labels(smp.labels)} = {v!r}: must be a finite number >= 0")
        if kind != "histogram":
            continue
        key = tuple(sorted((k, x) for k, x in smp.labels.items() if k != "le"))
        if smp.name.endswith("_bucket"):
            try:
                le = float(smp.labels["le"])
            except (KeyError, ValueError):
                raise MetricsError(f"histogram {smp.name}{_labels(smp.labels)}: bucket without a numeric le") from None
            buckets.setdefault(key, []).append((le, v))
        elif smp.name.endswith("_count"):
            counts[key] = v
    for key, bs in buckets.items():
        bs.sort()
        for (le_a, a), (le_b, b) in itertools.pairwise(bs):
            if b < a:
                raise MetricsError(f"histogram {fam.name}{_labels(dict(key))}: bucket le={le_b:g} holds {b:g} < "
                                   f"{a:g} in le={le_a:g} (buckets must be cumulative)")
        if not math.isinf(bs[-1][0]):
            raise MetricsError(f"histogram {fam.name}{_labels(dict(key))}: no le=\"+Inf\" bucket")
        if key in counts and counts[key] != bs[-1][1]:
            raise MetricsError(f"histogram {fam.name}{_labels(dict(key))}: _count {counts[key]:g} != le=+Inf "
                               f"bucket {bs[-1][1]:g}")


def _labels(labels: dict) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""


def _family(fams: dict, native: str):
    # Without a TYPE line a counter keeps its _total suffix in the family name.
    return fams.get(native) or fams.get(native + "_total")


def _natives(fw: Framework) -> set[str]:
    return {m.native for m in (*fw.engine_metrics.values(), *fw.router_metrics.values())}


def detect_framework(fams: dict) -> str:
    scores = {fw.name: sum(_family(fams, n) is not None for n in _natives(fw)) for fw in all_frameworks()}
    best = max(scores, key=scores.get) if scores else None
    if not best or scores[best] == 0 or list(scores.values()).count(scores[best]) > 1:
        raise MetricsError(f"cannot tell the framework from the metric names (matches: {scores}); pass --framework")
    return best


# ---- normalisation ----------------------------------------------------------------------------------------
def _role(fw: Framework, labels: dict[str, str], default: str) -> str:
    if fw.role_label and fw.role_label in labels:
        v = labels[fw.role_label]
        return fw.role_values.get(v, v)
    return default


def _step(le: tuple[float, ...], cum: tuple[float, ...], bound: float) -> float:
    """Cumulative count at `bound` for a histogram whose own bounds may differ (step function, conservative)."""
    best = 0.0
    for b, c in zip(le, cum, strict=True):
        if b <= bound:
            best = c
        else:
            break
    return best


def _combine(name: str, role: str, kind: str, m: MetricMap, samples: list) -> Series:
    s = Series(name, role, kind, m.native, n_series=0)
    if kind == "histogram":
        per: dict[tuple, dict] = {}  # series key -> {"b": {le: v}, "count", "sum"}
        for smp in samples:
            key = tuple(sorted((k, v) for k, v in smp.labels.items() if k != "le"))
            d = per.setdefault(key, {"b": {}, "count": 0.0, "sum": 0.0})
            if smp.name.endswith("_bucket"):
                d["b"][float(smp.labels["le"])] = smp.value
            elif smp.name.endswith("_count"):
                d["count"] = smp.value
            elif smp.name.endswith("_sum"):
                d["sum"] = smp.value
        bounds = sorted({b for d in per.values() for b in d["b"]})
        cum = [0.0] * len(bounds)
        for d in per.values():
            own = tuple(sorted(d["b"]))
            vals = tuple(d["b"][b] for b in own)
            for i, b in enumerate(bounds):
                cum[i] += _step(own, vals, b)
        s.count = sum(d["count"] for d in per.values())
        s.sum = sum(d["sum"] for d in per.values()) * m.scale
        s.le = tuple(b * m.scale for b in bounds)
        s.cum = tuple(cum)
        s.n_series = len(per)
        return s
    vals = [smp.value for smp in samples if not smp.name.endswith("_created")]
    s.n_series = len(vals)
    if kind == "gauge" and m.agg == "mean":
        s.value = sum(vals) / len(vals) * m.scale if vals else None
    elif kind == "gauge" and m.agg == "max":
        s.value = max(vals) * m.scale if vals else None
    else:
        s.value = sum(vals) * m.scale
    return s


def _kind(fam) -> str:
    if fam.type in ("histogram", "counter", "gauge"):
        return fam.type
    return "counter" if fam.name.endswith("_total") else "gauge"  # untyped: best guess


def normalise_text(text: str, framework: str | None = None, role: str | None = None) -> Snapshot:
    """One exposition page -> Snapshot. `role` tags series the page itself does not tag (default: unknown)."""
    fams = parse_families(text)
    fw = get(framework or detect_framework(fams))
    snap = Snapshot(fw.name)
    used: set[str] = set()
    found = {"engine": 0, "router": 0, "kvpool": 0}
    for page, table, default in (("engine", fw.engine_metrics, role or "unknown"),
                                 ("router", fw.router_metrics, "router"), ("kvpool", KVPOOL_METRICS, "kvpool")):
        for name, m in table.items():
            fam = _family(fams, m.native)
            if fam is None:
                snap.missing.append(name)
                continue
            used.add(fam.name)
            found[page] += 1
            kind = _kind(fam)
            by_role: dict[str, list] = {}
            for smp in fam.samples:
                if smp.name.endswith("_created"):
                    continue
                if all(smp.labels.get(k) == v for k, v in m.labels.items()):
                    by_role.setdefault(_role(fw, smp.labels, default), []).append(smp)
            for r, samples in by_role.items():
                snap.series[(name, r)] = _combine(name, r, kind, m, samples)
    snap.page = next((p for p in ("engine", "router", "kvpool") if found[p]), "empty")
    if snap.page == "router":  # a router page lacks every engine metric by design
        snap.missing = [n for n in snap.missing if n in fw.router_metrics]
    elif snap.page == "kvpool":
        snap.missing = [n for n in snap.missing if n in KVPOOL_METRICS]
    elif snap.page == "engine":
        snap.missing = [n for n in snap.missing if n in fw.engine_metrics]
    if snap.page != "kvpool":
        snap.missing = [n for n in snap.missing if n not in KVPOOL_METRICS]
    spaces = {n.split(":")[0] + ":" if ":" in n else n.split("_")[0] + "_" for n in _natives(fw)}
    for fname in sorted(fams):
        if fname in used or fname.endswith("_created"):
            continue
        (snap.unknown if any(fname.startswith(p) for p in spaces) else snap.other).append(fname)
    return snap


# ---- deltas -----------------------------------------------------------------------------------------------
def delta(before: Snapshot | None, after: Snapshot) -> Snapshot:
    """What happened during a point: counter and histogram deltas, gauges as of `after`."""
    out = replace(after, series={})
    for key, a in after.series.items():
        b = before.series.get(key) if before else None
        if b is None or a.kind == "gauge":
            out.series[key] = a
        elif a.kind == "counter":
            went_back = (a.value or 0) < (b.value or 0)
            out.series[key] = replace(a, value=a.value if went_back else a.value - b.value, reset=went_back)
        else:
            went_back = (a.count or 0) < (b.count or 0)
            if went_back:
                out.series[key] = replace(a, reset=True)
                continue
            cum = tuple(c - _step(b.le, b.cum, bound) for bound, c in zip(a.le, a.cum, strict=True))
            out.series[key] = replace(a, count=a.count - b.count, sum=a.sum - b.sum, cum=cum)
    return out


# ---- quantiles --------------------------------------------------------------------------------------------
def hist_bucket(le, cum, q: float) -> tuple[int, float, float] | None:
    """(index, lower bound, upper bound) of the bucket holding quantile q; None for an empty histogram."""
    if not cum or cum[-1] <= 0:
        return None
    rank = q * cum[-1]
    i = next(i for i, c in enumerate(cum) if c >= rank)
    lo = le[i - 1] if i > 0 else min(0.0, le[0])
    return i, lo, le[i]


def hist_quantile(le, cum, q: float) -> float:
    """Prometheus histogram_quantile: linear within the bucket; the +Inf bucket gives the highest finite bound."""
    found = hist_bucket(le, cum, q)
    if found is None:
        return math.nan
    i, lo, hi = found
    if math.isinf(hi):
        return le[i - 1] if i > 0 else math.nan
    c_lo = cum[i - 1] if i > 0 else 0.0
    width = cum[i] - c_lo
    return hi if width <= 0 else lo + (hi - lo) * (q * cum[-1] - c_lo) / width
