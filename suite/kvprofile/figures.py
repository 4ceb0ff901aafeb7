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
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, s in data["link_lines"].items():
        a.plot(s["tokens"], s["ms"], "-", lw=1.2, label=f"{name}")
    for pattern, s in data.get("measured", {}).items():
        a.plot(s["tokens"], s["ms"], "o", ms=4, label=f"measured: {LABELS.get(pattern, pattern)}")
    if data.get("prefill"):
        p = data["prefill"]
        frac = next((c["penalty_fraction"] for c in data["crossover"]), 1.0)
        a.plot(p["tokens"], [v * frac for v in p["ms"]], "k-", lw=2.2,
               label=f"co-location penalty ({frac:g} x prefill)")
        toks = p["tokens"]
        for name in data["link_lines"]:
            tr = data["link_lines"][name]["ms"]
            b.plot(toks, [t / (t + q) for t, q in zip(tr, p["ms"], strict=True)], "-", label=name)
    a.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="ms",
          title=f"KV transfer vs co-location penalty: {data['model']['model']}")
    b.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="transfer / (prefill + transfer)",
          title="share of P/D TTFT spent moving the KV (no queueing)")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
