"""Collect the figures docs/gpu-h200.md quotes from a results folder and its report, into one JSON file.

    pdsuite report RESULTS [RESULTS ...] --name NAME --out reports
    python bench/gpu_results_json.py RESULTS [RESULTS ...] --report reports/NAME --out docs/data/FILE.json \
        [--ucx ucx-one-gpu.json ...] [--figure PNG]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.client_vs_engine_ttft import compare

KEEP = ("deployment", "point", "cls", "reps", "requests", "ok", "errors", "timeouts", "offered_rps", "ttft_p50",
        "ttft_p50_ci_low", "ttft_p50_ci_high", "ttft_p99", "ttft_p99_few", "itl_p50", "itl_p99", "tpot_p50",
        "out_tok_per_s")
SOURCE = re.compile(r'^vllm:prompt_tokens_by_source_total\{[^}]*source="(\w+)"[^}]*\} ([0-9.e+]+)', re.M)


def rows(path: Path, keep=None) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if keep is None or k in keep} for r in csv.DictReader(f)]


def prompt_sources(rep: Path) -> dict[str, float]:
    """Prompt tokens per source (computed, prefix-cache hit, KV transfer) during the point, all engines."""
    out: dict[str, float] = {}
    for after in (rep / "metrics" / "after").glob("*.prom"):
        before = rep / "metrics" / "before" / after.name
        b = dict(SOURCE.findall(before.read_text())) if before.is_file() else {}
        for src, v in SOURCE.findall(after.read_text()):
            out[f"{after.stem}:{src}"] = float(v) - float(b.get(src, 0))
    return out


def sweep_figure(summary: list[dict], path: Path) -> None:
    """TTFT p50 (95% CI) vs prompt length, one request at a time, per deployment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for dep in sorted({r["deployment"] for r in summary}):
        pts = sorted((int(r["point"].split("=")[1]), float(r["ttft_p50"]) * 1e3, float(r["ttft_p50_ci_low"]) * 1e3,
                      float(r["ttft_p50_ci_high"]) * 1e3)
                     for r in summary if r["deployment"] == dep and r["point"].startswith("len="))
        if not pts:
            continue
        x, y, lo, hi = map(list, zip(*pts, strict=True))
        ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo, strict=True)], [b - a for a, b in zip(y, hi,
                    strict=True)]], marker="o", capsize=3, label=dep)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens (one request at a time)")
    ax.set_ylabel("TTFT p50 ms (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+", help="results/<plan>/<stamp> folders the report read")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ucx", type=Path, nargs="*", default=[], help="bench/ucx_one_gpu.py outputs")
    ap.add_argument("--figure", type=Path, help="TTFT vs input length of the len=* points (PNG)")
    a = ap.parse_args()
    sources, prompts, fidelity = [], {}, []
    for res in a.results:
        manifest = json.loads((res / "manifest.json").read_text())
        points = sorted(res.glob("*/*/rep*/point.json"))
        first = json.loads(points[0].read_text())
        sources.append({"plan": manifest["plan"], "stamp": manifest["stamp"], "status": manifest["status"],
                        "deployments": sorted({p.parent.parent.parent.name for p in points}),
                        "engine_versions": first.get("engine_versions"), "driver": first.get("driver"),
                        "settings": {k: manifest["settings"].get(k) for k in (
                            "MODEL", "LOAD_FORMAT", "VLLM_EXTRA_ARGS", "SHARED_GPU_MEMORY_FRACTION", "MAX_MODEL_LEN",
                            "UCX_CUDA_IPC_GET_ZCOPY")}})
        prompts |= {f"{manifest['stamp']}/{p.parent.relative_to(res)}": prompt_sources(p.parent) for p in points}
        fidelity += [compare(p.parent) for p in points if "colocated" in p.parent.parent.parent.name]
    out = {"source": sources,
           "summary": rows(a.report / "summary.csv", KEEP),
           "kv_transfer": rows(a.report / "kv_transfer.csv"),
           "roofline": rows(a.report / "roofline.csv"),
           "time_breakdown": rows(a.report / "time_breakdown.csv"),
           "gpu_telemetry": rows(a.report / "gpu_telemetry.csv"),
           "prompt_tokens_by_source": prompts,
           "client_vs_engine_ttft": fidelity}
    if a.ucx:
        out["ucx_one_gpu"] = [json.loads(u.read_text()) for u in a.ucx]
    if a.figure:
        sweep_figure(out["summary"], a.figure)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
