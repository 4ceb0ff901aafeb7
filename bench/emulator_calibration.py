"""Fit the emulator's `h200` hardware profile to a real run of plans/one-gpu.yaml, and compare an emulated replay.

  python bench/emulator_calibration.py fit RESULTS_DIR [--out docs/data/emulator-h200-fit.json]
  python bench/emulator_calibration.py replay REAL_DIR [--out results]     (EMU_HARDWARE=h200, --driver host)
  python bench/emulator_calibration.py compare REAL_DIR EMU_DIR [--json ...] [--figure ...]

RESULTS_DIR / REAL_DIR / EMU_DIR: one run's folder (results/one-gpu/<stamp>). The fit reads the co-located
deployment's len=* points (one request at a time):
  ITL p50 (client token gaps)  = step_overhead_s + decode_bytes(prompt + 16) / mem_bw        (linear least squares)
  TTFT p50 (vLLM's own span)    = step_overhead_s + prefill_fixed_s + prefill_flops(new, cached) / flops
The tokens the engine really computed come from vLLM's counters (prompt_tokens_by_source local_compute /
local_cache_hit, after - before), so prefix-cache hits are fitted as what they are, not as compute.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from suite.modelcfg import load as load_model

LENGTHS = (128, 512, 1024, 2048, 4096, 8192)
BATCH_POINTS = ("streams=64", "streams=256")
REAL_DEP = "vllm-colocated-1gpu"
TOLERANCE = 0.10


def _dep_dir(run: Path, emulated: bool) -> Path:
    names = [p.name for p in run.iterdir() if p.is_dir() and p.name.endswith("colocated-1gpu")]
    if not names:
        sys.exit(f"{run}: no *colocated-1gpu deployment folder")
    return run / (next((n for n in names if n.startswith("emu-")), names[0]) if emulated else
                  next((n for n in names if not n.startswith("emu-")), names[0]))


def _requests(point: Path) -> pd.DataFrame:
    files = sorted(glob.glob(str(point / "rep*" / "requests.parquet")))
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return df


def _counter(prom: str, source: str) -> float:
    """vllm:prompt_tokens_by_source_total{source=...} from a scrape (prometheus_client's own parser)."""
    return sum(s.value for fam in text_string_to_metric_families(prom) for s in fam.samples
               if s.name == "vllm:prompt_tokens_by_source_total" and s.labels.get("source") == source)


def point_stats(point: Path) -> dict:
    df = _requests(point)
    ok = df[df.status == "ok"]
    itl = np.concatenate([np.diff(np.asarray(t, dtype=float)) for t in ok.token_times_s if len(t) > 1])
    out = {"requests": len(df), "ok": len(ok), "ttft_p50_s": float(ok.ttft_s.median()),
           "itl_p50_s": float(np.median(itl)), "itl_samples": len(itl),
           "duration_s": None, "out_tok_per_s": None}
    spans = [json.loads(line)["attributes"] for f in sorted(glob.glob(str(point / "rep*" / "spans.jsonl")))
             for line in Path(f).read_text().splitlines() if line.strip()]
    ttft = [a["gen_ai.latency.time_to_first_token"] for a in spans if "gen_ai.latency.time_to_first_token" in a]
    out["server_ttft_p50_s"] = float(np.median(ttft)) if ttft else None
    computed = cached = 0.0
    for rep in sorted(point.glob("rep*")):
        for before in (rep / "metrics" / "before").glob("*engine*.prom"):
            after = (rep / "metrics" / "after" / before.name).read_text()
            b = before.read_text()
            computed += _counter(after, "local_compute") - _counter(b, "local_compute")
            cached += _counter(after, "local_cache_hit") - _counter(b, "local_cache_hit")
    n = max(1, len(ok))
    out["computed_per_request"], out["cached_per_request"] = computed / n, cached / n
    walls = [json.loads((rep / "point.json").read_text()).get("load_wall_s") for rep in sorted(point.glob("rep*"))]
    if all(walls):
        out["duration_s"] = float(sum(walls))
        out["out_tok_per_s"] = float(ok.completion_tokens.sum() / sum(walls))
    return out


def fit_prefill(flops: np.ndarray, ttft: np.ndarray) -> tuple[float, float, float]:
    """(prefill_fixed_s, prefill_floor_s, 1/flops) of TTFT = fixed + max(floor, flops * inv), the emulator's own
    prefill cost (suite/emulator/costmodel.py), fitted for the smallest worst relative error. Short prompts are
    overhead-bound (on the H200 128 and 512 tokens cost about the same), so a straight line alone misses them."""
    order = np.argsort(flops)
    flops, ttft = flops[order], ttft[order]
    best = None
    for floor in np.arange(0.0, float(ttft.min()) + 1e-4, 1e-4):
        for k in range(len(flops) - 1):  # the k shortest prompts on the floor, the rest on the line
            x = np.c_[np.ones(len(flops) - k), flops[k:]] / ttft[k:, None]
            (fixed, inv), *_ = np.linalg.lstsq(x, np.ones(len(flops) - k), rcond=None)
            if inv <= 0:
                continue
            err = float(np.max(np.abs((fixed + np.maximum(floor, flops * inv)) / ttft - 1)))
            if best is None or err < best[0]:
                best = (err, float(fixed), float(floor), float(inv))
    return best[1], best[2], best[3]


def fit(run: Path) -> dict:
    dep = _dep_dir(run, emulated=False)
    m = load_model("llama-3.1-8b")
    pts = {n: point_stats(dep / f"len={n}") for n in LENGTHS}
    # ITL at one request: overhead + (weights + KV of the context) / mem_bw; mean context = prompt + 16 of 32 out
    dec = np.array([m.decode_bytes(n + 16) for n in LENGTHS])
    itl = np.array([pts[n]["itl_p50_s"] for n in LENGTHS])
    (overhead, inv_bw), *_ = np.linalg.lstsq(np.c_[np.ones(len(dec)), dec], itl, rcond=None)
    # TTFT (server side: the client's HTTP hop is the emulator's own real HTTP hop)
    ttft = np.array([pts[n]["server_ttft_p50_s"] for n in LENGTHS]) - overhead
    new = [round(pts[n]["computed_per_request"]) for n in LENGTHS]
    ctx = [round(pts[n]["cached_per_request"]) for n in LENGTHS]
    flops = np.array([m.prefill_flops(a, b) for a, b in zip(new, ctx, strict=True)])
    fixed, floor, inv_f = fit_prefill(flops, ttft)
    profile = {"name": "h200", "flops": float(1 / inv_f), "mem_bw": float(1 / inv_bw), "mem_bytes": 141e9,
               "mem_fraction": 0.85, "step_overhead_s": float(overhead), "prefill_floor_s": float(floor),
               "prefill_fixed_s": float(fixed), "tp_efficiency": 0.9, "allreduce_latency_s": 18e-6,
               "link_bw": 368e9, "xfer_latency_s": 0.1e-3, "xfer_per_layer_s": 2 * 17e-6, "pool_bw": 64e9}
    manifest = json.loads((run / "manifest.json").read_text())
    point0 = json.loads(next((dep / "len=128").glob("rep*/point.json")).read_text())
    s = manifest.get("settings", {})
    return {
        "schema": "pdsuite.emulator-fit/1",
        "source": {"gpu": "1x NVIDIA H200 (141 GB HBM3e)", "engine": "vLLM " + ", ".join(
                       sorted(set(point0.get("engine_versions", {}).values()))),
                   "model": "Llama-3.1-8B config, dummy weights (LOAD_FORMAT=dummy), bf16",
                   "settings": {"cuda_graphs": "on (vLLM default)", "prefix_caching": "on (vLLM default)",
                                "GPU_MEMORY_FRACTION": s.get("GPU_MEMORY_FRACTION"),
                                "MAX_MODEL_LEN": s.get("MAX_MODEL_LEN"), "VLLM_EXTRA_ARGS": s.get("VLLM_EXTRA_ARGS"),
                                "driver": point0.get("driver")},
                   "plan": "plans/one-gpu.yaml", "deployment": dep.name, "run_stamp": manifest.get("stamp"),
                   "date": "2026-12-02"},
        "method": "numpy.linalg.lstsq: ITL p50 vs decode bytes (slope 1/mem_bw, intercept step_overhead_s); "
                  "server TTFT p50 - step_overhead_s = prefill_fixed_s + max(prefill_floor_s, prefill FLOPs of the "
                  "tokens vLLM computed / flops), the emulator's cost model: floor on a 0.1 ms grid, the shortest "
                  "prompts on the floor, the rest by least squares weighted by 1/TTFT, smallest worst relative "
                  "error; other fields not fitted (h100 values, H200 memory size)",
        "inputs": {f"len={n}": pts[n] for n in LENGTHS},
        "batch_points": {p: point_stats(dep / p) for p in BATCH_POINTS if (dep / p).is_dir()},
        "profile": profile,
        "fitted": ["flops", "mem_bw", "step_overhead_s", "prefill_fixed_s", "prefill_floor_s"],
        "fit_check": {f"len={n}": {"server_ttft_s": pts[n]["server_ttft_p50_s"],
                                   "model_ttft_s": float(overhead + fixed + max(floor, f * inv_f)),
                                   "itl_s": pts[n]["itl_p50_s"], "model_itl_s": float(overhead + d * inv_bw)}
                      for n, f, d in zip(LENGTHS, flops, dec, strict=True)},
    }


def recorded_seeds(run: Path) -> dict[tuple[str, int], int]:
    """(point label, repetition) -> the load seed the recorded run used (its point.json)."""
    out = {}
    for f in _dep_dir(run, emulated=False).glob("*/rep*/point.json"):
        d = json.loads(f.read_text())
        out[(d["point"], int(d["repetition"]))] = int(d["workload"]["seed"])
    return out


def replay(real: Path, out: Path) -> int:
    """`pdsuite run plans/one-gpu.yaml --backend emu` of the recorded points with the recorded run's load seeds, so
    the emulated engine gets the very prompts the real one got (and the same prefix-cache hits: runs made before
    the load generator seeded every point separately shared prompt heads between points)."""
    import suite.plan
    from suite import cli

    seeds = recorded_seeds(real)
    own = suite.plan.repetition_spec

    def recorded(spec: dict, rep: int, point: str = "") -> dict:
        seed = seeds.get((point, rep))
        return own(spec, rep, point) if seed is None else spec | {"seed": seed}

    suite.plan.repetition_spec = recorded  # the runner imports it at call time
    points = [a for p in [f"len={n}" for n in LENGTHS] + list(BATCH_POINTS) for a in ("--point", p)]
    sys.argv = ["pdsuite", "run", "plans/one-gpu.yaml", "--backend", "emu", "--driver", "host",
                "--deployment", REAL_DEP, *points, "--out", str(out)]
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def compare(real: Path, emu: Path) -> dict:
    r_dep, e_dep = _dep_dir(real, emulated=False), _dep_dir(emu, emulated=True)
    rows = []
    for label in [f"len={n}" for n in LENGTHS] + list(BATCH_POINTS):
        if not (r_dep / label).is_dir() or not (e_dep / label).is_dir():
            continue
        r, e = point_stats(r_dep / label), point_stats(e_dep / label)
        row = {"point": label}
        for k in ("ttft_p50_s", "itl_p50_s", "out_tok_per_s"):
            if r[k] and e[k]:
                row[k] = {"real": r[k], "emulated": e[k], "rel_err": e[k] / r[k] - 1}
        row["cached_per_request"] = {"real": r["cached_per_request"], "emulated": e["cached_per_request"]}
        # same prompts, same prefix-cache hits: otherwise the two engines did different work (not comparable)
        row["same_work"] = abs(r["cached_per_request"] - e["cached_per_request"]) < 16
        row["target"] = label.startswith("len=")  # the 10% targets: TTFT and ITL p50 of the length sweep
        rows.append(row)
    targets = [r for r in rows if r["target"]]
    ok = all(r["same_work"] and all(k in r and abs(r[k]["rel_err"]) <= TOLERANCE for k in ("ttft_p50_s", "itl_p50_s"))
             for r in targets)
    return {"schema": "pdsuite.emulator-vs-real/1", "real": r_dep.name, "emulated": e_dep.name,
            "tolerance": TOLERANCE, "all_within_tolerance": ok, "points": rows}


def table(cmp: dict) -> str:
    lines = ["| point | TTFT p50 real ms | TTFT p50 emulated ms | err | ITL p50 real ms | ITL p50 emulated ms | err |",
             "|---|---|---|---|---|---|---|"]
    def cells(v: dict | None, digits: int) -> str:
        if not v:
            return "- | - | -"
        return f"{v['real'] * 1e3:.{digits}f} | {v['emulated'] * 1e3:.{digits}f} | {v['rel_err']:+.1%}"

    for r in cmp["points"]:
        lines.append(f"| {r['point']} | {cells(r.get('ttft_p50_s'), 1)} | {cells(r.get('itl_p50_s'), 2)} |")
    return "\n".join(lines)


def figure(cmp: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in cmp["points"] if r["point"].startswith("len=")]
    x = [int(r["point"].split("=")[1]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, ax, unit in (("ttft_p50_s", a, "TTFT p50 (ms)"), ("itl_p50_s", b, "ITL p50 (ms)")):
        ax.plot(x, [r[key]["real"] * 1e3 for r in rows], "o-", label="real: vLLM 0.26.0, 1x H200")
        ax.plot(x, [r[key]["emulated"] * 1e3 for r in rows], "s--", label="EMULATED: pdsuite emulate, h200 profile")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("input tokens (one request at a time, 32 output tokens)")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_title("TTFT vs input length")
    b.set_title("inter-token latency")
    fig.suptitle("Llama-3.1-8B shape, plans/one-gpu.yaml co-located: real run vs emulated replay")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("results", type=Path)
    f.add_argument("--out", type=Path, default=Path("docs/data/emulator-h200-fit.json"))
    rp = sub.add_parser("replay")
    rp.add_argument("real", type=Path)
    rp.add_argument("--out", type=Path, default=Path("results"))
    c = sub.add_parser("compare")
    c.add_argument("real", type=Path)
    c.add_argument("emu", type=Path)
    c.add_argument("--json", type=Path, default=Path("docs/data/emulator-h200-vs-real.json"))
    c.add_argument("--figure", type=Path, default=Path("docs/figures/emulator-h200-vs-real.png"))
    a = ap.parse_args()
    for p in {"fit": [getattr(a, "results", None)], "replay": [getattr(a, "real", None)]}.get(
            a.cmd, [getattr(a, "real", None), getattr(a, "emu", None)]):
        if not (p / "manifest.json").is_file():
            print(f"emulator_calibration: error: {p} is not a run folder (no manifest.json)", file=sys.stderr)
            return 2
    if a.cmd == "fit":
        out = fit(a.results)
        a.out.write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out["profile"], indent=1))
        for k, v in out["fit_check"].items():
            print(f"{k}: TTFT {v['server_ttft_s'] * 1e3:.1f} -> {v['model_ttft_s'] * 1e3:.1f} ms, "
                  f"ITL {v['itl_s'] * 1e3:.2f} -> {v['model_itl_s'] * 1e3:.2f} ms")
        return 0
    if a.cmd == "replay":
        return replay(a.real, a.out)
    cmp = compare(a.real, a.emu)
    a.json.write_text(json.dumps(cmp, indent=1) + "\n")
    figure(cmp, a.figure)
    print(table(cmp))
    for r in cmp["points"]:
        if not r["same_work"]:
            c = r["cached_per_request"]
            print(f"{r['point']}: NOT COMPARABLE - prefix-cache hits per request real {c['real']:.0f}, emulated "
                  f"{c['emulated']:.0f} (different prompts: replay with the `replay` command)")
    print("all TTFT/ITL p50 of the length sweep within 10%:", cmp["all_within_tolerance"])
    return 0 if cmp["all_within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
