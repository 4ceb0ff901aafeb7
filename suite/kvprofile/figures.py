"""Matplotlib figures (PNG) of kvprobe results and the KV section data. matplotlib is imported lazily."""

from __future__ import annotations

from pathlib import Path

LABELS = {"coalesced": "one coalesced send", "per_layer": "one op per layer and K/V (batched)",
          "per_block": "one op per block (batched)"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_patterns(probe: dict, path: str | Path) -> Path:
    """Transfer time vs prompt tokens for the measured patterns (median, p99 as a band)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pattern, label in LABELS.items():
        rows = sorted((p for p in probe.get("p2p", []) if p["pattern"] == pattern and "median_ms" in p),
                      key=lambda p: p["tokens"])
        if rows:
            x = [p["tokens"] for p in rows]
            ax.plot(x, [p["median_ms"] for p in rows], "o-", label=label)
            ax.fill_between(x, [p["median_ms"] for p in rows], [p["p99_ms"] for p in rows], alpha=0.15)
    peak = probe.get("summary", {}).get("copy_peak_gbps")
    if peak:
        per_token = probe["model"]["bytes_per_token"]
        xs = sorted({p["tokens"] for p in probe.get("p2p", [])})
        ax.plot(xs, [t * per_token / (peak * 1e9) * 1e3 for t in xs], "k--", lw=1,
                label=f"bytes / copy peak ({peak:.0f} GB/s)")
    env = probe.get("environment", {})
    gpus = env.get("gpus") or ["CPU"]
    ax.set(xscale="log", yscale="log", xlabel="prompt tokens (one request's KV)", ylabel="transfer time (ms)",
           title=f"{probe['model']['model']} KV, {probe['backend'].upper()} P2P, {len(gpus)}x {gpus[0]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.text(0.99, 0.01, f"kvprobe {probe.get('created', '')}; band = median..p99", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=7, color="gray")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_kv_section(data: dict, path: str | Path) -> Path:
    """Left: transfer time per link (lines) and measured patterns (markers) against prefill time. Right: share of
    (prefill + transfer) spent in transfer, per link."""
    plt = _plt()
    fig = kv_section_figure(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kv_section_figure(data: dict, runs: list[dict] | None = None):
    """The figure of plot_kv_section as a Figure (the report inlines it). runs: transfers measured in P/D runs,
    [{"label", "tokens", "ms"}], drawn as filled markers on the left axis."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, s in data["link_lines"].items():
        src = next((ln["source"] for ln in data.get("links", []) if ln["link"] == name), "")
        tag = "" if "measured" in name or not src else f" ({src.split(':')[0]})"
        a.plot(s["tokens"], s["ms"], "-", lw=1.2, label=f"{name}{tag}")
    for pattern, s in data.get("measured", {}).items():
        a.plot(s["tokens"], s["ms"], "o", ms=4, mfc="none", label=f"kvprobe: {LABELS.get(pattern, pattern)}")
    for r in runs or []:
        a.plot(r["tokens"], r["ms"], "D", ms=6, label=f"run: {r['label']}")
    if data.get("prefill"):
        p = data["prefill"]
        frac = next((c["penalty_fraction"] for c in data["crossover"]), 1.0)
        a.plot(p["tokens"], [v * frac for v in p["ms"]], "k-", lw=2.2,
               label=f"co-location penalty ({frac:g} x prefill)")
        toks = p["tokens"]
        for name in data["link_lines"]:
            tr = data["link_lines"][name]["ms"]
            b.plot(toks, [t / (t + q) for t, q in zip(tr, p["ms"], strict=True)], "-", label=name)
    else:
        b.text(0.5, 0.5, "no prefill timing: share not computed", ha="center", va="center", transform=b.transAxes)
    a.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="KV transfer time (ms)",
          title=f"KV transfer vs co-location penalty: {data['model']['model']}")
    b.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="transfer / (prefill + transfer)",
          title="share of P/D TTFT spent moving the KV (no queueing)")
    for ax, where in ((a, "lower right"), (b, "best")):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc=where, framealpha=0.85)
    fig.tight_layout()
    return fig


COMPONENTS = (("queue_p", "queue on P"), ("prefill_p", "prefill on P"), ("transfer", "KV transfer"),
              ("first_decode", "first decode step"), ("other", "rest (router, HTTP, D queue)"))


def decomposition_figure(rows: list[dict]):
    """Stacked bars: mean TTFT(P/D) = queue + prefill on P + transfer + first decode step + rest, per P/D point.
    rows: {"label", "components_s": {...}, "ttft_s"}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.45 * len(rows)))
    labels = [r["label"] for r in rows]
    left = [0.0] * len(rows)
    for key, name in COMPONENTS:
        v = [max(0.0, (r["components_s"].get(key) or 0.0)) * 1e3 for r in rows]
        ax.barh(labels, v, left=left, label=name)
        left = [x + y for x, y in zip(left, v, strict=True)]
    ax.plot([(r["ttft_s"] or 0) * 1e3 for r in rows], labels, "k|", ms=14, mew=2, label="client mean TTFT")
    ax.set(xlabel="ms per request (means)", title="TTFT(P/D) = queue + prefill on P + KV transfer + first decode")
    ax.grid(alpha=0.3, axis="x")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
