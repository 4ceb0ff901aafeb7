"""Per-request attribution of P/D TTFT, and the crossover analysis."""

import json
from pathlib import Path

import pytest

from suite.kvprofile.attribution import HistDelta, RoleDeltas, attribute
from suite.kvprofile.crossover import SPEC_LINKS, Link, PrefillCurve, crossover, kv_section_data, transfer_s
from suite.modelcfg import load

M = load("llama-3.1-8b")
PROBE = Path(__file__).resolve().parents[2] / "docs/data/kvprobe-h100x2-llama-3.1-8b.json"


def _pd(xfer_s, xfer_bytes, n=10, side="decode"):
    hist = {"kv_transfer_s": HistDelta(n, xfer_s * n), "kv_transfer_bytes": HistDelta(n, xfer_bytes * n)}
    p = RoleDeltas("prefill", {"queue_s": HistDelta(n, 0.002 * n), "prefill_s": HistDelta(n, 0.060 * n),
                               **(hist if side == "prefill" else {})})
    d = RoleDeltas("decode", {"itl_s": HistDelta(500, 500 * 0.007), **(hist if side == "decode" else {})})
    return p, d


def test_decomposition_and_bandwidth_over_nvlink():
    p, d = _pd(0.0008, 268e6)
    a = attribute(p, d, ttft_s=0.075, kv_bytes_per_token=131_072, prompt_tokens=2048)
    assert a.achieved_bps == pytest.approx(268e6 / 0.0008)
    c = a.components_s
    assert (c["queue_p"], c["prefill_p"], c["transfer"], c["first_decode"]) == pytest.approx((0.002, 0.06, 0.0008,
                                                                                              0.007))
    assert c["other"] == pytest.approx(0.075 - 0.0698)
    assert sum(a.shares.values()) == pytest.approx(1.0)
    assert a.warnings == []


def test_tcp_fallback_warns_with_remedy_from_either_role():
    for side in ("decode", "prefill"):  # vLLM records the transfer on D, SGLang on P
        p, d = _pd(0.25, 268e6, side=side)  # ~1 GB/s
        a = attribute(p, d, ttft_s=0.4)
        assert a.transfer_s == pytest.approx(0.25)
        (w,) = a.warnings
        assert "TCP fallback" in w and "ipc: host" in w and "UCX_TLS" in w


def test_pooled_transfers_are_summed_per_request_and_size_is_checked():
    p, d = _pd(0.0004, 67e6, n=20)  # two observations per request (e.g. pooled TP ranks)
    a = attribute(p, d, requests=10, kv_bytes_per_token=131_072, prompt_tokens=1024)
    assert a.transfer_s == pytest.approx(0.0008) and a.transfer_bytes == pytest.approx(134e6)
    assert a.warnings == []  # 134 MB for 1024 tokens is what the model expects
    b = attribute(*_pd(0.0008, 268e6), kv_bytes_per_token=131_072, prompt_tokens=512)  # 4x what 512 tokens need
    assert any("KV size model expects" in w for w in b.warnings)


def test_missing_metrics_warn():
    a = attribute(RoleDeltas("prefill"), RoleDeltas("decode"), ttft_s=0.1)
    assert a.transfer_s is None and a.achieved_bps is None and "no KV-transfer metrics" in a.warnings[0]


def test_crossover_directions():
    flat = PrefillCurve(lambda n: 0.030 + n * 20e-6, "test")  # 20 us/token, 30 ms floor
    fast = Link("fast", 400e9, 0.0, "test")
    slow = Link("slow", 1e9, 0.0, "test")  # 131 us/token > 20 us/token: transfer loses above some length
    assert crossover(M, flat, fast)["crossings"] == []
    assert not crossover(M, flat, fast)["transfer_exceeds_at_min"]
    c = crossover(M, flat, slow)
    (n,) = c["crossings"]
    assert transfer_s(slow, M, n) == pytest.approx(flat(n), rel=0.05)
    assert "above" in c["verdict"]
    assert crossover(M, flat, Link("laggy", 400e9, 1.0, "test"))["transfer_exceeds_at_min"]


def test_prefill_curve_interpolates_and_extrapolates_by_flops():
    pts = [(128, 0.016), (2048, 0.061), (8192, 0.258)]
    c = PrefillCurve.from_points(M, pts, "test")
    assert c(64) == 0.016 and c(2048) == pytest.approx(0.061)
    assert 0.061 < c(4096) < 0.258
    assert c(16384) == pytest.approx(0.258 * M.prefill_flops(16384) / M.prefill_flops(8192))


def test_section_data_from_the_measured_probe():
    probe = json.loads(PROBE.read_text())
    d = kv_section_data(M, probe)
    names = [ln["link"] for ln in d["links"]]
    assert names[0] == "NVLink (measured)" and names[1:] == [s.name for s in SPEC_LINKS]
    assert d["links"][0]["source"].startswith("measured: kvprobe")
    assert all(ln["source"].startswith("spec:") for ln in d["links"][1:])
    assert set(d["measured"]) == {"coalesced", "per_layer", "per_block"}
    assert len(d["crossover"]) == len(names) and d["prefill"]["source"].startswith("measured:")
    shares = d["ttft_share"][0]
    assert shares["NVLink (measured)"] < shares["25 Gb/s TCP"] < 1


def test_figures(tmp_path):
    pytest.importorskip("matplotlib")
    from suite.kvprofile.figures import plot_kv_section, plot_patterns

    probe = json.loads(PROBE.read_text())
    a = plot_patterns(probe, tmp_path / "p.png")
    b = plot_kv_section(kv_section_data(M, probe), tmp_path / "s.png")
    assert a.read_bytes()[:4] == b.read_bytes()[:4] == b"\x89PNG"


def test_queued_transfers_report_the_link_rate_over_the_point():
    """Under load a transfer's time includes its wait behind others (vLLM on one H200 over TCP: 0.01 GB/s per
    transfer, 0.34 GB/s over the point). The warning says both; a fast link with queued transfers is no TCP."""
    p, d = _pd(19.5, 169e6, n=118)  # rate=6 on tcp/lo: 118 transfers of 169 MB, 19.5 s each on average
    a = attribute(p, d, ttft_s=26.0, window_s=2 * 29.0)
    assert a.achieved_bps == pytest.approx(169e6 / 19.5) and a.point_bps == pytest.approx(118 * 169e6 / 58.0)
    w = next(x for x in a.warnings if "TCP fallback" in x)
    assert "0.01 GB/s per transfer (0.34 GB/s over the point" in w
    p, d = _pd(2.0, 169e6, n=1000)  # 1000 transfers queued 2 s each, but 169 GB in 20 s: 8.5 GB/s on the link
    a = attribute(p, d, ttft_s=2.1, window_s=20.0)
    assert a.achieved_bps < 5e9 < a.point_bps and not any("TCP fallback" in x for x in a.warnings)
