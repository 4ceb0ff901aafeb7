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


def _nixl(pattern, tokens, gbps, ops=1, per_token=131_072, **extra):
    b = tokens * per_token
    return {"pattern": pattern, "tokens": tokens, "bytes": b, "ops": ops, "median_ms": b / gbps / 1e6, "gbps": gbps,
            "direction": "READ", "data_ok": True, "truncated": False, **extra}


COPY = [{"mib": 64, "bytes": 64 * 2**20, "gbps": 300.0}, {"mib": 256, "bytes": 256 * 2**20, "gbps": 380.0},
        {"mib": 4096, "bytes": 4096 * 2**20, "gbps": 400.0}]


def test_summary_nixl_coalesced_vs_copy_same_size_and_peak():
    rows = [_nixl("coalesced", 256, 120.0), _nixl("coalesced", 2048, 280.0), _nixl("coalesced", 32768, 390.0),
            _nixl("per_layer", 2048, 100.0, ops=64), {"pattern": "per_block", "tokens": 32768, "skipped": "x"}]
    s = summarize({"copy": COPY, "p2p": [], "nixl": {"available": True, "results": rows}})
    vs = {v["tokens"]: v for v in s["nixl_coalesced_vs_copy"]}
    assert list(vs) == [256, 2048, 32768]  # coalesced only, by size
    assert vs[256]["copy_gbps_same_size"] == 300.0 and vs[256]["ratio_same_size"] == pytest.approx(120 / 300)
    assert vs[2048]["copy_gbps_same_size"] == 380.0 and vs[2048]["ratio_same_size"] == pytest.approx(280 / 380)
    assert vs[32768]["ratio_same_size"] == pytest.approx(390 / 400)
    assert vs[2048]["ratio_peak"] == pytest.approx(280 / 400)
    # >= 256 MB: 268 MB and 4.3 GB; the 33.5 MB point does not count
    assert s["nixl_big_min_ratio_peak"] == pytest.approx(0.70)
    assert s["nixl_big_min_ratio_same_size"] == pytest.approx(280 / 380)
    assert s["nixl_big_meets_target"] is False
    assert s["link_fit_nixl_coalesced"]["points"] == 3
    # NCCL's fields are untouched by NIXL rows
    assert s["coalesced_vs_copy"] == [] and s["coalesced_big_meets_target"] is None


def test_summary_nixl_target_met_unless_bytes_were_wrong():
    good = [_nixl("coalesced", 256, 50.0), _nixl("coalesced", 2048, 381.0), _nixl("coalesced", 32768, 390.0)]
    s = summarize({"copy": COPY, "nixl": {"results": good}})
    assert s["nixl_big_meets_target"] is True and s["nixl_big_min_ratio_peak"] == pytest.approx(381 / 400)
    wrong = [*good[:2], _nixl("coalesced", 32768, 390.0, data_ok=False)]
    s = summarize({"copy": COPY, "nixl": {"results": wrong}})
    assert s["nixl_big_meets_target"] is False
    assert [v["data_ok"] for v in s["nixl_coalesced_vs_copy"]] == [True, True, False]


def test_summary_without_nixl_has_empty_nixl_fields():
    for nixl in (None, {"available": False, "note": "skipped: nixl not importable"}):
        s = summarize({"copy": COPY, "p2p": [], "nixl": nixl})
        assert s["nixl_coalesced_vs_copy"] == [] and s["link_fit_nixl_coalesced"] is None
        assert s["nixl_big_min_ratio_peak"] is None and s["nixl_big_meets_target"] is None
