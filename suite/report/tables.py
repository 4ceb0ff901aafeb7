"""The report's numbers: per deployment x point x class summary with CIs, repetition aggregates, improvement over
the co-located baseline, server-side breakdown, KV-transfer rows, TTFT consistency. All vectorised per group."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from suite.report.load import Dataset
from suite.stats import DEFAULT_B, aggregate_reps, compare, estimate, goodput_mask, too_few, ttft_consistency
from suite.stats.histogram import HistSample, merge

# metric -> quantiles reported (seconds)
LATENCY = {"ttft": (0.5, 0.9, 0.99), "itl": (0.5, 0.99), "tpot": (0.5, 0.99), "e2e": (0.5, 0.99)}
COMPARED = (("ttft", 0.5), ("ttft", 0.99), ("tpot", 0.5), ("itl", 0.99), ("e2e", 0.99))
BASELINE_TOPOLOGY = "colocated"
SAME_GPU_BASELINE = {"disagg-1gpu": "colocated-1gpu"}  # P and D on one GPU compare with one engine on that GPU
GROUP = ["deployment", "point", "cls"]
# server-side components per request, in pipeline order; stages a framework lacks are simply absent. Not here:
# kv_wait_s (D waiting for the KV overlaps P's queue and prefill) - it would double-count.
BREAKDOWN = ("decode_prepare_s", "decode_bootstrap_s", "prefill_bootstrap_s", "queue_s", "prefill_s", "kv_transfer_s",
             "first_decode_s", "decode_s")


@dataclass
class Tables:
    summary: pd.DataFrame
    reps: pd.DataFrame
    rep_agg: pd.DataFrame
    improvement: pd.DataFrame
    breakdown: pd.DataFrame
    kv: pd.DataFrame
    consistency: pd.DataFrame
    cdf: dict = field(default_factory=dict)  # (metric, deployment) -> (quantile grid values)
    slos: dict = field(default_factory=dict)
    headline: pd.DataFrame = field(default_factory=pd.DataFrame)  # P/D vs each co-located baseline (headline.py)


def _segments(key: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """key -> its values sorted. Keys are few and the rows mostly grouped already, so a stable int argsort
    (near-linear on such data) plus one float sort per segment beats a lexsort over everything."""
    ok = ~np.isnan(values)
    key, values = key[ok], values[ok]
    if not len(key):
        return {}
    order = np.argsort(key, kind="stable")
    k, v = key[order], values[order]
    cuts = np.flatnonzero(np.diff(k)) + 1
    starts = np.r_[0, cuts]
    out = {}
    for s, seg in zip(starts, np.split(v, cuts), strict=True):
        seg.sort()
        out[int(k[s])] = seg
    return out


def _group_codes(ds: Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """Groups (deployment, point, cls) and each request's group; rep = pidx."""
    pts = ds.points
    dp = pd.MultiIndex.from_frame(pts[["deployment", "point"]])
    dp_code, dp_uni = pd.factorize(dp)
    return dp_uni, dp_code


