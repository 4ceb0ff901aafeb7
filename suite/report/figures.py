"""Figures (matplotlib Agg) drawn from the report's tables; each returns a Figure or None when there is no data."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

# Link-bandwidth lines for the KV-transfer figure, bytes/s. The NVLink line is the copy bandwidth we measured on
# 2x H100 (docs/benchmarks.md); the others are nominal line rates, labelled so.
LINKS = (("NVLink H100 copy, measured 394 GB/s", 394e9), ("PCIe Gen5 x16, nominal 64 GB/s", 64e9),
         ("400 Gb/s RDMA, nominal", 50e9), ("100 Gb/s RDMA, nominal", 12.5e9), ("25 Gb/s TCP, nominal", 3.125e9))


def _plain_log(ax, axis: str = "x") -> None:
    """Log axis with plain numbers and no crowded minor labels (10^2 / 2x10^2 labels overlap)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    a = ax.xaxis if axis == "x" else ax.yaxis
    a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    a.set_major_formatter(fmt)
    a.set_minor_formatter(NullFormatter())


def _err(df: pd.DataFrame, col: str, scale: float = 1e3) -> tuple[np.ndarray, np.ndarray]:
    v = df[col].to_numpy() * scale
    lo = np.clip(v - df[f"{col}_ci_low"].to_numpy() * scale, 0, None)
    hi = np.clip(df[f"{col}_ci_high"].to_numpy() * scale - v, 0, None)
    return v, np.vstack([lo, hi])


def _rate_key(s: pd.DataFrame) -> pd.Series:
    """The load of a point: its target rate when it has one, else its label (closed loop, traces)."""
    r = s["rate_rps"].astype(float)
    return r.where(np.isfinite(r), np.nan).map(lambda v: f"{v:g} req/s" if np.isfinite(v) else None).fillna(
        s["point"].astype(str))


def _mark_few(ax, x, y, few, color) -> None:
    """Hollow markers over the estimates that rest on too few samples (see suite.stats.MIN_SAMPLES)."""
    few = np.asarray(few, dtype=bool)
    if few.any():
        ax.plot(np.asarray(x)[few], np.asarray(y)[few], ls="none", marker="o", ms=7, mfc="white", mec=color, mew=1.2)


def ttft_vs_input(s: pd.DataFrame):
    """TTFT and ITL vs input length, one panel per rate (points at different rates are never joined)."""
    if s.empty or s["input_tokens_mean"].nunique() < 2:
        return None
    s = s.assign(_rate=_rate_key(s))
    rates = sorted(s["_rate"].unique(), key=lambda k: (s.loc[s["_rate"] == k, "rate_rps"].astype(float).min(), k))
    per_rate = [r for r in rates if s.loc[s["_rate"] == r, "input_tokens_mean"].nunique() >= 2]
    if not per_rate:
        return None
    deps = sorted(s["deployment"].unique())
    color = {d: f"C{i % 10}" for i, d in enumerate(deps)}
    fig, axes = plt.subplots(2, len(per_rate), figsize=(max(6.0, 3.6 * len(per_rate)), 6.4), squeeze=False,
                             sharex=True)
    any_few = False
    for j, rate in enumerate(per_rate):
        sub = s[s["_rate"] == rate]
        off = sub["offered_rps"].astype(float).mean() if "offered_rps" in sub else math.nan
        for i, (metric, name) in enumerate((("ttft", "TTFT"), ("itl", "ITL"))):
            ax = axes[i][j]
            for dep, g in sub.groupby("deployment"):
                g = g.sort_values("input_tokens_mean")
                for q, ls in (("p50", "-"), ("p99", ":")):
                    col = f"{metric}_{q}"
                    if col not in g:
                        continue
                    v, e = _err(g, col)
                    ax.errorbar(g["input_tokens_mean"], v, yerr=e, ls=ls, marker="o", ms=3, capsize=2,
                                color=color[dep])
                    few = g.get(f"{col}_few", pd.Series(False, index=g.index)).fillna(False)
                    any_few |= bool(few.any())
                    _mark_few(ax, g["input_tokens_mean"], v, few, color[dep])
            title = f"{name} at {rate}" + (f" (offered {off:.2f})" if np.isfinite(off) else "")
            ax.set(xscale="log", ylabel=f"{name} ms (95% CI)", title=title)
            if i == 1:
                ax.set_xlabel("input tokens (mean of the class)")
            _plain_log(ax)
            ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color[d], marker="o", ms=3, label=d) for d in deps]
    handles += [Line2D([], [], color="k", ls="-", label="p50"), Line2D([], [], color="k", ls=":", label="p99")]
    if any_few:
        handles.append(Line2D([], [], ls="none", marker="o", ms=7, mfc="white", mec="k",
                              label="too few samples (p99 < 100 / p90 < 20 per rep)"))
    _legend_below(fig, handles)
    return fig


