"""The report's "Where the time goes" section: per-request TTFT phases, GPU telemetry per point, the roofline.

Everything is computed from the points' raw files: spans.jsonl + requests.parquet + load.json (phases),
point.json's telemetry summary of gpu.parquet (GPU), the model config and the GPU table (roofline).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from suite.analysis.breakdown import (
    CO_PHASES,
    HISTOGRAM_PHASES,
    PD_PHASES,
    PHASE_TEXT,
    dataset_breakdown,
    distributions,
)


def _ms(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 1e3:,.1f}"


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0%}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def ttft_equation(dist: pd.DataFrame) -> str:
    """'TTFT 81.6 ms = router in 4.9 + prefill queue 3.8 + ...' from one group's phase means."""
    d = dist.set_index("phase")["mean_s"]
    phases = PD_PHASES if "kv_wait" in d.index else CO_PHASES
    parts = " + ".join(f"{PHASE_TEXT[p]} {_ms(d[p])}" for p in phases if p in d.index)
    return f"TTFT {_ms(d.get('ttft_s'))} ms = {parts}"


def _point_json(path: str) -> dict:
    try:
        return json.loads((Path(path) / "point.json").read_text())
    except (OSError, ValueError):
        return {}


def gpu_rows(points: pd.DataFrame) -> tuple[list[dict], list[str]]:
    rows, notes = [], set()
    for _, p in points.iterrows():
        tel = _point_json(p["path"]).get("native", {}).get("telemetry", {}) if isinstance(p.get("path"), str) else {}
        notes.update(tel.get("notes", []))
        for gpu, g in (tel.get("gpu") or {}).get("gpus", {}).items():
            rows.append({"deployment": p["deployment"], "point": p["point"], "rep": p["rep"], "gpu": int(gpu)} | g)
    return rows, sorted(notes)


def _gpu_md(rows: list[dict], notes: list[str]) -> str:
    if not rows:
        return "_" + ("; ".join(notes) if notes else "no GPU telemetry in these runs") + "_\n"
    body = [[r["deployment"], r["point"], str(r["rep"]), str(r["gpu"]), r["name"],
             "/".join(x for x in (r["role"], r["engine"]) if x) or "(not used)", str(r["tp_rank"]),
             f"{r['sm_util_pct_mean']:.0f}", f"{r['mem_bw_util_pct_mean']:.0f}", f"{r['mem_used_bytes_max'] / 1e9:.1f}",
             f"{r['power_w_mean']:.0f}", f"{r['sm_clock_mhz_mean']:.0f}", f"{r['mem_clock_mhz_mean']:.0f}",
             f"{r['samples']} @ {r['hz']} Hz"] for r in rows]
    return _table(["deployment", "point", "rep", "GPU", "device", "role", "TP rank", "SM util %", "mem-BW util %",
                   "mem used GB (max)", "power W", "SM MHz", "mem MHz", "samples"], body) + (
        "\nMeans over the point's load (NVML utilisation: share of the driver's sample period with a kernel running "
        "/ device memory being read or written; raw samples in each point's gpu.parquet).\n")


def _gpu_name(gpu_rows_: list[dict], ds) -> tuple[object, str]:
    from suite.analysis.gpus import emulated_peak, lookup

    for r in gpu_rows_:
        if r.get("role") and (peak := lookup(r["name"])):
            return peak, f"NVML device name {r['name']!r}"
    for r in gpu_rows_:
        if peak := lookup(r["name"]):
            return peak, f"NVML device name {r['name']!r}"
    for m in ds.manifests:
        s = m.get("settings") or {}
        if m.get("emulated") and s.get("EMU_HARDWARE") and (peak := emulated_peak(str(s["EMU_HARDWARE"]))):
            return peak, f"EMULATED: emulator hardware profile {s['EMU_HARDWARE']!r}"
    return None, "no GPU identified (no NVML telemetry, not emulated)"


def _hist_prefill(t, dep: str) -> float | None:
    """No spans: the prefill engine's own prefill-time histogram mean (all classes of the deployment together)."""
    b = t.breakdown
    if b is None or b.empty:
        return None
    x = b[(b["deployment"] == dep) & (b["metric"] == "prefill_s") & b["role"].isin(["prefill", "colocated"])]
    return float(x["mean_s"].mean()) if len(x) and x["mean_s"].notna().any() else None


