"""The report's answer first: P/D against each co-located baseline of the same framework, per point and class.

For every P/D deployment and every baseline present (TP=1 co-located, TP=2, two TP=1 replicas) at the same point
and class: the change of TTFT p50, TTFT p99, ITL p99 and output throughput, with its 95% CI, a plain verdict, and
where along load and prompt length P/D wins or loses. The same lines go to report.md, index.html and the console.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from suite.stats import compare, compare_reps, too_few

BASELINES = {"colocated": "TP=1 co-located", "tp2": "TP=2", "dp2": "two TP=1 replicas",
             "colocated-1gpu": "co-located on the same GPU"}
# P/D topology -> the baselines it is compared with (a one-GPU P/D only with the engine of the same memory share)
PD_BASELINES = {t: ("colocated", "tp2", "dp2") for t in ("disagg", "disagg-kvpool", "1p2d", "2p1d")} | {
    "disagg-1gpu": ("colocated-1gpu",)}
PD_TOPOLOGIES = tuple(PD_BASELINES)
# (store key, quantile or None for a per-repetition scalar, label, lower is better)
METRICS = (("ttft", 0.5, "TTFT p50", True), ("ttft", 0.99, "TTFT p99", True), ("itl", 0.99, "ITL p99", True),
           ("out_tok_per_s", None, "throughput", False))
DAGGER = "†"
FEW_NOTE = (f"{DAGGER} rests on too few samples per repetition (p99: fewer than 100, p90: fewer than 20): the "
            "percentile is at or next to the sample maximum, so it reads low and its CI's upper end is that "
            "maximum. Run longer points to firm it up.")
EMULATOR_LIMITS = ("The emulator does not model framework differences: the vLLM and SGLang flavours share one cost "
                   "model (same step times, batching and KV transfer), so a vLLM-vs-SGLang gap here comes only from "
                   "the real routers and HTTP paths, not from the engines. Nor does it model SGLang's GPU prefix cache "
                   "(vLLM's is modelled), preemption, speculative decoding or CUDA graphs; TP=2 is a fixed all-reduce "
                   "cost per step.")


def pair_reps(ka: list[tuple[int, int | None]], kb: list[tuple[int, int | None]]) -> list[tuple[int, int]]:
    """Index pairs (i in a, j in b) of repetitions that ran the same workload draw.

    Keys are (repetition, seed). When every repetition of both sides has its own seed, repetitions pair by seed;
    otherwise (one seed for all repetitions) by repetition index, provided the seeds agree. No pairs: unpaired."""
    by_seed = all(len({s for _, s in k}) == len(k) and None not in {s for _, s in k} for k in (ka, kb))
    key = (lambda rs: rs[1]) if by_seed else (lambda rs: rs)
    ib = {key(k): j for j, k in enumerate(kb)}
    return [(i, ib[key(k)]) for i, k in enumerate(ka) if key(k) in ib]


def paired_lists(store: dict, metric: str, a: tuple, b: tuple) -> tuple[list, list, bool]:
    """store[(metric, *a)] and store[(metric, *b)] aligned by pair_reps; paired=False keeps them as they are."""
    xa, xb = store.get((metric, *a)), store.get((metric, *b))
    if xa is None or xb is None:
        return [], [], False
    pairs = pair_reps(store.get(("reps", *a), []), store.get(("reps", *b), []))
    if not pairs:
        return list(xa), list(xb), False
    return [xa[i] for i, _ in pairs], [xb[j] for _, j in pairs], True


def headline_rows(summary: pd.DataFrame, store: dict, b: int) -> pd.DataFrame:
    """One row per (P/D deployment, baseline, point, class, metric)."""
    if summary.empty:
        return pd.DataFrame()
    out = []
    idx = {(r["deployment"], r["point"], r["cls"]): r for _, r in summary.iterrows()}
    for _, r in summary[summary["topology"].isin(PD_TOPOLOGIES)].iterrows():
        bases = summary[(summary["framework"] == r["framework"]) & (summary["backend"] == r["backend"])
                        & summary["topology"].isin(PD_BASELINES[r["topology"]]) & (summary["point"] == r["point"])
                        & (summary["cls"] == r["cls"])]
        for _, base in bases.iterrows():
            ka, kb = (r["deployment"], r["point"], r["cls"]), (base["deployment"], r["point"], r["cls"])
            for mi, (m, q, label, lower_better) in enumerate(METRICS):
                xa, xb, paired = paired_lists(store, m, ka, kb)
                if not xa or not xb:
                    continue
                if q is None:
                    e = compare_reps(xa, xb) if paired else compare_reps([np.mean(xa)], [np.mean(xb)])
                    few = False
                else:
                    e = compare(xa, xb, ("quantile", q), b, seed=mi, paired=paired)
                    few = too_few(q, min(idx[ka][f"{m}_n_min"], idx[kb][f"{m}_n_min"]))
                sig = bool(e.ci_low > 0 or e.ci_high < 0)
                out.append({"framework": r["framework"], "deployment": r["deployment"], "topology": r["topology"],
                            "baseline": base["deployment"], "baseline_topology": base["topology"],
                            "baseline_label": BASELINES[base["topology"]], "point": r["point"], "cls": r["cls"],
                            "rate_rps": r["rate_rps"], "offered_rps": r.get("offered_rps", math.nan),
                            "input_tokens_mean": r["input_tokens_mean"], "metric": label, "delta_pct": e.value,
                            "ci_low": e.ci_low, "ci_high": e.ci_high, "significant": sig,
                            "better": bool(sig and ((e.value < 0) == lower_better)), "few": few,
                            "paired": paired, "pairs": e.reps, "_m": mi})
    if not out:
        return pd.DataFrame()
    # reading order: light load first, short prompts first, metrics as METRICS lists them
    h = pd.DataFrame(out).sort_values(["framework", "deployment", "baseline", "rate_rps", "point",
                                       "input_tokens_mean", "_m"], kind="stable", na_position="last")
    return h.drop(columns="_m").reset_index(drop=True)


# ---- text ----------------------------------------------------------------------------------------------------


def _at(r) -> str:
    """'rate=6 (6.1 req/s offered)'."""
    off = r["offered_rps"]
    rate = f" ({off:.1f} req/s offered)" if isinstance(off, float) and math.isfinite(off) else ""
    return f"{r['point']}{rate}"


def where(r) -> str:
    """'at rate=6 (6.1 req/s offered) for long_prefill'."""
    return f"at {_at(r)} for {r['cls']}"


def change(r, signed: bool = True) -> str:
    """'-31% [-40, -22]' (signed) or '31% [22, 40]' (magnitude of a cut or rise)."""
    v, lo, hi = r["delta_pct"], r["ci_low"], r["ci_high"]
    if math.isnan(v):
        return "n/a"
    mark = DAGGER if r["few"] else ""
    if math.isnan(lo):
        return f"{v:+.0f}% [no CI]{mark}" if signed else f"{abs(v):.0f}% [no CI]{mark}"
    if signed:
        return f"{v:+.0f}% [{lo:+.0f}, {hi:+.0f}]{mark}"
    if v < 0:
        lo, hi = -hi, -lo
    return f"{abs(v):.0f}% [{lo:.0f}, {hi:.0f}]{mark}"


def _verb(metric: str, v: float) -> str:
    if metric == "throughput":
        return "raises" if v > 0 else "lowers"
    return "raises" if v > 0 else "cuts"


def _cells(part: pd.DataFrame) -> str:
    """'31% [22, 40] for long, 12% [3, 20] for short at rate=6 (6.1 req/s offered); ...' grouped by point."""
    out = []
    for _, s in part.groupby("point", sort=False):
        cells = ", ".join(f"{change(r, signed=False)} for {r['cls']}" for _, r in s.iterrows())
        out.append(f"{cells} at {_at(s.iloc[0])}")
    return "; ".join(out)


def verdict(g: pd.DataFrame) -> str:
    """Sentences for one P/D deployment vs one baseline, over every point and class."""
    clauses, none = [], []
    for metric in dict.fromkeys(g["metric"]):
        m = g[g["metric"] == metric]
        sig = m[m["significant"]]
        for up in (False, True):
            part = sig[(sig["delta_pct"] > 0) == up]
            if len(part):
                clauses.append(f"P/D {_verb(metric, 1 if up else -1)} {metric} by {_cells(part)}")
        if len(sig) < len(m):
            none.append(metric if sig.empty else f"{metric} elsewhere")
    if none:
        tail = f"no significant difference in {', '.join(none)}"
        clauses.append(tail if clauses else f"{tail} at any measured point")
    return ". ".join(c[0].upper() + c[1:] for c in clauses)


def crossovers(g: pd.DataFrame) -> list[str]:
    """Where the verdict changes between neighbouring measured points: along the offered rate for one class, and
    along prompt length (classes by mean input tokens) at one point. A flip from a significant win to a significant
    loss is a crossover; a win or loss next to no significant difference is where the effect fades or sets in (only
    between estimates that rest on enough samples)."""
    found: dict[tuple, list[str]] = {}
    for metric in dict.fromkeys(g["metric"]):
        m = g[g["metric"] == metric].copy()
        m["x_rate"] = m["offered_rps"].where(np.isfinite(m["offered_rps"].astype(float)), m["rate_rps"])
        for axis, fixed, order, fmt in (("load", "cls", "x_rate", "{:.1f} req/s"),
                                        ("prompt length", "point", "input_tokens_mean", "~{:.0f} input tokens")):
            for key, s in m.groupby(fixed, sort=False):
                s = s[np.isfinite(s[order].astype(float))].sort_values(order)
                if len(s) < 2 or s[order].nunique() < 2:
                    continue
                state = [("wins" if r["better"] else "loses") if r["significant"] else "no significant difference"
                         for _, r in s.iterrows()]
                for i in range(len(s) - 1):
                    a, c, ra, rc = state[i], state[i + 1], s.iloc[i], s.iloc[i + 1]
                    flip = {a, c} == {"wins", "loses"}
                    if a == c or (not flip and (ra["few"] or rc["few"])):
                        continue
                    kind = "crossover" if flip else "fades" if c.startswith("no") else "sets in"
                    head = (metric, axis, f"{_state(a)} at {fmt.format(ra[order])}",
                            f"{_state(c)} at {fmt.format(rc[order])}", kind)
                    found.setdefault(head, []).append(f"{key}: {change(ra)} -> {change(rc)}")
    return [f"{metric} along {axis}: {a}, {c} - {kind} ({'; '.join(v)})"
            for (metric, axis, a, c, kind), v in found.items()]


def _state(s: str) -> str:
    return s if s.startswith("no") else f"P/D {s}"


def _wins_losses(g: pd.DataFrame) -> str:
    """'wins TTFT p50 (4 of 4 point x class), TTFT p99 (2 of 4); loses ITL p99 (1 of 4)'."""
    def count(sel):
        parts = []
        for metric in dict.fromkeys(g["metric"]):
            m = g[g["metric"] == metric]
            k = int(sel(m).sum())
            if k:
                parts.append(f"{metric} ({k} of {len(m)} point x class)")
        return ", ".join(parts) or "nothing"

    return (f"P/D wins {count(lambda m: m['significant'] & m['better'])}; "
            f"loses {count(lambda m: m['significant'] & ~m['better'])}")


def groups(h: pd.DataFrame):
    """(framework, P/D deployment, baseline label, baseline deployment, rows) in a stable reading order."""
    order = {t: i for i, t in enumerate(BASELINES)}
    keys = h[["framework", "deployment", "baseline_topology", "baseline"]].drop_duplicates()
    keys = keys.assign(o=keys["baseline_topology"].map(order)).sort_values(["framework", "deployment", "o"])
    for fw, dep, topo, base in keys[["framework", "deployment", "baseline_topology", "baseline"]].itertuples(
            index=False):
        g = h[(h["deployment"] == dep) & (h["baseline"] == base)]
        yield fw, dep, BASELINES[topo], base, g


def lines(h: pd.DataFrame) -> list[str]:
    """The headline as plain lines (console): per framework and baseline, the verdict, wins/losses, crossovers."""
    if h is None or h.empty:
        return ["No P/D deployment with a co-located baseline (same framework, point and class): no headline."]
    out, last = [], None
    for fw, dep, label, base, g in groups(h):
        if fw != last:
            out.append(f"{fw}: {dep}")
            last = fw
        out.append(f"  vs {label} ({base}): {_wins_losses(g)}.")
        out.append(f"    {verdict(g)}.")
        out += [f"    Where it changes: {c}." for c in crossovers(g)]
    if h["few"].any():
        out.append(FEW_NOTE)
    return out


def markdown(h: pd.DataFrame, emulated: bool) -> str:
    """The report's opening section."""
    p = ["\n## Headline: P/D against the co-located baselines\n\n"]
    if emulated:
        p.append(f"> **EMULATED** engines: these numbers show how the suite reports, not how the engines perform. "
                 f"{EMULATOR_LIMITS}\n\n")
    if h is None or h.empty:
        p.append("_No P/D deployment with a co-located baseline (same framework, backend, point and class) in "
                 "these runs: nothing to compare._\n")
        return "".join(p)
    paired = bool(h["paired"].all())
    p.append("Change of each statistic of the P/D deployment against each baseline of the same framework at the same "
             "point and class, with its 95% bootstrap CI"
             + (" (paired: repetitions that ran the same workload draw are resampled together)" if paired else "")
             + "; negative = lower (better for latency, worse for throughput). A change whose CI spans 0 is "
               "\"no significant difference\". Throughput = output tokens/s of the class; its CI is a Student t "
               "over the paired repetitions.\n")
    last = None
    for fw, dep, label, base, g in groups(h):
        if fw != last:
            p.append(f"\n### {fw}: {dep}\n")
            last = fw
        p.append(f"\n**vs {label}** (`{base}`): {_wins_losses(g)}.\n\n")
        p.append(f"- {verdict(g)}.\n")
        cross = crossovers(g)
        p += [f"- Where it changes: {c}.\n" for c in cross] or [
            "- Where it changes: nowhere the measured points firmly show (changes between † estimates are not "
            "claimed).\n"]
        p.append("\n" + table(g))
    if h["few"].any():
        p.append(f"\n{FEW_NOTE}\n")
    return "".join(p)


