"""`python -m suite.kvprofile` end to end on CPU: two gloo processes on loopback run the same code as NCCL on GPUs.

Needs torch (the `probe` extra); skips only when torch is absent.
"""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from suite.kvprofile.analysis import op_sizes
from suite.modelcfg import load

pytestmark = pytest.mark.integration


def _probe(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite.kvprofile", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_gloo_probe_moves_the_kv(tmp_path):
    out = tmp_path / "probe.json"
    r = _probe("--device", "cpu", "--model", "tiny-llama", "--tokens", "128,300", "--iters", "3", "--warmup", "1",
               "--copy-mb", "1", "--block-tokens", "64", "--no-nixl", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert (res["backend"], res["timer"], res["schema"]) == ("gloo", "perf_counter", "pdsuite.kvprobe/1")
    m = load("tiny-llama")
    got = {(p["pattern"], p["tokens"]): p for p in res["p2p"]}
    assert set(got) == {(p, t) for p in ("coalesced", "per_layer", "per_block") for t in (128, 300)}
    for (pattern, tokens), row in got.items():
        sizes = op_sizes(m, tokens, pattern, 64)
        assert row["ops"] == len(sizes) and row["bytes"] == tokens * 2048 == sum(sizes)
        assert row["n"] == 3 and 0 < row["median_ms"] <= row["p99_ms"]
    assert got[("per_block", 300)]["ops"] == 5  # 4 full blocks of 64 + a partial one
    assert res["copy"][0]["bytes"] == 2**20 and res["copy"][0]["gbps"] > 0
    assert "coalesced" in r.stdout and "per_layer" in r.stdout  # the table


def test_probe_errors_are_one_line():
    import torch

    if torch.cuda.device_count() < 2:  # a CPU box: asking for CUDA must fail clearly
        r = _probe("--device", "cuda", "--model", "tiny-llama", timeout=120)
        assert r.returncode == 2
        assert r.stderr.strip().startswith("pdsuite: error:") and "2 visible GPUs" in r.stderr
    r = _probe("--device", "cpu", "--model", "tiny-llama", "--patterns", "zigzag", timeout=120)
    assert r.returncode == 2 and "unknown pattern 'zigzag'" in r.stderr


def test_gloo_probe_stream_repeats_and_nccl_env(tmp_path):
    out = tmp_path / "probe.json"
    r = _probe("--device", "cpu", "--model", "tiny-llama", "--tokens", "128", "--patterns", "coalesced", "--iters", "2",
               "--warmup", "0", "--copy-mb", "1", "--no-nixl", "--stream-repeats", "3",
               "--nccl-env", "NCCL_P2P_NVL_CHUNKSIZE=131072", "--copy-methods", "copy_,memcpy_peer_pull",
               "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["nccl_env"] == {"NCCL_P2P_NVL_CHUNKSIZE": "131072"}
    [s] = res["p2p_stream"]
    assert (s["tokens"], s["bytes"], s["ops"], s["n"]) == (128, 128 * 2048, 3, 2) and s["median_ms"] > 0
    assert [c["method"] for c in res["copy_all"]] == ["copy_"]  # peer memcpy means nothing on CPU
    assert "back to back" in r.stdout
    bad = _probe("--device", "cpu", "--model", "tiny-llama", "--nccl-env", "LD_PRELOAD=x", timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("pdsuite: error: --nccl-env")