def _legend_below(fig, handles) -> None:
    """One legend for the figure, under the panels (never over the data)."""
    ncol = min(4, len(handles))
    rows = math.ceil(len(handles) / ncol)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))


def cdfs(cdf: dict):
    if not cdf:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    grid = np.linspace(0, 1, 201)
    for ax, m in zip(axes, ("ttft", "itl"), strict=True):
        for (metric, dep), q in sorted(cdf.items()):
            if metric == m:
                ax.plot(q * 1e3, grid, label=dep)
        ax.set(xlabel=f"{m.upper()} ms", ylabel="fraction of requests" if m == "ttft" else "fraction of gaps",
               title=f"{m.upper()} CDF (all points and classes)", xscale="log")
        _plain_log(ax)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes[0].get_legend_handles_labels()[0])
    return fig


def vs_rate(s: pd.DataFrame):
    """TTFT p99 per class and goodput against the OFFERED rate (measured), the target given beside each point."""
    s = s[np.isfinite(s["rate_rps"].astype(float))] if not s.empty else s
    if s.empty or s["rate_rps"].nunique() < 2:
        return None
    x_col = "offered_rps" if "offered_rps" in s and np.isfinite(s["offered_rps"].astype(float)).all() else "rate_rps"
    deps = sorted(s["deployment"].unique())
    color = {d: f"C{i % 10}" for i, d in enumerate(deps)}
    classes = list(dict.fromkeys(s["cls"]))
    styles = ["-", "--", ":", "-."]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.6))
    any_few = False
    for (dep, cls), g in s.groupby(["deployment", "cls"], sort=False):
        g = g.sort_values(x_col)
        v, e = _err(g, "ttft_p99")
        a1.errorbar(g[x_col], v, yerr=e, marker="o", ms=3, capsize=2, color=color[dep],
                    ls=styles[classes.index(cls) % len(styles)])
        few = g.get("ttft_p99_few", pd.Series(False, index=g.index)).fillna(False)
        any_few |= bool(few.any())
        _mark_few(a1, g[x_col], v, few, color[dep])
    # goodput of a point: all classes; CI from the per-class t intervals (conservative: their widths add)
    tot = s.groupby(["deployment", "point"], sort=False).agg(
        x=(x_col, "first"), target=("rate_rps", "first"), good=("goodput_rps", "sum"),
        lo=("goodput_rps_ci_low", "sum"), hi=("goodput_rps_ci_high", "sum")).reset_index()
    for dep, g in tot.groupby("deployment", sort=False):
        g = g.sort_values("x")
        err = np.vstack([np.clip(g["good"] - g["lo"], 0, None).fillna(0), np.clip(g["hi"] - g["good"], 0, None)
                         .fillna(0)])
        a2.errorbar(g["x"], g["good"], yerr=err, marker="o", ms=3, capsize=2, color=color[dep])
    hi = float(np.nanmax(tot["x"])) * 1.08
    a2.plot([0, hi], [0, hi], "k:", lw=0.8)
    for _, r in tot.drop_duplicates("point").iterrows():
        a2.annotate(f"target {r['target']:g}", (r["x"], 0), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=6, color="0.3")
    xl = "offered rate (req/s, measured)" if x_col == "offered_rps" else "target rate (req/s)"
    a1.set(xlabel=xl, ylabel="TTFT p99 ms (95% CI)", title="TTFT p99 vs offered rate")
    a2.set(xlabel=xl, ylabel="goodput (req/s within SLO, 95% CI)", title="Goodput vs offered rate", xlim=(0, hi),
           ylim=(0, hi))
    for a in (a1, a2):
        a.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color[d], marker="o", ms=3, label=d) for d in deps]
    handles += [Line2D([], [], color="k", ls=styles[i % len(styles)], label=f"TTFT: {c}")
                for i, c in enumerate(classes)]
    handles.append(Line2D([], [], color="k", ls=":", lw=0.8, label="goodput = offered"))
    if any_few:
        handles.append(Line2D([], [], ls="none", marker="o", ms=7, mfc="white", mec="k",
                              label="too few samples (p99 < 100 per rep)"))
    _legend_below(fig, handles)
    return fig


