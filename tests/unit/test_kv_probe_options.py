"""kvprobe's NCCL knobs without GPUs: --nccl-env parsing, what NCCL's INFO log says it chose, the copy peak taken
over methods, option checks that run before torch is touched, and the committed H100 sweep's consistency."""

import json
from pathlib import Path

import pytest

from suite.kvprofile import probe
from suite.kvprofile.analysis import summarize
from suite.kvprofile.probe import ProbeError, ProbeOptions, _nccl_report, best_copy, parse_env, run_probe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SWEEP = Path(__file__).resolve().parents[2] / "docs/data/kvprobe-h100x2-nccl-sweep.json"

# shaped like NCCL 2.28's INFO lines (rank 0 of two, send/recv on connIndex 1, ring on 0)
LOG = """\
host:1:1 [0] NCCL INFO NCCL version 2.28.9+cuda13.0
host:1:1 [0] NCCL INFO P2P Chunksize set to 131072
host:1:9 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM
host:1:9 [0] NCCL INFO Channel 00/1 : 0[0] -> 1[1] via P2P/CUMEM/CE
host:1:9 [0] NCCL INFO Channel 01/1 : 0[0] -> 1[1] via P2P/CUMEM/CE
host:1:9 [0] NCCL INFO Channel 01/1 : 0[0] -> 1[1] via P2P/CUMEM/CE
host:1:1 [0] NCCL INFO rank 0 - IPC reuse buffer 0x7f size 4 (baseAddr 0x7f size 8 numSegments 1) to peer 1
host:1:1 [0] NCCL WARN something odd
"""


def test_parse_env_takes_nccl_names_and_keeps_equals_in_values():
    assert parse_env(["NCCL_P2P_NVL_CHUNKSIZE=2097152", " TORCH_NCCL_X = a=b"]) == (
        ("NCCL_P2P_NVL_CHUNKSIZE", "2097152"), ("TORCH_NCCL_X", "a=b"))
    assert parse_env(None) == ()


@pytest.mark.parametrize("bad", ["NCCL_PROTO", "LD_PRELOAD=x", "nccl_proto=Simple", "NCCL BAD=1", "=1"])
def test_parse_env_rejects_what_is_not_an_nccl_setting(bad):
    with pytest.raises(ProbeError, match="--nccl-env wants NAME=VALUE"):
        parse_env([bad])


def test_nccl_report_reads_transport_channels_chunk_and_registrations():
    r = _nccl_report(LOG)
    assert r["version"] == "2.28.9+cuda13.0"
    assert r["p2p_transports"] == ["P2P/CUMEM/CE"]  # the ring's connIndex 0 line is not P2P send/recv
    assert r["p2p_channels"] == 2  # channel 01 logged twice counts once
    assert r["p2p_chunksize"] == 131072
    assert r["buffer_registrations"] == 1
    assert r["warnings"] == ["host:1:1 [0] NCCL WARN something odd"]
    assert _nccl_report("")["p2p_channels"] == 0


def test_best_copy_takes_the_fastest_method_per_size_and_skips_unrun_ones():
    rows = [{"bytes": 2, "method": "copy_", "gbps": 5.0}, {"bytes": 1, "method": "copy_", "gbps": 3.0},
            {"bytes": 1, "method": "memcpy_peer_pull", "gbps": 4.0},
            {"bytes": 1, "method": "memcpy_peer_push", "skipped": "no libcudart"}]
    assert [(r["bytes"], r["method"]) for r in best_copy(rows)] == [(1, "memcpy_peer_pull"), (2, "copy_")]


@pytest.mark.parametrize("opts, msg", [
    (ProbeOptions(stream_repeats=-1), "--stream-repeats"),
    (ProbeOptions(copy_methods=("dma",)), "--copy-methods"),
    (ProbeOptions(copy_methods=()), "--copy-methods"),
    (ProbeOptions(nccl_env=(("PATH", "/x"),)), "--nccl-env"),
])
def test_bad_options_fail_before_torch_is_needed(monkeypatch, opts, msg):
    monkeypatch.setattr(probe, "_torch", lambda: pytest.fail("torch touched before the options were checked"))
    with pytest.raises(ProbeError, match=msg):
        run_probe(opts)


