"""The report's KV-transfer section: transfer time vs prompt tokens against link lines, TTFT(P/D)
decomposition per measured P/D point, share of TTFT spent in transfer, crossover per link, TCP-fallback warning.

`section(tables, dataset)` is called by suite.report.render when this module exists; it returns
{"markdown": str, "figures": {name: Figure}}. Inputs are the normalised before/after metric deltas the report
already holds (dataset.metrics: one row per point repetition, service, role and metric), so nothing here knows a
framework's native names. Link lines: the NVLink line comes from a kvprobe measurement (a kvprobe.json beside the
results, else docs/data/kvprobe-*-<model>.json) and says where it was measured; the others are spec line rates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from suite.kvprofile.attribution import TCP_REMEDY, HistDelta, RoleDeltas, attribute
from suite.kvprofile.crossover import PrefillCurve, kv_section_data
from suite.modelcfg import ModelConfigError, ModelSize, load

DOCS_DATA = Path(__file__).resolve().parents[2] / "docs" / "data"


def _model_candidates(ds) -> list[str]:
    out: list[str] = []
    for m in ds.manifests:
        s = m.get("settings") or {}
        if m.get("emulated") and s.get("EMU_MODEL_CONFIG"):
            out.append(str(s["EMU_MODEL_CONFIG"]))  # what the stand-in engine sized its KV with
        if s.get("MODEL"):
            ref = str(s["MODEL"])
            out += [ref, ref.rstrip("/").split("/")[-1].lower().removesuffix("-instruct")]
    return out


def resolve_model(ds, default: str = "llama-3.1-8b") -> tuple[ModelSize, str]:
    """The served model's size (for bytes/token), and a note saying how it was found."""
    for ref in _model_candidates(ds):
        try:
            m = load(ref)
        except (ModelConfigError, OSError, ValueError):
            continue
        return m, f"model {m.name}, from the run's settings ({ref})"
    return load(default), f"model not identifiable from the manifests: ASSUMED {default}"


def find_probe(ds, model: str) -> tuple[dict | None, str]:
    """A kvprobe result for this model: beside the results first (measured on this run's hardware), then the
    suite's committed measurements."""
    places: list[Path] = []
    for m in ds.manifests:
        root = Path(m.get("_path", "."))
        places += [root / "kvprobe.json", root.parent / "kvprobe.json", root.parent.parent / "kvprobe.json"]
    places += sorted(DOCS_DATA.glob(f"kvprobe-*-{model}.json"))
    for p in places:
        try:
            probe = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if (probe.get("model") or {}).get("model") == model and (probe.get("summary") or {}).get("link_fit_coalesced"):
            return probe, str(p)
    return None, ""


def _prefill_curve(m: ModelSize, probe: dict | None) -> PrefillCurve | None:
    if probe and (probe.get("prefill") or {}).get("points"):
        return PrefillCurve.from_probe(m, probe)
    for p in sorted(DOCS_DATA.glob(f"prefill-*-{m.name}.json")):
        try:
            pf = json.loads(p.read_text())
            return PrefillCurve.from_points(m, [(x["tokens"], x["median_ms"] / 1e3) for x in pf["points"]],
                                            f"measured: {pf.get('method', 'prefill')} on {pf.get('device')} ({p.name})")
        except (OSError, ValueError, KeyError):
            continue
    return None


def role_deltas(metrics, pidx: list[int]) -> dict[str, RoleDeltas]:
    """Normalised metric deltas of the given point repetitions, summed per role (several repetitions, dp
    replicas): histograms as count/sum, counters as totals."""
    sel = metrics[metrics["pidx"].isin(pidx)]
    out: dict[str, RoleDeltas] = {}
    for role, g in sel.groupby("role", observed=True):
        h = g[g["kind"] == "histogram"].groupby("metric")[["count", "sum"]].sum()
        c = g[g["kind"] == "counter"].groupby("metric")["value"].sum()
        out[str(role)] = RoleDeltas(str(role), {k: HistDelta(float(r["count"]), float(r["sum"]))
                                                for k, r in h.iterrows() if r["count"] > 0},
                                    {k: float(v) for k, v in c.items()})
    return out


def _window_s(req, pidx: list[int]) -> float | None:
    """First send to last response of each repetition, summed (the time the transfers of the point shared)."""
    if not len(req):
        return None
    g = req[req["pidx"].isin(pidx)].groupby("pidx").agg(s=("sent", "min"), d=("done", "max"))
    total = float((g["d"] - g["s"]).clip(lower=0).sum())
    return total if total > 0 else None


