"""Scale benchmark for `pdsuite report`: N synthetic request records -> time and peak memory of the report.

    python bench/report_scale.py [--requests 1000000] [--out-tokens 8] [--bootstrap 1000]

Generates a synthetic (emulated-labelled) results tree in a temp dir, then runs `pdsuite report` on it in a child
process and reports its wall time and peak RSS (child ru_maxrss). Target (docs/report.md): < 15 s, < 2 GB, 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from suite.report.synth import make_tree

DEPLOYMENTS = (("vllm", "disagg"), ("vllm", "colocated"), ("vllm", "tp2"), ("vllm", "dp2"))
RATES = (2.0, 4.0, 8.0)
REPS = 3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--out-tokens", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--keep", default="", help="keep the tree and report under this folder")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="pdsuite-scale-"))
    per_rep = a.requests // (len(DEPLOYMENTS) * len(RATES) * REPS)
    t = time.monotonic()
    tree = make_tree(root / "results" / "scale", deployments=DEPLOYMENTS, rates=RATES, reps=REPS,
                     n_per_rep=per_rep, out_tokens=a.out_tokens, seed=7)
    gen_s = time.monotonic() - t
    cmd = [sys.executable, "-m", "suite.cli", "report", str(tree), "--name", "scale", "--out", str(root / "reports"),
           "--bootstrap", str(a.bootstrap)]
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_mb, cpu_s = ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    total = per_rep * len(DEPLOYMENTS) * len(RATES) * REPS
    print(f"records: {total} ({a.out_tokens} output tokens each, {total * (a.out_tokens - 1)} ITL gaps), "
          f"{len(DEPLOYMENTS) * len(RATES) * REPS} repetitions; generated in {gen_s:.1f} s")
    print(f"report: {wall:.1f} s wall, {cpu_s:.1f} s CPU (user+sys), peak RSS {rss_mb:.0f} MB; "
          f"bootstrap B={a.bootstrap}")
    print(f"load average before/after: {load0} / {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(the 2 cores are shared: wall time depends on it)")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs visible, python {platform.python_version()}")
    print(proc.stdout.strip().splitlines()[-1])
    if not a.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    ok = wall < 15 and rss_mb < 2048
    print("target < 15 s and < 2 GB:", "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