def build(ds: Dataset, slos: dict[str, dict], b: int = DEFAULT_B) -> Tables:
    req, pts = ds.requests, ds.points
    dp_uni, dp_code = _group_codes(ds)
    cats = list(req["cls"].cat.categories) if len(req) else []
    ncls, npts = max(1, len(cats)), len(pts)
    rcls = req["cls"].cat.codes.to_numpy().astype(np.int64) if len(req) else np.zeros(0, np.int64)
    rp = req["pidx"].to_numpy().astype(np.int64) if len(req) else np.zeros(0, np.int64)
    gkey = dp_code[rp] * ncls + rcls if len(req) else rp  # group of each request
    rkey = gkey * npts + rp  # group x repetition
    ok = req["ok"].to_numpy() if len(req) else np.zeros(0, bool)

    offered, dur = _windows(req, pts, rp)

    seg: dict[str, dict[int, np.ndarray]] = {}
    for m in ("ttft", "tpot", "e2e"):
        v = req[m].to_numpy().copy() if len(req) else np.zeros(0)
        v[~ok] = np.nan
        seg[m] = _segments(rkey, v)
    # ITL: one histogram sample per (repetition, class) from load.py; it indexes like a sorted array
    seg["itl"] = {int((dp_code[p] * ncls + c) * npts + p): h for (p, c), h in ds.itl.items() if len(h)}

    good = goodput_mask(req["ttft"].to_numpy(), req["tpot"].to_numpy(), ok, rcls,
                        {i: slos.get(str(c), {}) for i, c in enumerate(cats)}) if len(req) else np.zeros(0, bool)
    counts = pd.DataFrame({"k": rkey, "ok": ok, "good": good,
                           "err": req["err"].to_numpy() if len(req) else ok,
                           "tmo": req["tmo"].to_numpy() if len(req) else ok,
                           "out": np.where(ok, req["n_out"].to_numpy(), 0) if len(req) else ok,
                           "inp": req["input_tokens"].to_numpy() if len(req) else ok}).groupby("k").agg(
        n=("ok", "size"), ok=("ok", "sum"), good=("good", "sum"), err=("err", "sum"), tmo=("tmo", "sum"),
        out=("out", "sum"), inp=("inp", "mean"))

    rows, rep_rows, store = [], [], {}
    for g in np.unique(gkey):
        dpi, ci = divmod(int(g), ncls)
        dep, point = dp_uni[dpi]
        pid = np.unique(rp[gkey == g])
        keys = [int(g) * npts + int(p) for p in pid]
        first = pts.iloc[int(pid[0])]
        row = {"deployment": dep, "framework": first["framework"], "topology": first["topology"],
               "backend": first["backend"], "emulated": bool(pts.iloc[pid]["emulated"].any()), "point": point,
               "rate_rps": first["rate_rps"], "offered_rps": float(np.nanmean(offered[pid]))
               if np.isfinite(offered[pid]).any() else math.nan, "cls": cats[ci] if cats else "default",
               "reps": len(pid)}
        c = counts.loc[keys]
        row |= {"requests": int(c["n"].sum()), "ok": int(c["ok"].sum()), "errors": int(c["err"].sum()),
                "timeouts": int(c["tmo"].sum()), "input_tokens_mean": float(np.average(c["inp"], weights=c["n"]))}
        d = dur[pid]
        per_rep = {"req_per_s": c["ok"].to_numpy() / d, "out_tok_per_s": c["out"].to_numpy() / d,
                   "goodput_rps": c["good"].to_numpy() / d}
        for name, vals in per_rep.items():
            a = aggregate_reps(vals.tolist())
            row |= {name: a["mean"], f"{name}_ci_low": a["ci_low"], f"{name}_ci_high": a["ci_high"]}
        row["goodput_frac"] = float(c["good"].sum() / c["n"].sum()) if c["n"].sum() else math.nan
        for m, qs in LATENCY.items():
            reps = [seg[m].get(k, np.zeros(0)) for k in keys]
            store[(m, dep, point, row["cls"])] = reps
            n_min = min(len(r) for r in reps)  # a per-repetition quantile rests on this many at least
            row[f"{m}_n_min"] = n_min
            for q in qs:
                e = estimate(reps, ("quantile", q), b, seed=int(g))
                tag = f"{m}_p{round(q * 100)}"
                row |= {tag: e.value, f"{tag}_ci_low": e.ci_low, f"{tag}_ci_high": e.ci_high,
                        f"{tag}_few": too_few(q, n_min)}
        store[("reps", dep, point, row["cls"])] = [(int(pts.iloc[int(p)]["rep"]), _seed(pts.iloc[int(p)]))
                                                   for p in pid]
        store[("out_tok_per_s", dep, point, row["cls"])] = per_rep["out_tok_per_s"].tolist()
        rows.append(row)
        for j, p in enumerate(pid):
            rr = {"deployment": dep, "point": point, "cls": row["cls"], "rep": int(pts.iloc[int(p)]["rep"]),
                  "seed": _seed(pts.iloc[int(p)]), "path": pts.iloc[int(p)]["path"],
                  "requests": int(c["n"].iloc[j]), "offered_rps": float(offered[int(p)])}
            for m in LATENCY:
                x = seg[m].get(keys[j], np.zeros(0))
                rr[f"{m}_p50"] = float(x[max(0, math.ceil(0.5 * len(x)) - 1)]) if len(x) else math.nan
                rr[f"{m}_p99"] = float(x[max(0, math.ceil(0.99 * len(x)) - 1)]) if len(x) else math.nan
            rr |= {k: float(v[j]) for k, v in per_rep.items()}
            rep_rows.append(rr)
    summary = pd.DataFrame(rows)
    reps_df = pd.DataFrame(rep_rows)
    rep_agg = _rep_agg(reps_df)
    from suite.report.headline import headline_rows

    return Tables(summary, reps_df, rep_agg, _improvement(summary, store, b), _breakdown(ds), _kv_rows(ds),
                  _consistency(ds), _cdfs(ds, seg, dp_code, npts, ncls), slos, headline_rows(summary, store, b))