def pd_attributions(ds, m: ModelSize, expected_bps: float | None) -> list[dict]:
    """One attribution per (deployment, point) whose engines report both a prefill and a decode role."""
    if ds.metrics.empty:
        return []
    roles = ds.metrics.groupby("pidx")["role"].agg(lambda r: set(map(str, r)))
    pd_pidx = {int(p) for p, r in roles.items() if {"prefill", "decode"} <= r}
    out = []
    req = ds.requests
    from suite.analysis.breakdown import dataset_breakdown

    spans, _ = dataset_breakdown(ds.points)  # per-request phases where the engines sent spans
    for (dep, point), g in ds.points.groupby(["deployment", "point"], sort=True):
        pidx = [int(p) for p in g.index if int(p) in pd_pidx]
        if not pidx:
            continue
        rd = role_deltas(ds.metrics, pidx)
        mine = req[req["pidx"].isin(pidx) & req["ok"]] if len(req) else req
        ttft = float(mine["ttft"].mean()) if len(mine) else None
        toks = mine["prompt_tokens"].where(mine["prompt_tokens"].notna(), mine["input_tokens"]) if len(mine) else None
        prompt = float(toks.mean()) if toks is not None and toks.notna().any() else None
        mine_spans = spans[(spans["deployment"] == dep) & (spans["point"] == point)] if len(spans) else spans
        phases = ({c: float(mine_spans[c].mean()) for c in ("prefill_queue", "prefill_compute", "decode_first")
                   if c in mine_spans} if len(mine_spans) else None)
        a = attribute(rd["prefill"], rd["decode"], ttft_s=ttft if ttft and not math.isnan(ttft) else None,
                      expected_bps=expected_bps, kv_bytes_per_token=m.kv_bytes_per_token(), prompt_tokens=prompt,
                      span_phases=phases, window_s=_window_s(req, pidx))
        wait = rd["decode"].mean("kv_wait_s")
        out.append(a.to_dict() | {"deployment": dep, "point": point, "framework": g.iloc[0]["framework"],
                                  "emulated": bool(g["emulated"].any()), "prompt_tokens": prompt,
                                  "client_requests": len(mine), "decode_kv_wait_s": wait,
                                  "from_spans": bool(phases)})
    return out


