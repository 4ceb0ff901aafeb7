"""A/B: where should the Locust master sit on a 2-core box? Same server (core 0) and worker (core 1) as
bench/client_fidelity.py; the master on core 0 (the server's) or core 1 (the worker's), alternated twice.

    python bench/fidelity_master_ab.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import client_fidelity as cf

from suite.load.cluster import LoadCluster
from suite.load.testserver import running


def main() -> None:
    os.sched_setaffinity(0, {1})
    tmp = Path(tempfile.mkdtemp(prefix="fidelity-ab-"))
    stamps_path = tmp / "stamps.jsonl"
    runs = []
    with running(ttft_ms=20, itl_ms=10, stamps=str(stamps_path), taskset="0") as url:
        for rnd in range(2):
            for cpus in ({0}, {1}):
                with LoadCluster(url, "bench", 1, master_cpus=cpus, worker_cpus={1}) as cf.CLUSTER:
                    for c in (64, 256):
                        label = f"c={c} master on core {min(cpus)} round {rnd}"
                        arrival = {"kind": "concurrency", "concurrency": c}
                        p = cf.point(url, {}, label, arrival, 300 + rnd * 10 + c, tmp, num_requests=c * 4)
                        runs.append((p, os.getloadavg()[0]))
    time.sleep(0.5)
    stamps = {s["id"]: s for s in map(orjson.loads, stamps_path.read_bytes().splitlines())}
    for p, load1 in runs:
        r = cf.analyse(p, stamps)
        print(f"{r['point']}: load1 {load1:.2f}, overhead p50 {r['overhead_ms_p50']} ms, p99 {r['overhead_ms_p99']} ms,"
              f" {r['tokens_per_s']} tokens/s, {r['achieved_rps']} req/s")


if __name__ == "__main__":
    main()
