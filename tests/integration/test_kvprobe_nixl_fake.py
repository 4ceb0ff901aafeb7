"""kvprobe's NIXL part end to end on CPU against a stand-in `nixl` (tests/fixtures/fake_nixl): P and D really are
two spawned processes exchanging metadata and descriptors; the stand-in copies P's bytes through a file. Covers
the rows, the byte check, the per-point time limit, UCX transport parsing from D's log, and that P and D are
stopped (no hang) when either fails. Needs torch; not real NIXL/UCX (the device run measures that)."""

import multiprocessing as mp
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from suite.kvprofile.analysis import op_sizes, summarize
from suite.kvprofile.nixlprobe import nixl_probe
from suite.kvprofile.probe import ProbeOptions
from suite.modelcfg import load

pytestmark = pytest.mark.integration
FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_nixl"
M = load("tiny-llama")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(FAKE))  # spawn children get the parent's sys.path
    monkeypatch.setenv("FAKE_NIXL_DIR", str(tmp_path))

    def run(mode: str, **kw) -> tuple[dict, float]:
        monkeypatch.setenv("FAKE_NIXL_MODE", mode)
        opts = ProbeOptions(**{"model": "tiny-llama", "tokens": (128, 300), "block_tokens": 64, "iters": 3,
                               "warmup": 1, **kw})
        t0 = time.monotonic()
        out = nixl_probe(None, M, opts, "cpu")
        took = time.monotonic() - t0
        assert mp.active_children() == []  # P and D are gone, whatever happened
        return out, took
    return run


def test_two_processes_read_check_bytes_and_report_transports(fake):
    out, _ = fake("ok")
    assert out["available"] is True and out["version"] == "0.0-fake" and out["direction"] == "READ", out
    assert out["note"].startswith("nixl 0.0-fake") and "warning" not in out
    rows = {(r["pattern"], r["tokens"]): r for r in out["results"]}
    assert set(rows) == {(p, t) for p in ("coalesced", "per_layer", "per_block") for t in (128, 300)}
    for (pattern, tokens), r in rows.items():
        assert r["ops"] == len(op_sizes(M, tokens, pattern, 64)) and r["bytes"] == tokens * 2048
        assert r["data_ok"] is True and r["truncated"] is False and r["n"] == 3 and r["gbps"] > 0
        assert r["direction"] == "READ"
    assert out["ucx_transports"] == ["cma/memory"]  # the get table only, not the AM table's tcp/lo
    s = summarize({"copy": [{"bytes": 2**20, "gbps": 10.0}], "nixl": out})
    assert [v["tokens"] for v in s["nixl_coalesced_vs_copy"]] == [128, 300]


def test_wrong_bytes_are_flagged(fake):
    out, _ = fake("corrupt", patterns=("coalesced",))
    assert [r["data_ok"] for r in out["results"]] == [False, False]


def test_point_time_limit_truncates_and_skips_larger_points(fake):
    out, took = fake("slow", patterns=("coalesced",), iters=20, nixl_point_s=0.5)
    small, big = out["results"]
    assert small["truncated"] is True and 1 <= small["n"] < 20 and small["data_ok"] is True
    assert big["skipped"] == f"a {small['bytes']:,} B point already hit the 0.5 s limit"
    assert took < 60


@pytest.mark.parametrize("mode, msg", [("p_crash", "P: RuntimeError: fake registration failure"),
                                       ("d_die", "D process exited (code 3)")])
def test_failures_are_reported_and_both_processes_end(fake, mode, msg):
    out, took = fake(mode)
    assert out["note"].startswith("failed: ") and msg in out["note"], out
    assert "log_tail" in out and took < 90


def test_a_hung_transfer_is_stopped_at_the_timeout(fake):
    out, took = fake("hang", timeout_s=8.0)
    assert "still running after 8 s" in out["note"] and took < 8 + 15, (out, took)


def test_nixl_found_but_not_importable_in_the_workers_is_a_skip(fake):
    out, _ = fake("import_fail")
    assert out["available"] is False, out
    assert out["note"] == "skipped: nixl not importable in the worker (fake: libucp.so.0 not found)"
