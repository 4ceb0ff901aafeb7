"""Client TTFT against the engine's own TTFT for the same requests, from a results folder of `pdsuite run`.

The engine's figure is vLLM's per-request span attribute gen_ai.latency.time_to_first_token (the same quantity
vllm:time_to_first_token_seconds observes, per request instead of bucketed), joined to the client records by
request id (suite/analysis/spans.py). Co-located deployments only: behind a P/D router no single engine saw the
whole TTFT.

    python bench/client_vs_engine_ttft.py RESULTS_DIR [--points streams=1 streams=64] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from suite.analysis.spans import join, point_spans


def compare(point_dir: Path) -> dict:
    df = pd.read_parquet(point_dir / "requests.parquet")
    ok = df[df["status"] == "ok"]
    records = ok.to_dict("records")
    joined = join(records, point_spans(point_dir))
    pairs = [(r["ttft_s"], joined.by_request[r["request_id"]][0].ttft_s) for r in records
             if len(joined.by_request.get(r["request_id"], ())) == 1 and r["ttft_s"] == r["ttft_s"]]
    if not pairs:
        return {"point": point_dir.parent.name, "rep": point_dir.name, "matched": 0, "ok": len(ok)}
    client, engine = map(np.asarray, zip(*pairs, strict=True))
    diff = (client - engine) * 1e3
    return {"point": point_dir.parent.name, "rep": point_dir.name, "ok": len(ok), "matched": len(pairs),
            "client_p50_ms": float(np.median(client) * 1e3), "engine_p50_ms": float(np.median(engine) * 1e3),
            "diff_p50_ms": float(np.median(diff)), "diff_p90_ms": float(np.percentile(diff, 90)),
            "diff_min_ms": float(diff.min()), "diff_max_ms": float(diff.max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--deployment", default="vllm-colocated-1gpu")
    ap.add_argument("--points", nargs="*", default=["streams=1", "streams=64"])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = [compare(rep) for p in a.points for rep in sorted((a.results / a.deployment / p).glob("rep*"))]
    for r in rows:
        print(json.dumps(r))
    if a.out:
        a.out.write_text(json.dumps({"deployment": a.deployment, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