def table(g: pd.DataFrame) -> str:
    metrics = list(dict.fromkeys(g["metric"]))
    lines_ = ["| point (offered) | class | " + " | ".join(metrics) + " |", "|" + "---|" * (2 + len(metrics))]
    for (point, cls), s in g.groupby(["point", "cls"], sort=False):
        first = s.iloc[0]
        off = first["offered_rps"]
        head = f"{point} ({off:.1f} req/s)" if isinstance(off, float) and math.isfinite(off) else str(point)
        cells = []
        for metric in metrics:
            r = s[s["metric"] == metric]
            if r.empty:
                cells.append("-")
                continue
            r = r.iloc[0]
            txt = change(r)
            cells.append(f"**{txt}**" if r["significant"] else txt)
        lines_.append(f"| {head} | {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines_) + "\n"


def for_run(results: str | Path, b: int = 1000) -> list[str]:
    """The headline of one results tree, as console lines (what `pdsuite run` prints when it ends)."""
    from suite.report.cli import plan_slos
    from suite.report.load import load
    from suite.report.tables import build
    from suite.stats import DEFAULT_SLO

    ds = load([results])
    slos = plan_slos(ds)
    for cls in ds.requests["cls"].cat.categories if len(ds.requests) else []:
        slos.setdefault(str(cls), DEFAULT_SLO)
    t = build(ds, slos, b)
    head = ["Headline: P/D against the co-located baselines (change with 95% CI; negative = lower)"]
    if ds.emulated:
        head.append("EMULATED engines: shows how the suite reports, not how engines perform. " + EMULATOR_LIMITS)
    return head + lines(t.headline)
