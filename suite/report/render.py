"""Write reports/<name>/: index.html (self-contained), report.md, CSVs, figures/*.png, llmd/*.json."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import pandas as pd

from suite.report import headline
from suite.report.headline import DAGGER, FEW_NOTE
from suite.report.load import Dataset
from suite.report.tables import Tables

SUMMARY_COLS = [("deployment", "deployment"), ("point", "point"), ("offered_rps", "point offered req/s"),
                ("cls", "class"), ("reps", "reps"),
                ("requests", "requests"), ("errors", "errors"), ("timeouts", "timeouts"),
                ("ttft_p50", "TTFT p50 ms"), ("ttft_p90", "TTFT p90 ms"), ("ttft_p99", "TTFT p99 ms"),
                ("itl_p50", "ITL p50 ms"), ("itl_p99", "ITL p99 ms"), ("tpot_p50", "TPOT p50 ms"),
                ("e2e_p50", "E2E p50 ms"), ("e2e_p99", "E2E p99 ms"), ("req_per_s", "req/s"),
                ("out_tok_per_s", "out tok/s"), ("goodput_rps", "goodput req/s"), ("goodput_frac", "in SLO")]
MS = {"ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p99", "tpot_p50", "e2e_p50", "e2e_p99"}
FIG_TITLES = {"ttft_vs_input": "TTFT vs input length", "cdf_ttft_itl": "TTFT and ITL distributions",
              "vs_rate": "TTFT and goodput vs request rate", "topologies": "Deployments side by side",
              "server_breakdown": "Server-side time per request", "kv_transfer": "KV transfer vs link bandwidth",
              "kv_ttft_decomposition": "TTFT(P/D) decomposition",
              "ttft_breakdown": "TTFT per request, phase by phase (engine spans)"}
KV_HOOK = "suite.kvprofile.report"  # optional: section(tables, dataset) -> {"markdown": str, "figures": {name: fig}}


def _cell(r, col: str) -> str:
    v = r[col]
    if col in MS:
        if v is None or math.isnan(v):
            return "-"
        mark = DAGGER if bool(r.get(f"{col}_few", False)) else ""
        return f"{v * 1e3:.1f} [{r[col + '_ci_low'] * 1e3:.1f}, {r[col + '_ci_high'] * 1e3:.1f}]{mark}"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.0%}" if col == "goodput_frac" else f"{v:.2f}"
    return str(v)


def _md_table(df: pd.DataFrame, cols: list[tuple[str, str]], cell=None) -> str:
    if df.empty:
        return "_no data_\n"
    cell = cell or (lambda r, c: str(r[c]))
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r, c) for c, _ in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _kv_hook(t: Tables, ds: Dataset) -> dict:
    """KV-transfer section from the KV profiler (docs/kv-transfer.md) when it provides one; else our rows only."""
    import importlib

    try:
        mod = importlib.import_module(KV_HOOK)
    except ModuleNotFoundError as e:
        if e.name not in (KV_HOOK, "suite.kvprofile"):
            raise
        return {}
    return mod.section(t, ds) if hasattr(mod, "section") else {}


def _engine_versions(ds: Dataset) -> list[str]:
    """The engine versions the runner asked of the running engines (point.json engine_versions), per deployment:
    what actually ran, which may differ from the image or package the settings name."""
    if "engine_versions" not in ds.points:
        return []
    seen: dict[str, dict[str, set]] = {}
    for dep, text in zip(ds.points["deployment"], ds.points["engine_versions"], strict=True):
        for service, version in (json.loads(text) if isinstance(text, str) and text else {}).items():
            seen.setdefault(dep, {}).setdefault(service, set()).add(version)
    return [f"- engine versions of {dep} (reported by the engines): "
            + ", ".join(f"{svc} `{' / '.join(sorted(v))}`" for svc, v in sorted(services.items())) + "\n"
            for dep, services in sorted(seen.items())]


def _environment(ds: Dataset) -> str:
    out = _engine_versions(ds)
    if not ds.manifests:
        return "".join(out) + "_no manifest.json: environment unknown_\n"
    for m in ds.manifests:
        out.append(f"### {m.get('plan', '?')} / {m.get('stamp', '?')} ({m.get('_path')})\n")
        out.append(f"- status: {m.get('status', '?')}; suite {m.get('suite_version', '?')}; "
                   f"schema {m.get('schema_version', '?')}; emulated: {m.get('emulated', False)}\n")
        for key in ("versions", "environment"):
            for k, v in (m.get(key) or {}).items():
                text = v if isinstance(v, str) else json.dumps(v)
                out.append(f"- {key}.{k}: `{text[:300]}`\n")
        settings = m.get("settings") or {}
        keep = {k: v for k, v in settings.items() if k in ("MODEL", "VLLM_IMAGE", "SGLANG_IMAGE", "ROUTER_IMAGE",
                                                            "MAX_MODEL_LEN", "GPU_MEMORY_FRACTION", "LOAD_FORMAT",
                                                            "VLLM_KV_CONNECTOR", "SGLANG_TRANSFER_BACKEND")
                or (m.get("emulated") and k.startswith("EMU_"))}
        for k, v in keep.items():
            out.append(f"- {k}: `{v}`\n")
    return "".join(out)


def _runner_time(ds: Dataset) -> str:
    """Where each run's wall time went (manifest.json `timings`, see suite/runner/timing.py): the overhead budget
    of the runner is < 5% of the wall time outside model load (docs/benchmarks.md)."""
    from suite.runner.timing import DEFINITION, PHASES

    out = []
    for m in ds.manifests:
        t = m.get("timings") or {}
        if not t.get("wall_s"):
            continue
        base = t["wall_s"] - t.get("up_s", 0)
        overhead = t.get("overhead_s", base - t.get("load_s", 0))  # runs before the breakdown: one total
        ratio = overhead / base if base > 0 else 0.0
        out.append(f"\n### {m.get('plan', '?')} / {m.get('stamp', '?')}\n\n")
        out.append(f"Outside load generation: **{ratio:.1%}** of the wall time without model load "
                   f"({overhead:.1f} s of {base:.1f} s; budget < 5%: {'met' if ratio < 0.05 else '**missed**'}). "
                   f"Wall {t['wall_s']:.1f} s, model load (excluded) {t.get('up_s', 0):.1f} s, load "
                   f"{t.get('load_s', 0):.1f} s over {t.get('points', '?')} points.\n\n")
        rows = [(PHASES[k], t[k]) for k in PHASES if k in t]
        if "other_s" in t:
            rows.append(("other (between phases)", t["other_s"]))
        if rows:
            out.append("| overhead phase | s | share of wall without model load |\n|---|---|---|\n")
            out += [f"| {what} | {v:.2f} | {f'{v / base:.1%}' if base > 0 else '-'} |\n" for what, v in rows]
        out.append(f"\n_Definition: {t['definition']}._\n" if "definition" in t else
                   "\n_Recorded before the per-phase accounting: load = whole load calls (lead-in and tail "
                   f"included), so the figure is lower than today's definition gives ({DEFINITION})._\n")
    return "".join(out) or "_no run timings in the manifests_\n"


def write(ds: Dataset, t: Tables, name: str, out_root: str | Path) -> Path:
    out = Path(out_root) / name
    (out / "figures").mkdir(parents=True, exist_ok=True)
    csvs = {"summary.csv": t.summary, "repetitions.csv": t.reps, "repetition_aggregates.csv": t.rep_agg,
            "improvement.csv": t.improvement, "server_breakdown.csv": t.breakdown, "kv_transfer.csv": t.kv,
            "ttft_consistency.csv": t.consistency,
            "points.csv": ds.points.drop(columns=["classes", "services"], errors="ignore")}
    for fname, df in csvs.items():
        df.to_csv(out / fname, index=False)
    from suite.report.figures import all_figures
    from suite.report.llmd import export

    hook = _kv_hook(t, ds)
    from suite.analysis.report import section as time_section

    timing = time_section(t, ds)  # per-request phases, GPU telemetry, roofline (docs/time-breakdown.md)
    for fname, df in timing["csvs"].items():
        df.to_csv(out / fname, index=False)
    csvs |= timing["csvs"]
    figs = all_figures(t, skip=set(hook.get("figures", {}))) | hook.get("figures", {})  # the hook's replace ours
    figs |= timing["figures"]
    pngs = {k: _png(f) for k, f in figs.items()}
    for k, data in pngs.items():
        (out / "figures" / f"{k}.png").write_bytes(data)
    llmd = export(ds, t, out / "llmd")

    md = _markdown(ds, t, name, list(pngs), csvs, hook.get("markdown", "") + timing["markdown"], llmd)
    (out / "report.md").write_text(md)
    (out / "index.html").write_text(_html(md, pngs))
    return out


def _banner(ds: Dataset) -> list[str]:
    lines = []
    if ds.emulated:
        lines.append("**EMULATED**: some or all inputs come from the suite's stand-in engine; their latencies "
                     "say nothing about real GPUs." + (" **Emulated and real runs are MIXED in this report.**"
                                                        if ds.mixed else ""))
    if "caveat" in ds.points:  # what a deployment cannot show (e.g. P and D on one GPU), stated where it is read
        for caveat, g in ds.points[ds.points["caveat"].fillna("") != ""].groupby("caveat", sort=True):
            head, _, rest = caveat.partition(":")
            deps = ", ".join(sorted(g["deployment"].unique()))
            lines.append(f"**{head.upper()}** ({deps}):{rest}." if rest else f"**{caveat}** ({deps}).")
    if ds.partial:
        lines.append("**PARTIAL**: some points failed or the run did not complete; see Messages.")
    return lines


def _improvement_md(imp: pd.DataFrame, summary: pd.DataFrame) -> str:
    """One row per (point, class, deployment vs its co-located baseline), one column per compared metric."""
    if imp.empty:
        return "_no co-located baseline at matching points (same framework, backend, point and class)_\n"
    metrics = list(dict.fromkeys(imp["metric"]))
    offered = summary.groupby(["deployment", "point"])["offered_rps"].first().to_dict() if len(summary) else {}
    rows = []
    for (point, cls, dep, base), g in imp.groupby(["point", "cls", "deployment", "baseline"], sort=True):
        off = offered.get((dep, point), math.nan)
        label = f"{point} ({off:.1f} req/s offered)" if math.isfinite(off) else str(point)
        cells = {}
        for r in g.itertuples():
            mark = DAGGER if getattr(r, "few", False) else ""
            cells[r.metric] = ("-" if math.isnan(r.delta_pct) else
                               f"{'**' if r.significant else ''}{r.delta_pct:+.0f}% [{r.ci_low:+.0f}, {r.ci_high:+.0f}]"
                               f"{mark}{'**' if r.significant else ''}")
        rows.append([label, cls, dep, base] + [cells.get(m, "-") for m in metrics])
    lines = ["| point | class | deployment | vs baseline | " + " | ".join(metrics) + " |",
             "|" + "---|" * (4 + len(metrics))]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return ("Change of each statistic against the co-located deployment of the same framework at the same point and "
            "class, with its 95% bootstrap CI; negative = lower latency (better). **Bold**: the CI excludes 0.\n\n"
            + "\n".join(lines) + "\n" + (f"\n{FEW_NOTE}\n" if "few" in imp and imp["few"].any() else ""))


def _markdown(ds: Dataset, t: Tables, name: str, figs: list[str], csvs: dict, kv_md: str, llmd: list[str]) -> str:
    p = []
    p.append(f"# pdsuite report: {name}\n")
    p += [f"> {b}\n" for b in _banner(ds)]
    n_req, n_pts = len(ds.requests), len(ds.points)
    p.append(f"\n{n_req} request records from {n_pts} point repetitions "
             f"({ds.points['deployment'].nunique()} deployments). 95% CIs: bootstrap over requests within "
             "repetitions, and over repetitions when there are 3 or more.\n")
    p.append(headline.markdown(t.headline, ds.emulated))
    if ds.messages:
        p.append("\n## Messages\n")
        p += [f"- **{lvl}**: {html.escape(msg)}\n" for lvl, msg in ds.messages]
    p.append("\n## Load points: target and offered rate\n")
    p.append(_load_md(t))
    p.append("\n## Figures\n")
    p += [f"\n### {FIG_TITLES.get(f, f)}\n\n![{f}](figures/{f}.png)\n" for f in figs]
    p.append("\n## Per deployment x point x class\n")
    p.append(_md_table(t.summary, SUMMARY_COLS, _cell))
    if "ttft_p99_few" in t.summary and t.summary.filter(like="_few").any(axis=None):
        p.append(f"\n{FEW_NOTE}\n")
    slo = ", ".join(f"{c}: TTFT <= {v.get('ttft_s', math.inf):g} s, TPOT <= {v.get('tpot_s', math.inf):g} s"
                    for c, v in t.slos.items())
    p.append(f"\nGoodput SLOs: {slo or 'default'}.\n")
    p.append("\n## Improvement over the co-located baseline\n")
    p.append(_improvement_md(t.improvement, t.summary))
    p.append("\n## Client vs server TTFT\n")
    if t.consistency.empty:
        p.append("_no server-side TTFT histograms_\n")
    else:
        for r in t.consistency.itertuples():
            if r.ok is None:
                p.append(f"- {r.deployment} {r.point}: {r.note}\n")
            else:
                mark = "agree" if r.ok else "**DISAGREE** (check clocks, proxies, warm-up, other traffic)"
                p.append(f"- {r.deployment} {r.point}: client p50 {r.client_p50_s * 1e3:.1f} ms vs server bucket "
                         f"{r.server_p50_bucket} s; p90 {r.client_p90_s * 1e3:.1f} ms vs {r.server_p90_bucket} s: "
                         f"{mark}. {r.note}\n")
    p.append("\n## KV transfer\n")
    if t.kv.empty:
        p.append("_no KV-transfer metrics in these runs_\n")
    else:
        cols = [("deployment", "deployment"), ("point", "point"), ("role", "recorded on"), ("transfers", "transfers"),
                ("mean_s", "mean ms"), ("mean_bytes", "mean MB"), ("tokens_per_transfer", "prompt tokens"),
                ("achieved_Bps", "achieved GB/s")]
        scale = {"mean_s": 1e3, "mean_bytes": 1e-6, "achieved_Bps": 1e-9}

        def kv_cell(r, c):
            v = r[c]
            if not isinstance(v, float):
                return str(v)
            return "-" if math.isnan(v) else f"{v * scale.get(c, 1):,.{2 if c in scale else 0}f}"

        p.append(_md_table(t.kv, cols, kv_cell))
        slow = t.kv[t.kv["achieved_Bps"] < 5e9]
        if len(slow) and not ds.emulated:
            p.append("\n**Warning**: achieved KV bandwidth below 5 GB/s - the connector may have fallen back to TCP "
                     "(see docs: host network, ipc/pid host, both GPUs visible to both engines).\n")
    p.append(kv_md)
    p.append("\n## Runner time\n")
    p.append(_runner_time(ds))
    p.append("\n## Environment\n")
    p.append(_environment(ds))
    p.append("\n## Data\n")
    p += [f"- [{f}]({f}): {len(df)} rows\n" for f, df in csvs.items()]
    p += [f"- [llmd/{Path(f).name}](llmd/{Path(f).name}) (llm-d benchmark report v0.1)\n" for f in llmd]
    p.append("\nEvery number above is computed from the request records of the points listed in points.csv "
             "(paths to each repetition's requests.parquet) and the raw /metrics snapshots beside them.\n")
    return "".join(p)


def _load_md(t: Tables) -> str:
    """Per deployment and point: the label's target rate beside the rate the schedule actually offered."""
    s = t.summary
    if s.empty:
        return "_no load points_\n"
    g = s.groupby(["deployment", "point"], sort=False).agg(
        target=("rate_rps", "first"), offered=("offered_rps", "first"), requests=("requests", "sum"),
        ok=("ok", "sum"), reps=("reps", "max"), req_per_s=("req_per_s", "sum"),
        goodput=("goodput_rps", "sum")).reset_index().sort_values(["deployment", "target", "point"], kind="stable")

    def num(v, fmt="{:.2f}"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    lines = ["| deployment | point | target req/s | offered req/s | requests (all reps) | ok | throughput req/s "
             "| goodput req/s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.deployment} | {r.point} | {num(r.target, '{:g}')} | {num(r.offered)} | {r.requests} | {r.ok} "
              f"| {num(r.req_per_s)} | {num(r.goodput)} |" for r in g.itertuples()]
    return ("Offered = requests sent / the arrival window (the plan's duration for open-loop arrivals); throughput "
            "and goodput = completed (within SLO) / first send to last response, at least that window - so goodput "
            "<= throughput <= offered. Means over repetitions.\n\n" + "\n".join(lines) + "\n")


def _inline(text: str) -> str:
    import re

    esc = html.escape(text, quote=False)
    esc = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", esc)


def _html(md: str, pngs: dict[str, bytes]) -> str:
    """Minimal Markdown -> HTML for our own output (headings, lists, tables, quotes, images inlined)."""
    import re

    body, in_table, in_list = [], False, False
    for line in md.splitlines():
        esc = html.escape(line, quote=False)
        esc = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc)
        esc = re.sub(r"`(.+?)`", r"<code>\1</code>", esc)
        img = re.match(r"!\[(.+?)\]\(figures/(.+?)\.png\)", line)
        link = re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', esc)
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(line) <= set("|-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{link[2:]}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if img:
            data = base64.b64encode(pngs[img.group(2)]).decode()
            body.append(f'<img alt="{img.group(1)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{link[level + 1:]}</h{level}>")
        elif line.startswith("> "):
            body.append(f'<div class="banner">{link.removeprefix("&gt; ")}</div>')
        elif line.strip():
            body.append(f"<p>{link}</p>")
    if in_table:
        body.append("</table>")
    if in_list:
        body.append("</ul>")
    css = ("body{font-family:sans-serif;max-width:1200px;margin:auto;font-size:14px}"
           "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
           ".banner{background:#c0392b;color:#fff;padding:10px;font-size:16px;margin:6px 0}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pdsuite report</title><style>{css}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")