OPEN_LOOP = ("poisson", "constant", "ramp", "step")


def _windows(req: pd.DataFrame, pts: pd.DataFrame, rp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per repetition: the offered rate (requests sent / arrival window) and the throughput window.

    Arrival window: the plan's duration for open-loop arrivals (the schedule spans [0, duration)), else - closed
    loop, traces, or a schedule cut short by num_requests - the span of the send times. The load summary's
    offered_rps wins where the load stage recorded it. Throughput window: first send to last response, at least the
    arrival window, so goodput <= throughput <= offered holds by construction."""
    npts = len(pts)
    if len(req):
        g = pd.DataFrame({"p": rp, "s": req["sent"].to_numpy(), "d": req["done"].to_numpy()}).groupby("p").agg(
            n=("s", "count"), s=("s", "min"), s1=("s", "max"), d=("d", "max"))
    else:
        g = pd.DataFrame(columns=["n", "s", "s1", "d"], dtype=float)
    at = g.index.to_numpy().astype(np.int64)

    def col(name):
        out = np.full(npts, np.nan)
        out[at] = g[name].to_numpy(dtype=float)
        return out

    n, s0, s1, d1 = col("n"), col("s"), col("s1"), col("d")
    plan_dur = pts["duration_s"].astype(float).to_numpy() if "duration_s" in pts else np.full(npts, np.nan)
    open_loop = pts["arrival"].isin(OPEN_LOOP).to_numpy() if "arrival" in pts else np.zeros(npts, bool)
    use_plan = open_loop & np.isfinite(plan_dur) & (plan_dur > 0) & ~(s1 < 0.5 * plan_dur)
    window = np.where(use_plan, plan_dur, s1 - s0)
    with np.errstate(invalid="ignore", divide="ignore"):
        offered = np.where(window > 0, np.nan_to_num(n) / window, np.nan)
    recorded = pts["offered_rps"].astype(float).to_numpy() if "offered_rps" in pts else np.full(npts, np.nan)
    offered = np.where(np.isfinite(recorded), recorded, offered)
    dur = np.fmax(d1 - s0, window)
    wall = pts["load_wall_s"].astype(float).to_numpy()
    return offered, np.where(np.isfinite(dur) & (dur > 0), dur, wall)


def _seed(pt) -> int | None:
    v = pt.get("seed") if hasattr(pt, "get") else None
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def _rep_agg(reps: pd.DataFrame) -> pd.DataFrame:
    if reps.empty:
        return pd.DataFrame()
    out = []
    for key, g in reps.groupby(GROUP, observed=True):
        for m in ("ttft_p50", "ttft_p99", "tpot_p50", "e2e_p50", "req_per_s", "goodput_rps"):
            out.append(dict(zip(GROUP, key, strict=True)) | {"metric": m} | aggregate_reps(g[m].tolist()))
    return pd.DataFrame(out)


def _improvement(summary: pd.DataFrame, store: dict, b: int) -> pd.DataFrame:
    from suite.report.headline import paired_lists

    out = []
    if summary.empty:
        return pd.DataFrame()
    for _, r in summary.iterrows():
        if r["topology"] in SAME_GPU_BASELINE.values() or r["topology"] == BASELINE_TOPOLOGY:
            continue
        topo = SAME_GPU_BASELINE.get(r["topology"], BASELINE_TOPOLOGY)
        base = summary[(summary["framework"] == r["framework"]) & (summary["backend"] == r["backend"])
                       & (summary["topology"] == topo) & (summary["point"] == r["point"])
                       & (summary["cls"] == r["cls"])]
        if base.empty:
            continue
        bdep = base.iloc[0]["deployment"]
        for m, q in COMPARED:
            a, bb, paired = paired_lists(store, m, (r["deployment"], r["point"], r["cls"]),
                                         (bdep, r["point"], r["cls"]))
            if not a or not bb:
                continue
            e = compare(a, bb, ("quantile", q), b, paired=paired)
            few = too_few(q, min(r[f"{m}_n_min"], base.iloc[0][f"{m}_n_min"]))
            label = f"{m.upper()} p{round(q * 100)}"
            text = (f"{label}, {r['deployment']} vs {bdep}: {e.value:+.0f}% [{e.ci_low:+.0f}, {e.ci_high:+.0f}]"
                    if not math.isnan(e.value) else f"{label}: no data")
            out.append({"deployment": r["deployment"], "baseline": bdep, "point": r["point"], "cls": r["cls"],
                        "metric": label, "delta_pct": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high,
                        "significant": bool(e.ci_low > 0 or e.ci_high < 0), "few": few, "paired": paired,
                        "text": text})
    return pd.DataFrame(out)


def _pm(ds: Dataset) -> pd.DataFrame:
    """Metric rows joined with their point's labels."""
    if ds.metrics.empty:
        return pd.DataFrame()
    pts = ds.points[["deployment", "framework", "topology", "point", "rate_rps"]]
    return ds.metrics.join(pts, on="pidx")


def _breakdown(ds: Dataset) -> pd.DataFrame:
    m = _pm(ds)
    if m.empty:
        return pd.DataFrame()
    h = m[m["kind"] == "histogram"]
    keys = ["framework", "deployment", "role", "metric"]
    g = h[h["metric"].isin(BREAKDOWN)].groupby(keys, observed=True)[["sum", "count"]].sum()
    g["mean_s"] = g["sum"] / g["count"].where(g["count"] > 0)
    g = g.reset_index()
    # an engine without a per-request decode-time histogram (SGLang): decode = mean E2E - mean TTFT on that role
    e = h[h["metric"].isin(("e2e_s", "ttft_s"))].groupby(keys, observed=True)[["sum", "count"]].sum().reset_index()
    have = set(map(tuple, g[["deployment", "role"]][g["metric"] == "decode_s"].to_numpy().tolist()))
    rows = []
    for (fw, dep, role), x in e.groupby(["framework", "deployment", "role"], observed=True):
        x = x.set_index("metric")
        if (dep, role) in have or role == "prefill" or not {"e2e_s", "ttft_s"} <= set(x.index):
            continue
        if x.loc["e2e_s", "count"] > 0 and x.loc["ttft_s", "count"] > 0:
            mean = x.loc["e2e_s", "sum"] / x.loc["e2e_s", "count"] - x.loc["ttft_s", "sum"] / x.loc["ttft_s", "count"]
            rows.append({"framework": fw, "deployment": dep, "role": role, "metric": "decode_s",
                         "sum": math.nan, "count": x.loc["e2e_s", "count"], "mean_s": max(0.0, mean),
                         "derived": "e2e_s - ttft_s"})
    out = pd.concat([g, pd.DataFrame(rows)], ignore_index=True) if rows else g
    order = {k: i for i, k in enumerate(BREAKDOWN)}
    return out.sort_values(["deployment", "role", "metric"], key=lambda c: c.map(order) if c.name == "metric"
                           else c).reset_index(drop=True)


def _kv_rows(ds: Dataset) -> pd.DataFrame:
    """Measured KV transfers per repetition: mean time, bytes, tokens per transfer, achieved bandwidth."""
    m = _pm(ds)
    if m.empty:
        return pd.DataFrame()
    m = m[m["metric"].isin(("kv_transfer_s", "kv_transfer_bytes", "prompt_tokens_transferred", "prompt_tokens",
                            "requests_completed"))]
    has = m.loc[m["metric"] == "kv_transfer_s", ["pidx", "role"]].drop_duplicates()
    m = m.merge(has, on=["pidx", "role"])  # only engines that recorded transfers
    out = []
    for (pidx, role), g in m.groupby(["pidx", "role"], observed=True):
        # engines sharing a role (dp2 replicas) add up
        v = g.groupby("metric", observed=True)[["value", "count", "sum"]].sum(min_count=1)
        if "kv_transfer_s" not in v.index or not v.loc["kv_transfer_s", "count"]:
            continue
        n = float(v.loc["kv_transfer_s", "count"])
        t = float(v.loc["kv_transfer_s", "sum"]) / n
        nbytes = float(v.loc["kv_transfer_bytes", "sum"]) / n if "kv_transfer_bytes" in v.index else math.nan
        tokens = math.nan
        if "prompt_tokens_transferred" in v.index and v.loc["prompt_tokens_transferred", "value"]:
            tokens = float(v.loc["prompt_tokens_transferred", "value"]) / n
        elif "prompt_tokens" in v.index and "requests_completed" in v.index and v.loc["requests_completed", "value"]:
            tokens = float(v.loc["prompt_tokens", "value"]) / float(v.loc["requests_completed", "value"])
        first = g.iloc[0]
        out.append({"deployment": first["deployment"], "framework": first["framework"], "point": first["point"],
                    "pidx": pidx, "role": role, "transfers": n, "mean_s": t, "mean_bytes": nbytes,
                    "tokens_per_transfer": tokens, "achieved_Bps": nbytes / t if t > 0 else math.nan,
                    "bytes_per_token": nbytes / tokens if tokens and tokens > 0 else math.nan})
    return pd.DataFrame(out)


def _consistency(ds: Dataset) -> pd.DataFrame:
    from suite.report.load import _merge_hist

    if not ds.hist or ds.requests.empty:
        return pd.DataFrame()
    out = []
    pts = ds.points
    req = ds.requests
    rp, tt = req["pidx"].to_numpy(), np.where(req["ok"].to_numpy(), req["ttft"].to_numpy(), np.nan)
    order = np.argsort(rp, kind="stable")
    bounds = np.searchsorted(rp[order], np.arange(len(pts) + 1))  # requests of pidx p: order[bounds[p]:bounds[p+1]]
    for (dep, point), g in pts.groupby(["deployment", "point"]):
        pid = g.index.to_numpy()
        merged = None
        for p in pid:
            s = ds.hist.get((int(p), "ttft_s", "colocated"))
            if s is not None:
                merged = s if merged is None else _merge_hist(merged, s)
        if merged is None:
            roles = sorted({r for (p, m, r) in ds.hist if p in set(pid.tolist()) and m == "ttft_s"})
            if roles:
                out.append({"deployment": dep, "point": point, "ok": None, "note": "server TTFT is split over "
                            f"{'/'.join(roles)} engines: no single server-side TTFT to compare"})
            continue
        client = np.concatenate([tt[order[bounds[p]:bounds[p + 1]]] for p in pid])
        client = np.sort(client[np.isfinite(client)])
        c = ttft_consistency(client, merged.le, merged.cum)
        row = {"deployment": dep, "point": point, "ok": c.ok, "client_n": c.client_n, "server_n": c.server_n,
               "note": c.note}
        for r in c.rows:
            tag = f"p{round(r['q'] * 100)}"
            row |= {f"client_{tag}_s": r["client_s"], f"server_{tag}_est_s": r["server_est_s"],
                    f"server_{tag}_bucket": f"({r['bucket_lo_s']:g}, {r['bucket_hi_s']:g}]"}
        out.append(row)
    return pd.DataFrame(out)


def _cdfs(ds: Dataset, seg: dict, dp_code: np.ndarray, npts: int, ncls: int) -> dict:
    """Per deployment, 200 quantiles of TTFT and ITL pooled over points and classes (enough to draw a CDF)."""
    grid = np.linspace(0, 1, 201)
    out = {}
    pts = ds.points
    for m in ("ttft", "itl"):
        by_dep: dict[str, list] = {}
        for k, v in seg[m].items():
            dep = pts.iloc[k % npts]["deployment"]
            by_dep.setdefault(dep, []).append(v)
        for dep, parts in by_dep.items():
            if isinstance(parts[0], HistSample):
                h = merge(parts)
                if len(h):
                    out[(m, dep)] = h.quantiles(grid)
                continue
            allv = np.concatenate(parts)
            if len(allv):
                out[(m, dep)] = np.quantile(allv, grid, method="inverted_cdf")
    return out
