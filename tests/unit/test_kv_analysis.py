"""Probe arithmetic without torch: op layouts, timing statistics, the result summary and the link fit."""

import pytest

from suite.kvprofile.analysis import fit_link, op_sizes, summarize, timing_stats
from suite.modelcfg import load


def test_op_layouts_cover_the_whole_kv():
    m = load("llama-3.1-8b")
    assert op_sizes(m, 2048, "coalesced") == [2048 * 131_072]
    per_layer = op_sizes(m, 2048, "per_layer")
    assert len(per_layer) == 64 and sum(per_layer) == 2048 * 131_072  # 32 layers x K/V
    blocks = op_sizes(m, 1000, "per_block", block_tokens=16)
    assert len(blocks) == 63 and blocks[-1] == 8 * 131_072 and sum(blocks) == 1000 * 131_072
    mla = op_sizes(load("deepseek-v3"), 128, "per_layer")
    assert len(mla) == 61 and sum(mla) == 128 * 70_272  # one latent tensor per layer
    with pytest.raises(ValueError, match="unknown pattern"):
        op_sizes(m, 1, "zigzag")


def test_timing_stats():
    st = timing_stats([0.001] * 99 + [0.1])
    assert st["median_ms"] == pytest.approx(1.0) and st["min_ms"] == pytest.approx(1.0)
    assert 1.0 < st["p99_ms"] < 100.0 and st["n"] == 100
    assert timing_stats([0.002])["p99_ms"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        timing_stats([])


def _row(pattern, tokens, ms, ops=1, per_token=131_072):
    b = tokens * per_token
    return {"pattern": pattern, "tokens": tokens, "bytes": b, "ops": ops, "median_ms": ms, "gbps": b / ms / 1e6}


def test_fit_recovers_latency_and_bandwidth():
    rows = [_row("coalesced", t, 0.02 + t * 131_072 / 400e9 * 1e3) for t in (128, 1024, 8192, 32768)]
    fit = fit_link(rows)
    assert fit["latency_us"] == pytest.approx(20, rel=1e-6) and fit["bandwidth_gbps"] == pytest.approx(400)
    assert fit_link(rows[:1]) is None


def test_summary_target_and_per_layer_overhead():
    copy = [{"mib": 1024, "bytes": 2**30, "median_ms": 2.7, "gbps": 400.0}]
    p2p = [_row("coalesced", 2048, 268_435_456 / 390e9 * 1e3), _row("coalesced", 32768, 4294967296 / 370e9 * 1e3),
           _row("per_layer", 2048, 268_435_456 / 390e9 * 1e3 + 1.26, ops=64), {"pattern": "per_block",
                                                                               "tokens": 2048, "skipped": "x"}]
    s = summarize({"copy": copy, "p2p": p2p})
    assert s["copy_peak_gbps"] == 400.0
    assert s["coalesced_big_min_ratio_peak"] == pytest.approx(370 / 400)
    assert s["coalesced_big_meets_target"] is False  # 92.5% < 95%
    (ov,) = s["overhead_vs_coalesced"]
    assert ov["extra_ms"] == pytest.approx(1.26) and ov["extra_us_per_op"] == pytest.approx(20.0)
    ok = summarize({"copy": copy, "p2p": [_row("coalesced", 32768, 4294967296 / 390e9 * 1e3)]})
    assert ok["coalesced_big_meets_target"] is True
