"""Where does moving the KV cost more than co-location's penalty? (data for the report's KV section)

Disaggregation adds a KV transfer to each request's TTFT: latency + bytes / bandwidth, bytes from the KV size
model. Co-location instead makes the decode streams sharing the GPU wait while a prompt is prefilled; the penalty
is modelled as `penalty_fraction` x prefill time (1.0 = a full stall, as with unchunked prefill; chunked prefill
spreads it, so a smaller fraction). The crossover is the input length where transfer time equals that penalty.
Prefill times come from a measurement (kvprobe --prefill; log-log interpolation, FLOPs-scaled beyond it) or from
model FLOPs at an effective rate. Every link states its bandwidth, latency and where they come from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from suite.kvprofile.sizing import kv_size
from suite.modelcfg import ModelSize

GRID = tuple(round(128 * 2 ** (i / 4)) for i in range(41))  # 128 .. 131072, 4 points per doubling


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth_Bps: float
    latency_s: float
    source: str


# Line rates from the specifications: upper bounds (real TCP and RDMA stacks reach less). Latencies are assumed.
SPEC_LINKS = (
    Link("PCIe Gen5 x16", 63e9, 10e-6, "spec: PCIe 5.0 x16 = 32 GT/s x 16 lanes, 128b/130b = 63 GB/s per direction; "
                                       "latency assumed 10 us"),
    Link("400 Gb/s RDMA", 50e9, 10e-6, "spec: 400 Gb/s line rate (NDR InfiniBand / RoCE) = 50 GB/s; latency assumed "
                                       "10 us"),
    Link("100 Gb/s RDMA", 12.5e9, 10e-6, "spec: 100 Gb/s line rate = 12.5 GB/s; latency assumed 10 us"),
    Link("25 Gb/s TCP", 3.125e9, 50e-6, "spec: 25 Gb/s line rate = 3.125 GB/s (TCP reaches less); latency assumed "
                                        "50 us"),
)


def measured_link(probe: dict, name: str = "NVLink (measured)") -> Link:
    """The coalesced NCCL sends of a kvprobe result, fitted as latency + bytes / bandwidth."""
    fit = probe.get("summary", {}).get("link_fit_coalesced")
    if not fit:
        raise ValueError("kvprobe result has no coalesced fit (run the coalesced pattern at >= 2 lengths)")
    env = probe.get("environment", {})
    gpus = env.get("gpus") or ["CPU"]
    where = f"{len(gpus)}x {gpus[0]}" if len(set(gpus)) == 1 else ", ".join(gpus)
    return Link(name, fit["bandwidth_gbps"] * 1e9, max(fit["latency_us"], 0.0) * 1e-6,
                f"measured: kvprobe {probe.get('created', '?')} on {where}, {probe.get('backend')} "
                f"{env.get('nccl', '')}, fit of coalesced sends".replace("  ", " "))


def scenarios(probe: dict | None = None) -> list[Link]:
    return ([measured_link(probe)] if probe else []) + list(SPEC_LINKS)


def transfer_s(link: Link, m: ModelSize, tokens: int, kv_dtype: str = "auto") -> float:
    return link.latency_s + tokens * m.kv_bytes_per_token(kv_dtype) / link.bandwidth_Bps


@dataclass(frozen=True)
class PrefillCurve:
    """Prefill seconds vs prompt tokens."""

    fn: Callable[[int], float]
    source: str

    def __call__(self, tokens: int) -> float:
        return self.fn(tokens)

    @classmethod
    def from_points(cls, m: ModelSize, points: list[tuple[int, float]], source: str) -> PrefillCurve:
        pts = sorted(points)
        if not pts:
            raise ValueError("no prefill points")

        def fn(n: int) -> float:
            if n <= pts[0][0]:
                return pts[0][1]  # overhead-bound floor: shorter prompts are not faster
            if n >= pts[-1][0]:
                return pts[-1][1] * m.prefill_flops(n) / m.prefill_flops(pts[-1][0])
            for (a, ta), (b, tb) in itertools.pairwise(pts):
                if a <= n <= b:
                    w = math.log(n / a) / math.log(b / a)
                    return math.exp(math.log(ta) + w * (math.log(tb) - math.log(ta)))
            raise AssertionError("unreachable")

        return cls(fn, source)

    @classmethod
    def from_probe(cls, m: ModelSize, probe: dict) -> PrefillCurve:
        pf = probe.get("prefill") or {}
        if not pf.get("points"):
            raise ValueError("kvprobe result has no prefill points (run with --prefill)")
        return cls.from_points(m, [(p["tokens"], p["median_ms"] / 1e3) for p in pf["points"]],
                               f"measured: {pf.get('method', 'prefill')} on {pf.get('device', '?')}, "
                               f"{probe.get('created', '?')}")

    @classmethod
    def from_flops(cls, m: ModelSize, tflops: float, overhead_s: float = 0.0) -> PrefillCurve:
        return cls(lambda n: overhead_s + m.prefill_flops(n) / (tflops * 1e12),
                   f"model: FLOPs at {tflops:.0f} TFLOP/s + {overhead_s * 1e3:.1f} ms")


def crossover(m: ModelSize, prefill: PrefillCurve, link: Link, penalty_fraction: float = 1.0, kv_dtype: str = "auto",
              grid: tuple[int, ...] = GRID) -> dict:
    """Lengths where transfer time crosses penalty_fraction x prefill time, and which side transfer is worse on."""
    ratio = [transfer_s(link, m, n, kv_dtype) / (penalty_fraction * prefill(n)) for n in grid]
    crossings = []
    for (a, ra), (b, rb) in itertools.pairwise(zip(grid, ratio, strict=True)):
        if (ra - 1) * (rb - 1) < 0:  # geometric interpolation of log(ratio) between grid points
            w = math.log(ra) / (math.log(ra) - math.log(rb))
            crossings.append(round(a * (b / a) ** w))
    lo, hi = grid[0], grid[-1]
    if not crossings:
        verdict = (f"transfer exceeds the penalty at every length from {lo:,} to {hi:,} tokens" if ratio[0] > 1 else
                   f"transfer stays below the penalty from {lo:,} to {hi:,} tokens")
    elif len(crossings) == 1:
        side = "below" if ratio[0] > 1 else "above"
        verdict = f"transfer exceeds the penalty {side} ~{crossings[0]:,} tokens"
    else:
        verdict = "transfer and penalty cross at ~" + ", ~".join(f"{c:,}" for c in crossings) + " tokens"
    return {"link": link.name, "bandwidth_gbps": link.bandwidth_Bps / 1e9, "latency_us": link.latency_s * 1e6,
            "source": link.source, "penalty_fraction": penalty_fraction, "crossings": crossings,
            "transfer_exceeds_at_min": ratio[0] > 1, "verdict": verdict}


def kv_section_data(m: ModelSize, probe: dict | None = None, prefill: PrefillCurve | None = None,
                    penalty_fraction: float = 1.0, kv_dtype: str = "auto", attributions: list[dict] | None = None,
                    grid: tuple[int, ...] = GRID) -> dict:
    """Everything the report's KV section shows: tables (lists of dicts) and series ({x: [...], y: [...]}).

    probe: a kvprobe result (measured patterns, the measured link, and prefill points when it has them);
    prefill: overrides the probe's prefill curve; attributions: Attribution.to_dict() of measured P/D points.
    """
    if prefill is None and probe and (probe.get("prefill") or {}).get("points"):
        prefill = PrefillCurve.from_probe(m, probe)
    links = scenarios(probe)
    size = kv_size(m, kv_dtype, (128, 2048, 8192, 32768))
    data: dict = {
        "model": size.to_dict(),
        "links": [{"link": ln.name, "bandwidth_gbps": ln.bandwidth_Bps / 1e9, "latency_us": ln.latency_s * 1e6,
                   "source": ln.source} for ln in links],
        "link_lines": {ln.name: {"tokens": list(grid), "ms": [transfer_s(ln, m, n, kv_dtype) * 1e3 for n in grid]}
                       for ln in links},
        "measured": {},
        "prefill": None, "crossover": [], "ttft_share": [], "attributions": attributions or [],
        "notes": [f"penalty = {penalty_fraction:g} x prefill time of the same prompt (decode streams sharing the "
                  "GPU wait for it when co-located)",
                  "spec links are line rates: upper bounds, so their crossovers are optimistic for disaggregation"],
    }
    if probe:
        for p in probe.get("p2p", []):
            if "median_ms" in p:
                s = data["measured"].setdefault(p["pattern"], {"tokens": [], "ms": [], "p99_ms": []})
                s["tokens"].append(p["tokens"])
                s["ms"].append(p["median_ms"])
                s["p99_ms"].append(p["p99_ms"])
        data["measured_source"] = measured_link(probe).source if probe.get("summary") else None
    if prefill:
        data["prefill"] = {"tokens": list(grid), "ms": [prefill(n) * 1e3 for n in grid], "source": prefill.source}
        data["crossover"] = [crossover(m, prefill, ln, penalty_fraction, kv_dtype, grid) for ln in links]
        for n in (128, 512, 2048, 8192, 32768):
            row = {"tokens": n, "prefill_ms": prefill(n) * 1e3}
            for ln in links:
                t = transfer_s(ln, m, n, kv_dtype)
                row[ln.name] = t / (t + prefill(n))
            data["ttft_share"].append(row)
    return data


def link_table(links: list[Link]) -> list[dict]:
    return [asdict(ln) for ln in links]