def test_committed_sweep_is_consistent_with_its_rows():
    sweep = json.loads(SWEEP.read_text())
    names = [v["name"] for v in sweep["variants"]]
    assert len(names) == len(set(names)) and "base" in names
    for v in sweep["variants"]:
        again = summarize({"copy": v["copy"], "p2p": v["p2p"]})
        assert again["copy_peak_gbps"] == pytest.approx(v["summary"]["copy_peak_gbps"])
        assert again["coalesced_big_min_ratio_peak"] == pytest.approx(v["summary"]["coalesced_big_min_ratio_peak"])
        assert again["coalesced_big_meets_target"] == v["summary"]["coalesced_big_meets_target"]
        # the copy peak is the best method per size, as the probe records it
        assert best_copy(v["copy_all"]) == v["copy"]
        # NCCL's own log confirms the settings took effect
        rep, env = v["nccl_report"], v["nccl_env"]
        assert rep["p2p_chunksize"] == int(env.get("NCCL_P2P_NVL_CHUNKSIZE", 524288))
        assert rep["p2p_channels"] == {"64": 64, "16": 16}.get(env.get("NCCL_MIN_P2P_NCHANNELS")
                                                               or env.get("NCCL_MAX_P2P_NCHANNELS"), 32)
        assert rep["p2p_transports"][0].endswith("/CE") == (env.get("NCCL_P2P_USE_CUDA_MEMCPY") == "1")
        assert (rep["buffer_registrations"] > 0) == ("TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK" in env)
        for row in v["p2p_stream"]:
            assert row["ops"] == 4 and row["gbps"] == pytest.approx(row["bytes"] / row["median_ms"] / 1e6)


# ---- NIXL part (no nixl here: the two-process path runs against a stand-in in tests/integration) ---------------
UCX_LOG = """\
[1.0] [h:7:0]   | ucp_context_0 intra-node cfg#0 | active message by ucp_am_send* from host memory |
[1.0] [h:7:0]   |                          0..inf | copy-in               | tcp/lo           |
[1.0] [h:7:0]   +--------------------------------+-----------------------+------------------+
[1.0] [h:7:0]   | ucp_context_0 intra-node cfg#2 | remote memory read by ucp_get* into cuda/GPU1 from cuda/GPU0 |
[1.0] [h:7:0]   +--------------------------------+-----------------------+------------------+
[1.0] [h:7:0]   |                          0..8K | copy-out              | cuda_copy/cuda   |
[1.0] [h:7:0]   |                        8K..inf | zero-copy             | 50% on cuda_ipc/cuda and 50% on tcp/eth0 |
[1.0] [h:7:0]   +--------------------------------+-----------------------+------------------+
"""


