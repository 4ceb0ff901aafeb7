"""Synthetic results trees for the report's tests and its scale benchmark (bench/report_scale.py).

Everything here is made up; trees are marked emulated unless a test asks otherwise. Server metrics are written
with the framework's own table (native names and units), so the normaliser reads them like real pages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from suite.frameworks.base import get
from suite.schema import PointResult, RunManifest, Workload

BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
ROLES = {"disagg": {"prefill": "prefill", "decode": "decode", "router": "router"},
         "colocated": {"engine": "colocated"}, "tp2": {"engine": "colocated"},
         "dp2": {"replica0": "colocated", "replica1": "colocated", "router": "router"}}
ROLES |= {"disagg-1gpu": ROLES["disagg"], "colocated-1gpu": ROLES["colocated"]}
SPEED = {"disagg": 0.6, "colocated": 1.0, "tp2": 0.7, "dp2": 0.8,  # TTFT scale vs co-located (made up)
         "disagg-1gpu": 0.9, "colocated-1gpu": 1.0}


def _hist(m, xs: np.ndarray, labels: str) -> str:
    """A histogram page for MetricMap m (its label selector included, e.g. SGLang's stage)."""
    native, scale = m.native, m.scale
    labels += "".join(f'{k}="{v}",' for k, v in m.labels.items())
    le = np.array(BUCKETS_S) / scale
    v = xs / scale
    lines = [f"# TYPE {native} histogram"]
    counts = np.searchsorted(np.sort(v), le, side="right")
    for b, c in zip(le, counts, strict=True):
        lines.append(f'{native}_bucket{{{labels}le="{b:g}"}} {float(c)}')
    lines += [f'{native}_bucket{{{labels}le="+Inf"}} {float(len(v))}', f"{native}_count{{{labels[:-1]}}} "
              f"{float(len(v))}", f"{native}_sum{{{labels[:-1]}}} {float(v.sum())}"]
    return "\n".join(lines)


def _counter(native: str, value: float, labels: str) -> str:
    return f"# TYPE {native}_total counter\n{native}_total{{{labels[:-1]}}} {float(value)}"


def metrics_text(framework: str, role: str, ttft: np.ndarray, prompt_tokens: np.ndarray, kv_bytes_per_token: float,
                 link_Bps: float = 300e9) -> str:
    """An exposition page for one engine after the point (the 'before' page is the same with zero counts)."""
    fw = get(framework)
    t = fw.engine_metrics
    lab = 'model_name="synthetic",'
    if fw.role_label:
        inv = {v: k for k, v in fw.role_values.items()}
        lab += f'{fw.role_label}="{inv.get(role, role)}",'
    parts = [_hist(t["ttft_s"], ttft, lab),
             _hist(t["queue_s"], ttft * 0.1, lab),
             _hist(t["e2e_s"], ttft * 3, lab),
             _counter(t["prompt_tokens"].native, prompt_tokens.sum(), lab),
             _counter(t["generation_tokens"].native, len(ttft) * 16, lab),
             _counter(t["requests_completed"].native, len(ttft), lab)]
    if "prefill_s" in t and role in ("prefill", "colocated"):
        parts.append(_hist(t["prefill_s"], ttft * 0.8, lab))
    if role == "decode":  # synthetic: transfers recorded on the decode side (real engines differ; see tables)
        nbytes = prompt_tokens * kv_bytes_per_token
        xfer = 2e-4 + nbytes / link_Bps
        parts.append(_hist(t["kv_transfer_s"], xfer, lab))
        parts.append(_hist(t["kv_transfer_bytes"], nbytes, lab))
    return "\n".join(parts) + "\n"


def _records(rng, n: int, speed: float, rate: float, out_tokens: int, classes: dict[str, int],
             workload_rng=None) -> pa.Table:
    """workload_rng draws the classes and the arrival schedule (shared by paired runs), rng the server's noise."""
    wrng = workload_rng or rng
    names = np.array(list(classes))
    idx = wrng.integers(0, len(names), n)
    cls, inp = names[idx], np.array([classes[c] for c in names])[idx]
    sched = np.cumsum(wrng.exponential(1 / rate, n))
    sent = sched + rng.exponential(0.0005, n)
    ttft = speed * (0.02 + inp * 2e-5) * rng.lognormal(0, 0.3, n) * (1 + 0.2 * rate)
    gaps = rng.gamma(4, 0.0025, (n, out_tokens - 1)) if out_tokens > 1 else np.zeros((n, 0))
    first = sent + ttft
    times = np.concatenate([first[:, None], first[:, None] + np.cumsum(gaps, axis=1)], axis=1)
    status = np.where(rng.random(n) < 0.002, "error", "ok")
    bad = status != "ok"
    first[bad] = np.nan
    done = times[:, -1].copy()
    done[bad] = np.nan
    lens = np.where(bad, 0, out_tokens)
    offsets = np.r_[0, np.cumsum(lens)].astype(np.int32)
    tt = pa.ListArray.from_arrays(pa.array(offsets), pa.array(times[~bad].ravel()))
    return pa.table({
        "request_id": pa.array(np.char.add("r", np.arange(n).astype(str))),
        "request_class": pa.array(cls), "api": pa.array(np.full(n, "completions")),
        "worker": pa.array(np.full(n, "w0")),
        "input_tokens": pa.array(inp.astype(np.int64)), "max_tokens": pa.array(np.full(n, out_tokens, np.int64)),
        "scheduled_s": pa.array(sched), "sent_s": pa.array(sent), "first_token_s": pa.array(first),
        "done_s": pa.array(done), "token_times_s": tt, "prompt_tokens": pa.array(inp.astype(np.int64)),
        "completion_tokens": pa.array(lens.astype(np.int64)), "status": pa.array(status),
        "http_status": pa.array(np.where(bad, 500, 200).astype(np.int64)),
        "error": pa.array([None] * n, type=pa.string())})


def make_tree(root: str | Path, deployments=(("vllm", "disagg"), ("vllm", "colocated")), rates=(2.0, 8.0),
              reps: int = 3, n_per_rep: int = 200, out_tokens: int = 8, classes: dict[str, int] | None = None,
              emulated: bool = True, seed: int = 0, metrics: bool = True, kv_bytes_per_token: float = 131072.0,
              backend: str | None = None, link_Bps: float = 300e9, speed: dict[str, float] | None = None,
              rep_seeds: bool = False) -> Path:
    """speed: TTFT scale per topology (default SPEED): the known differences a test checks the report against.
    rep_seeds: one workload draw (classes, arrivals) and seed per repetition, shared by every deployment - paired
    repetitions, as the runner makes them - instead of one seed for all and independent draws."""
    classes = classes or {"short": 256, "long": 4096}
    speed = SPEED | (speed or {})
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (root / "manifest.json").write_text(json.dumps(
        RunManifest(plan="synthetic", stamp=root.name, suite_version="test", settings={"MODEL": "synthetic"},
                    versions={"vllm": "synthetic"}, environment={"gpu": "none (synthetic)"},
                    emulated=emulated).model_dump() | {"status": "complete"}))
    be = backend or ("emu" if emulated else "gpu")
    for fw, topo in deployments:
        dep = f"{fw}-{topo}" if be == "gpu" else f"{be}-{fw}-{topo}"
        services = {f"{dep}-{k}": v for k, v in ROLES[topo].items()}
        for rate in rates:
            for rep in range(reps):
                d = root / dep / f"rate={rate:g}" / f"rep{rep}"
                (d / "metrics" / "before").mkdir(parents=True, exist_ok=True)
                (d / "metrics" / "after").mkdir(parents=True, exist_ok=True)
                wrng = np.random.default_rng((seed, int(rate * 1000), rep)) if rep_seeds else None
                table = _records(rng, n_per_rep, speed[topo], rate, out_tokens, classes, wrng)
                pq.write_table(table, d / "requests.parquet")
                pr = PointResult(deployment=dep, framework=fw, topology=topo, backend=be, emulated=emulated,
                                 point=f"rate={rate:g}", repetition=rep,
                                 workload=Workload(arrival="poisson", rate_rps=rate, mix={c: 1 / len(classes)
                                                                                           for c in classes},
                                                   seed=100 + rep if rep_seeds else seed),
                                 started_at="2026-11-27T00:00:00Z", load_wall_s=n_per_rep / rate, services=services)
                (d / "point.json").write_text(pr.model_dump_json())
                if not metrics:
                    continue
                ok = table.column("status").to_numpy(zero_copy_only=False) == "ok"
                ttft = (table.column("first_token_s").to_numpy(zero_copy_only=False)
                        - table.column("sent_s").to_numpy(zero_copy_only=False))[ok]
                ptoks = table.column("input_tokens").to_numpy()[ok].astype(float)
                engines = [(s, r) for s, r in services.items() if r != "router"]
                for i, (svc, role) in enumerate(engines):
                    mine = slice(i, None, len(engines)) if role == "colocated" else slice(None)  # dp2: split
                    share = ttft[mine] * (0.97 if role != "prefill" else 0.8)
                    text = metrics_text(fw, role, share, ptoks[mine], kv_bytes_per_token, link_Bps)
                    (d / "metrics" / "after" / f"{svc}.prom").write_text(text)
                    (d / "metrics" / "before" / f"{svc}.prom").write_text(
                        metrics_text(fw, role, share[:0], ptoks[:0], kv_bytes_per_token))
    return root
