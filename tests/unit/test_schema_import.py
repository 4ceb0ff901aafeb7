import json

import numpy as np
import pytest

from suite.report.importers import import_vllm_bench
from suite.report.load import load


def _bench(tmp_path, detailed=True):
    d = {"date": "20261127-120000", "backend": "vllm", "model_id": "m", "request_rate": 4.0, "max_concurrency": None,
         "duration": 10.0, "completed": 2, "failed": 1, "total_input_tokens": 300, "total_output_tokens": 6,
         "mean_ttft_ms": 150.0}
    if detailed:
        d |= {"input_lens": [100, 200, 50], "output_lens": [3, 3, 0], "ttfts": [0.1, 0.2, 0.0],
              "itls": [[0.01, 0.02], [0.03, 0.01], []], "errors": ["", "", "HTTP 500"]}
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(d))
    return p


def test_import_vllm_bench_serve(tmp_path):
    pr, table = import_vllm_bench(_bench(tmp_path))
    assert pr.point == "rate=4" and pr.framework == "vllm" and not pr.emulated
    first = np.array(table.column("first_token_s").to_pylist(), dtype=float)
    done = np.array(table.column("done_s").to_pylist(), dtype=float)
    assert first[:2].tolist() == [0.1, 0.2] and np.isnan(first[2])
    assert done[:2] == pytest.approx([0.13, 0.24])  # ttft + sum of itls
    assert table.column("status").to_pylist() == ["ok", "ok", "error"]
    ds = load([_bench(tmp_path)])
    (itl,) = ds.itl.values()  # one repetition, one class: gaps as a histogram sample (0.25% resolution)
    assert len(ds.requests) == 3 and [itl[i] for i in range(len(itl))] == pytest.approx([0.01, 0.01, 0.02, 0.03],
                                                                                          rel=3e-3)


def test_import_refuses_summary_only(tmp_path):
    with pytest.raises(ValueError, match="save-detailed"):
        import_vllm_bench(_bench(tmp_path, detailed=False))
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a `vllm bench serve`"):
        import_vllm_bench(bad)