def test_nixl_part_is_skipped_cleanly_without_nixl(monkeypatch):
    from suite.kvprofile import nixlprobe
    from suite.modelcfg import load

    monkeypatch.setattr(nixlprobe.importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(nixlprobe, "_run", lambda *a: pytest.fail("no processes without nixl"))
    out = nixlprobe.nixl_probe(None, load("tiny-llama"), ProbeOptions(), "cpu")
    assert out == {"available": False, "note": "skipped: nixl not importable (no module named 'nixl')"}


def test_nixl_is_absent_on_this_box_and_the_probe_says_so():
    import importlib.util

    from suite.kvprofile.nixlprobe import nixl_probe
    from suite.modelcfg import load

    if importlib.util.find_spec("nixl") is not None:
        pytest.skip("nixl is installed here")
    out = nixl_probe(None, load("tiny-llama"), ProbeOptions(), "cpu")
    assert out["available"] is False and out["note"].startswith("skipped: nixl not importable")


def test_ucx_proto_info_gives_the_read_transports_only():
    from suite.kvprofile.nixlprobe import ucx_get_protocols

    lines, tls = ucx_get_protocols(UCX_LOG)
    assert tls == ["cuda_copy/cuda", "cuda_ipc/cuda", "tcp/eth0"]  # not the AM table's tcp/lo
    assert lines[0].startswith("| ucp_context_0 intra-node cfg#2 | remote memory read")
    assert ucx_get_protocols("no tables here\n") == ([], [])


def test_fallback_warning_for_big_slow_points_on_gpus_only():
    from suite.kvprofile.attribution import TCP_REMEDY
    from suite.kvprofile.nixlprobe import fallback_warning

    rows = [{"pattern": "coalesced", "tokens": 256, "bytes": 33_554_432, "gbps": 0.3},  # small: not judged
            {"pattern": "coalesced", "tokens": 512, "bytes": 67_108_864, "gbps": 0.41},
            {"pattern": "coalesced", "tokens": 2048, "bytes": 268_435_456, "gbps": 19.9},
            {"pattern": "coalesced", "tokens": 32768, "bytes": 4_294_967_296, "skipped": "x"}]
    w = fallback_warning(rows, "cuda", ["tcp/lo"])
    assert w.startswith("UCX fell back to TCP (UCX transports: tcp/lo): 2 point(s)") and "worst 0.41 GB/s" in w
    assert "run P and D with ipc/pid host, see docs/kv-transfer.md" in w and TCP_REMEDY in w
    assert fallback_warning(rows, "cpu") is None
    assert fallback_warning([{**r, "gbps": 20.0} for r in rows if "gbps" in r], "cuda") is None
    assert fallback_warning(rows, "cuda", ["cuda_ipc/cuda"]).startswith("NIXL path is slow")


def _result_with_nixl(nixl: dict) -> dict:
    copy = [{"mib": 256, "bytes": 256 * 2**20, "median_ms": 0.7, "p99_ms": 0.8, "gbps": 380.0, "method": "copy_"}]
    r = {"created": "t", "environment": {"gpus": ["H100", "H100"], "torch": "2", "nccl": "2.28", "cpu_count": 2},
         "model": {"model": "llama-3.1-8b", "bytes_per_token": 131_072}, "backend": "nccl", "device": "cuda",
         "copy": copy, "copy_all": copy, "ack_subtracted_ms": 0.008, "p2p": [], "nixl": nixl}
    r["summary"] = summarize(r)
    return r


def test_render_prints_the_nixl_table_ratios_and_warning():
    row = {"pattern": "coalesced", "tokens": 2048, "bytes": 268_435_456, "ops": 1, "direction": "READ",
           "n": 30, "median_ms": 268_435_456 / 361e6, "p99_ms": 1.0, "mean_ms": 0.75, "min_ms": 0.7, "gbps": 361.0,
           "data_ok": True, "truncated": False}
    nixl = {"available": True, "version": "1.5.1", "direction": "READ", "note": "nixl 1.5.1, UCX backend",
            "ucx_transports": ["cuda_ipc/cuda"], "warning": "UCX fell back to TCP: ...",
            "results": [row, {**row, "tokens": 32768, "bytes": 4_294_967_296, "truncated": True, "n": 3,
                              "data_ok": False}, {"pattern": "per_block", "tokens": 4096, "bytes": 1, "ops": 256,
                                                  "skipped": "256 descriptors > --max-ops 100"}]}
    text = probe.render(_result_with_nixl(nixl))
    assert "NIXL: nixl 1.5.1, UCX backend" in text and "UCX transports for the reads: cuda_ipc/cuda" in text
    line = next(ln for ln in text.splitlines() if ln.split()[:2] == ["coalesced", "2048"])
    assert "361.0" in line and "95.0%" in line and line.rstrip().endswith("ok")  # 361 / 380 same size and peak
    assert "WRONG" in text and "truncated: 3 samples" in text and "256 descriptors > --max-ops 100" in text
    assert "WARNING: UCX fell back to TCP" in text
    # the 4.3 GB point read wrong bytes: the target is missed whatever its speed
    assert "NIXL coalesced >= 256 MB: worst 95.0% of copy peak, 95.0% of the same-size copy (MISSES" in text


def test_render_shows_a_skipped_nixl_part():
    text = probe.render(_result_with_nixl({"available": False, "note": "skipped: nixl not importable (x)"}))
    assert "NIXL: skipped: nixl not importable (x)" in text and "NIXL coalesced" not in text


@pytest.mark.parametrize(("log", "row"), [("auto", "software emulation | tcp/lo"),
                                          ("get-zcopy-y", "zero-copy   | cuda_ipc/cuda")])
def test_ucx_read_transport_of_the_real_one_gpu_runs(log, row):
    """nixl 1.5.1's UCX on one H200 (D's log; the lines bench/ucx_one_gpu.py keeps: those naming a transport):
    with UCX's default the READ of GPU memory is 'software emulation' over tcp/lo; with
    UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y it is cuda_ipc zero-copy."""
    from suite.kvprofile.nixlprobe import ucx_get_protocols

    text = (FIXTURES / "vllm-0.26-h200" / f"ucx-proto-info-one-gpu-{log}.log").read_text()
    lines, tls = ucx_get_protocols(text)
    assert lines[0].startswith("| remote memory read by ucp_get*(multi) into cuda/GPU0 from cuda/dev[1]")
    assert row in lines[1]
    assert ("cuda_ipc/cuda" in tls) == (log == "get-zcopy-y")