def roofline_rows(ds, t, per_req: pd.DataFrame, peak) -> list[dict]:
    from suite.analysis.roofline import class_roofline, decode_concurrency
    from suite.deploy.catalog import get as get_deployment
    from suite.kvprofile.report import find_probe, resolve_model

    m, _ = resolve_model(ds)
    probe, _ = find_probe(ds, m.name)
    link_probe = None
    if probe and probe.get("links"):
        link_probe = probe["links"][0].get("bandwidth_gbps", 0) * 1e9 or None
    req = ds.requests
    out = []
    for (dep, point), pts in ds.points[ds.points["status"] == "ok"].groupby(["deployment", "point"], sort=True):
        try:
            d = get_deployment(dep)
        except (KeyError, ValueError):
            continue
        tp = max(e.tp for e in d.model_engines)
        mine = req[req["pidx"].isin([int(i) for i in pts.index]) & req["ok"]] if len(req) else req
        if mine.empty:
            continue
        window = float(pts["load_wall_s"].sum())
        kv = t.kv[(t.kv["deployment"] == dep) & (t.kv["point"] == point)] if not t.kv.empty else pd.DataFrame()
        achieved = float(kv["achieved_Bps"].mean()) if len(kv) else math.nan
        link = link_probe or (achieved if not math.isnan(achieved) else None)
        br = per_req[(per_req["deployment"] == dep) & (per_req["point"] == point)] if len(per_req) else per_req
        # decoding engines' batch: all classes together, over every repetition's window
        dec_sum = float(np.nansum(mine["e2e"] - mine["ttft"]))
        batch = decode_concurrency(dec_sum, window) if window > 0 else 1.0
        if d.disaggregated:  # the decode engines share the batch
            batch /= max(1, len([e for e in d.model_engines if e.role.value == "decode"]))
        else:
            batch /= max(1, len(d.model_engines))
        for cls, g in mine.groupby("cls", observed=True):
            toks = g["prompt_tokens"].where(g["prompt_tokens"].notna(), g["input_tokens"])
            b = br[br["request_class"] == str(cls)] if len(br) else br
            measured_pre = float(b["prefill_compute"].mean()) if len(b) else _hist_prefill(t, dep)
            kv_meas = float(kv["mean_s"].mean()) if len(kv) else None
            r = class_roofline(m, peak, tp=tp, request_class=str(cls), prompt_tokens=float(toks.mean()),
                               output_tokens=float(g["n_out"].mean()), prefill_measured_s=measured_pre,
                               itl_measured_s=float(g["tpot"].mean()), decode_batch=batch,
                               link_bps=link if d.disaggregated else None,
                               kv_measured_s=kv_meas if d.disaggregated else None)
            out.append({"deployment": dep, "point": point, "tp": tp, "gpu": peak.name,
                        "link_source": ("kvprobe" if link_probe else "achieved (KV metrics)") if d.disaggregated
                        and link else ""} | r.to_dict())
    return out


def _roofline_md(rows: list[dict], peak, gpu_note: str, model_note: str) -> str:
    if peak is None:
        return f"_{gpu_note}: no roofline_\n"
    head = (f"GPU: **{peak.name}** ({gpu_note}): peak dense BF16 {peak.bf16_flops / 1e12:,.0f} TFLOP/s, HBM "
            f"{peak.hbm_bps / 1e12:.2f} TB/s ({peak.source}). {model_note}.\n\n")
    if not rows:
        return head + "_no successful points_\n"
    body = [[r["deployment"], r["point"], r["request_class"], f"{r['prompt_tokens']:.0f}",
             f"{r['prefill_bound_s'] * 1e3:.2f}", _ms(r["prefill_measured_s"]), _pct(r["prefill_fraction"]),
             f"{r['decode_batch']:.1f}", f"{r['decode_step_bytes'] / 1e9:.2f}", f"{r['decode_bound_s'] * 1e3:.2f}",
             _ms(r["decode_measured_s"]), _pct(r["decode_fraction"]), f"{r['kv_bytes'] / 1e6:.1f}",
             "-" if not r["kv_link_bps"] else f"{r['kv_link_bps'] / 1e9:.1f} ({r['link_source']})",
             _ms(r["kv_bound_s"]), _ms(r["kv_measured_s"])] for r in rows]
    return head + _table(["deployment", "point", "class", "prompt tok", "prefill at peak ms", "prefill measured ms",
                          "of peak", "decode batch", "step GB", "step at peak BW ms", "measured ITL ms", "of peak",
                          "KV MB", "link GB/s", "KV at link ms", "KV measured ms"], body) + (
        "\nPrefill at peak = forward FLOPs of the prompt / (peak x TP); measured = the engine's own prefill compute "
        "(spans; where there are none, the prefill-time histogram mean over all classes) - batched with other "
        "requests' tokens, so the fraction is a lower bound on the engine's efficiency. Step at peak BW = (active "
        "weights + KV of the mean decode batch at mean context) / (HBM bandwidth x TP); measured = mean client "
        "inter-token time. KV at link = the prompt's KV bytes at the measured link bandwidth.\n")


