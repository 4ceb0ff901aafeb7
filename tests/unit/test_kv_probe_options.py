"""kvprobe's NCCL knobs without GPUs: --nccl-env parsing, what NCCL's INFO log says it chose, the copy peak taken
over methods, option checks that run before torch is touched, and the committed H100 sweep's consistency."""

import json
from pathlib import Path

import pytest

from suite.kvprofile import probe
from suite.kvprofile.analysis import summarize
from suite.kvprofile.probe import ProbeError, ProbeOptions, _nccl_report, best_copy, parse_env, run_probe

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
