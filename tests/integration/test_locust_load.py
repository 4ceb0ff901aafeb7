"""run_load end to end: Locust master + 2 workers against the local SSE test server."""

import pandas as pd
import pytest

from suite.config import ConfigError
from suite.load.run import run_load
from suite.load.schedule import plans
from suite.load.spec import load_spec
from suite.load.testserver import running

pytestmark = pytest.mark.integration

CLASSES = {"long_prefill": {"input": {"min": 200, "max": 400}, "output": {"min": 2, "max": 4}},
           "short_decode": {"input": {"min": 20, "max": 40}, "output": {"min": 8, "max": 16}}}


def test_open_loop_two_workers_keeps_every_request(tmp_path):
    spec = load_spec({"classes": CLASSES, "mix": {"long_prefill": 1, "short_decode": 3},
                      "arrival": {"kind": "poisson", "rate_rps": 15}, "duration_s": 3, "seed": 7})
    expected = plans(spec)
    with running(ttft_ms=5, itl_ms=2, emulated=True, fail_every=5) as url:
        s = run_load(url, "m", spec, tmp_path, workers=2, timeout_s=90)
    assert s.failure is None
    df = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(df) == len(expected) == s.sent  # nothing dropped, errors included
    assert set(df["worker"]) == {"w0", "w1"}  # both workers sent their share
    assert sorted(df["scheduled_s"]) == pytest.approx(sorted(p.scheduled_s for p in expected))
    assert s.errors == (df["status"] == "error").sum() > 0 and s.ok + s.errors == len(df)
    assert sum(c["error"] for c in s.by_class.values()) == s.errors  # counted per class
    ok = df[df["status"] == "ok"]
    assert (ok["ttft_s"] >= 0.004).all() and (ok["completion_tokens"] == ok["max_tokens"]).all()
    assert (ok["token_times_s"].map(len) == ok["max_tokens"]).all()
    assert s.emulated is True


def test_closed_loop_concurrency(tmp_path):
    spec = load_spec({"classes": CLASSES, "arrival": {"kind": "concurrency", "concurrency": 3}, "num_requests": 30})
    with running(ttft_ms=5, itl_ms=1) as url:
        s = run_load(url, "m", spec, tmp_path, workers=2, timeout_s=90)
    df = pd.read_parquet(tmp_path / "requests.parquet")
    assert s.failure is None and len(df) == 30 and s.ok == 30 and s.emulated is False
    assert sorted(int(x.split("-")[1]) for x in df["request_id"]) == list(range(30))


def test_bad_input_fails_before_start(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("timestamp,input_length,output_length\n1,abc,3\n")
    spec = load_spec({"arrival": {"kind": "trace", "trace": str(bad)}})
    with pytest.raises(ConfigError, match="malformed"):
        run_load("http://127.0.0.1:9", "m", spec, tmp_path / "out", workers=2)
    assert not (tmp_path / "out" / "locust.log").exists()