def topologies(s: pd.DataFrame):
    if s.empty or s["topology"].nunique() < 2:
        return None
    cols = (("ttft_p50", "TTFT p50 ms"), ("ttft_p99", "TTFT p99 ms"), ("tpot_p50", "TPOT p50 ms"))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    order = s.sort_values(["rate_rps", "point", "input_tokens_mean"], kind="stable")
    keys = list(order[["point", "cls"]].drop_duplicates().itertuples(index=False, name=None))
    off = s.groupby(["point"])["offered_rps"].mean().to_dict() if "offered_rps" in s else {}
    labels = [f"{p}" + (f"\n({off[p]:.1f} offered)" if np.isfinite(off.get(p, np.nan)) else "") + f"\n{c}"
              for p, c in keys]
    deps = sorted(s["deployment"].unique())
    w = 0.8 / max(1, len(deps))
    any_few = False
    for ax, (col, title) in zip(axes, cols, strict=True):
        for i, dep in enumerate(deps):
            g = s[s["deployment"] == dep].set_index(["point", "cls"]).reindex(keys)
            v, e = _err(g.reset_index(), col)
            bars = ax.bar(np.arange(len(keys)) + i * w, v, w, yerr=e, capsize=2, label=dep)
            few = g.get(f"{col}_few", pd.Series(False, index=g.index)).fillna(False).astype(bool).to_numpy()
            for bar, f in zip(bars, few, strict=True):
                if f:  # too few samples for this percentile: hatched
                    bar.set_hatch("///")
                    bar.set_edgecolor("white")
            any_few |= bool(few.any())
        ax.set_xticks(np.arange(len(keys)) + w * (len(deps) - 1) / 2, labels, fontsize=6)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    names = {"disagg": "P/D", "colocated": "co-located", "tp2": "TP=2", "dp2": "two replicas"}
    topos = set(s["topology"])
    present = [names[t] for t in names if t in topos] + sorted(topos - set(names))
    fig.suptitle(" vs ".join(present) + " at each point and class (95% CI)"
                 + ("; hatched: too few samples" if any_few else ""))
    _legend_below(fig, axes[0].get_legend_handles_labels()[0])
    return fig


ROLE_ORDER = {"prefill": 0, "decode": 1, "colocated": 2}


def breakdown(b: pd.DataFrame):
    """One bar per deployment and engine role; stages stacked in pipeline order, one colour per stage."""
    if b.empty:
        return None
    from suite.report.tables import BREAKDOWN

    rows = sorted({(d, r) for d, r in zip(b["deployment"], b["role"], strict=True)},
                  key=lambda x: (x[0], ROLE_ORDER.get(x[1], 9)))
    labels = [f"{d} / {r}" for d, r in rows]
    metrics = [m for m in BREAKDOWN if m in set(b["metric"])]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.4 * len(rows)))
    left = np.zeros(len(rows))
    idx = b.set_index(["deployment", "role", "metric"])["mean_s"]
    for i, m in enumerate(metrics):
        v = np.array([float(idx.get((d, r, m), np.nan)) for d, r in rows]) * 1e3
        v = np.nan_to_num(v)
        ax.barh(labels, v, left=left, color=f"C{i}", label=m.removesuffix("_s").replace("_", " "))
        left += v
    ax.invert_yaxis()
    ax.set(xlabel="mean ms per request, from each engine's own histograms (decode: whole generation)",
           title="Server-side time per request, per engine role")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def kv_transfer(kv: pd.DataFrame):
    if kv.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for dep, g in kv.groupby("deployment"):
        ax.scatter(g["tokens_per_transfer"], g["mean_s"] * 1e3, s=14, label=f"{dep} (measured)")
    bpt = kv["bytes_per_token"].dropna()
    toks = kv["tokens_per_transfer"].dropna()
    if len(bpt) and len(toks):
        per_token = float(bpt.median())
        x = np.geomspace(max(1.0, toks.min() / 2), max(2.0, toks.max() * 2), 50)
        for label, bw in LINKS:
            ax.plot(x, x * per_token / bw * 1e3, lw=0.8, ls="--", label=label)
        ax.set_title(f"KV-transfer time vs prompt tokens ({per_token / 1024:.0f} KiB/token measured)")
    else:
        ax.set_title("KV-transfer time vs prompt tokens (no bytes metric: no link lines)")
    ax.set(xscale="log", yscale="log", xlabel="prompt tokens per transfer", ylabel="mean transfer ms")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    return fig


def all_figures(t, skip: set[str] = frozenset()) -> dict:
    """Figures by name; names in skip are not drawn (another section provides them)."""
    makers = {"ttft_vs_input": lambda: ttft_vs_input(t.summary), "cdf_ttft_itl": lambda: cdfs(t.cdf),
              "vs_rate": lambda: vs_rate(t.summary), "topologies": lambda: topologies(t.summary),
              "server_breakdown": lambda: breakdown(t.breakdown), "kv_transfer": lambda: kv_transfer(t.kv)}
    figs = {k: make() for k, make in makers.items() if k not in skip}
    return {k: v for k, v in figs.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