def _figure(dists: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dists.groupby(["deployment", "request_class"], sort=True))
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.45 * len(groups)))
    phases = [p for p in PD_PHASES + CO_PHASES if p in set(dists["phase"])]
    phases = list(dict.fromkeys(phases))
    labels = [f"{d} / {c}" for (d, c), _ in groups]
    left = np.zeros(len(groups))
    for i, ph in enumerate(phases):
        v = np.array([float(g.set_index("phase")["mean_s"].get(ph, 0.0)) for _, g in groups]) * 1e3
        ax.barh(labels, v, left=left, color=f"C{i % 10}", hatch="//" if i >= 10 else None, label=PHASE_TEXT[ph])
        left += v
    for y, (_, g) in enumerate(groups):
        ax.text(left[y], y, f" {ttft_equation(g).split(' =')[0]} ms", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="mean ms per request (engine spans joined to client records)",
           title="TTFT = router in + prefill queue + prefill + hand-off + D wait for KV + first token + ...")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def section(t, ds) -> dict:
    """{"markdown", "figures", "csvs"} for suite/report/render.py."""
    from suite.kvprofile.report import resolve_model

    per_req, infos = dataset_breakdown(ds.points)
    p = ["\n## Where the time goes\n\n"]
    if ds.emulated:
        p.append("> **EMULATED**: spans and times come from the stand-in engine (it emits vLLM's spans), not from "
                 "real engines.\n\n")
    dists = distributions(per_req, ["deployment", "request_class"]) if len(per_req) else pd.DataFrame()
    p.append("### Per-request TTFT breakdown\n\n")
    if len(dists):
        for (dep, cls), g in dists.groupby(["deployment", "request_class"], sort=True):
            p.append(f"- **{dep} / {cls}**: {ttft_equation(g)} (means, ms)\n")
        rows = [[r.deployment, r.request_class, PHASE_TEXT.get(r.phase, r.phase), str(r.requests), _ms(r.mean_s),
                 _ms(r.p50_s), _ms(r.p90_s), _ms(r.p99_s), _pct(r.share_of_ttft)] for r in dists.itertuples()]
        p.append("\n" + _table(["deployment", "class", "phase", "requests", "mean ms", "p50 ms", "p90 ms", "p99 ms",
                                "share of TTFT"], rows))
        p.append("\nPhases from each engine's own request span (vLLM `llm_request`: arrival, time in queue, in "
                 "prefill, TTFT), joined to the client record by request id; they add up to the client TTFT. "
                 "\"D queue\" holds the KV transfer and the wait for it: its per-transfer time is in the KV transfer "
                 "table (connector histograms).\n")
    joined = [i for i in infos if i["spans"]]
    if joined:
        p.append("\nJoin: " + "; ".join(
            f"{i['deployment']} {i['point']} rep{i['rep']}: {i['joined']}/{i['ok']} ok requests"
            + (f", {i['unmatched_spans']} spans unmatched" if i["unmatched_spans"] else "")
            + (f", {i['shape_mismatch']} without a full set of spans (one engine's missing: exported after the point "
               "ended, or never)" if i["shape_mismatch"] else "") for i in joined) + "\n")
    without = sorted({i["deployment"] for i in infos if not i["spans"]})
    if without:
        p.append(f"\nNo per-request spans from {', '.join(without)} (SGLang, or TRACING=off): their phases come "
                 "from the engines' histograms instead (Server-side time figure): "
                 + ", ".join(f"{k} = {v}" for k, v in HISTOGRAM_PHASES.items()) + ".\n")
    gpu, notes = gpu_rows(ds.points)
    p.append("\n### GPU telemetry per point\n\n")
    p.append(_gpu_md(gpu, notes))
    peak, gpu_note = _gpu_name(gpu, ds)
    _, model_note = resolve_model(ds)
    roof = roofline_rows(ds, t, per_req, peak) if peak else []
    p.append("\n### Roofline: measured vs first-principles bounds\n\n")
    p.append(_roofline_md(roof, peak, gpu_note, model_note))
    figs = {}
    if len(dists):
        fig = _figure(dists)
        if fig is not None:
            figs["ttft_breakdown"] = fig
    csvs = {"time_breakdown_requests.csv": per_req, "time_breakdown.csv": dists,
            "gpu_telemetry.csv": pd.DataFrame(gpu), "roofline.csv": pd.DataFrame(roof)}
    return {"markdown": "".join(p), "figures": figs, "csvs": csvs}