def _ms(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 1e3:.2f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _links_md(data: dict) -> str:
    rows = [[ln["link"], f"{ln['bandwidth_gbps']:.1f}", f"{ln['latency_us']:.0f}",
             "**measured**: " + ln["source"].removeprefix("measured: ") if ln["source"].startswith("measured")
             else "nominal " + ln["source"]] for ln in data["links"]]
    return _table(["link", "GB/s", "latency us", "source"], rows)


def _attribution_md(attrs: list[dict], emulated: bool) -> str:
    if not attrs:
        return ("_No P/D point with both prefill- and decode-role metrics: no per-request decomposition. (Are the "
                "engines' /metrics snapshots in metrics/before and metrics/after?)_\n")
    rows = []
    for a in attrs:
        c = a["components_s"]
        dep = a["deployment"] + (" *" if a.get("from_spans") else "")
        rows.append([dep, a["point"], f"{a['client_requests']}", _ms(a["ttft_s"]), _ms(c["queue_p"]),
                     _ms(c["prefill_p"]), _ms(c["transfer"]), _ms(c["first_decode"]), _ms(c["other"]),
                     _pct(a["shares"].get("transfer")),
                     "-" if a["transfer_bytes"] is None else f"{a['transfer_bytes'] / 1e6:.1f}",
                     "-" if a["achieved_bps"] is None else f"{a['achieved_bps'] / 1e9:.2f}",
                     "-" if a.get("point_bps") is None else f"{a['point_bps'] / 1e9:.2f}",
                     _ms(a.get("decode_kv_wait_s"))])
    md = _table(["deployment", "point", "requests", "client TTFT ms", "queue on P ms", "prefill on P ms",
                 "KV transfer ms", "first decode ms", "rest ms", "transfer share of TTFT", "MB/request",
                 "achieved GB/s", "over the point GB/s", "D waited for KV ms"], rows)
    md += ("\nMeans per request. TTFT(P/D) = queue on P + prefill on P + KV transfer + first decode step + rest "
           "(router, HTTP, D's queue; the client TTFT minus the engines' parts). First decode = D's first step "
           "where the engine exports it, else one mean ITL; queue, prefill and first decode come from the engines' "
           "request spans where they sent them (marked *), from their histograms otherwise. "
           "Achieved = bytes / summed transfer time (per transfer: a transfer waiting behind others counts its wait); "
           "over the point = bytes / the point's window (first send to last response): the link's mean rate, a "
           "lower bound. "
           "\"D waited for KV\" (where exported) spans P's queue, "
           "prefill and the transfer, so it is a cross-check, not an extra component.\n")
    warn = [(a, w) for a in attrs for w in a["warnings"]]
    if warn:
        md += "\n"
        for a, w in warn:
            tag = " (emulated input: the stand-in engine's link, not your hardware)" if emulated else ""
            md += f"- **warning** {a['deployment']} {a['point']}{tag}: {w}\n"
    return md


def _crossover_md(data: dict) -> str:
    if not data["crossover"]:
        return "_No prefill timing for this model (kvprobe --prefill): crossover not computed._\n"
    rows = [[c["link"], ", ".join(f"{x:,}" for x in c["crossings"]) or "none", c["verdict"]]
            for c in data["crossover"]]
    md = _table(["link", "crossover (tokens)", "verdict"], rows)
    md += f"\nPrefill times: {data['prefill']['source']}. {'; '.join(data['notes'])}.\n"
    names = [ln["link"] for ln in data["links"]]
    share_rows = [[f"{r['tokens']:,}", f"{r['prefill_ms']:.1f}"] + [_pct(r[n]) for n in names]
                  for r in data["ttft_share"]]
    md += "\nShare of (prefill + transfer) spent moving the KV, no queueing:\n\n"
    md += _table(["prompt tokens", "prefill ms", *names], share_rows)
    return md


def section(tables, ds) -> dict:
    """{"markdown": ..., "figures": {...}} for the report (see the module docstring)."""
    from suite.kvprofile.figures import decomposition_figure, kv_section_figure

    try:
        m, model_note = resolve_model(ds)
    except ModelConfigError:
        return {"markdown": "\n### KV transfer analysis\n\n_no model config to size the KV: section skipped_\n",
                "figures": {}}
    probe, probe_path = find_probe(ds, m.name)
    data = kv_section_data(m, probe, _prefill_curve(m, probe))
    expected = data["links"][0]["bandwidth_gbps"] * 1e9 if probe else None
    attrs = pd_attributions(ds, m, expected)
    emulated = bool(ds.emulated)

    p = ["\n### KV transfer analysis: links, TTFT decomposition, crossover\n\n"]
    if emulated:
        p.append("> **EMULATED**: transfer times below come from the stand-in engine, not from a real link.\n\n")
    p.append(f"KV size: {m.kv_bytes_per_token():,} bytes/token ({model_note}).\n\n")
    p.append(_links_md(data))
    if probe:
        p.append(f"\nMeasured link: kvprobe result `{probe_path}`. A measurement from another machine describes "
                 "that machine; run `make kvprobe` on yours and put `kvprobe.json` beside the results.\n")
    else:
        p.append("\nNo kvprobe measurement for this model (looked beside the results and in docs/data): only spec "
                 "lines are drawn. Run `make kvprobe` on the GPU host and put `kvprobe.json` beside the results.\n")
    p.append("\n#### TTFT(P/D) decomposition per measured point\n\n")
    p.append(_attribution_md(attrs, emulated))
    slow = [a for a in attrs if a["achieved_bps"] is not None and a["achieved_bps"] < 5e9
            and (a.get("point_bps") is None or a["point_bps"] < 5e9)]
    if slow and not emulated:
        p.append(f"\n**TCP FALLBACK**: {len(slow)} P/D point(s) moved the KV at under 5 GB/s. Remedy: {TCP_REMEDY}.\n")
    p.append("\n#### Crossover: where moving the KV costs more than co-location's prefill stall\n\n")
    p.append(_crossover_md(data))

    runs = []
    for a in attrs:
        if a["transfer_s"] and a["prompt_tokens"]:
            runs.append({"label": f"{a['deployment']} {a['point']}" + (" (emulated)" if a["emulated"] else ""),
                         "tokens": [a["prompt_tokens"]], "ms": [a["transfer_s"] * 1e3]})
    figs = {"kv_transfer": kv_section_figure(data, runs)}
    with_parts = [a for a in attrs if a["ttft_s"]]
    if with_parts:
        figs["kv_ttft_decomposition"] = decomposition_figure(
            [{"label": f"{a['deployment']} {a['point']}", "components_s": a["components_s"], "ttft_s": a["ttft_s"]}
             for a in with_parts])
    return {"markdown": "".join(p), "figures": figs, "data": data, "attributions": attrs}
