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


def test_one_stream_on_two_workers_sends_every_request(tmp_path):
    """Concurrency 1 with 2 workers: the worker without a stream draws no requests (it once held half of them, and
    they ended as not_sent: the TTFT-vs-length sweep measured 3 of 6 requests per point)."""
    spec = load_spec({"classes": CLASSES, "arrival": {"kind": "concurrency", "concurrency": 1}, "num_requests": 6})
    with running(ttft_ms=5, itl_ms=1) as url:
        s = run_load(url, "m", spec, tmp_path, workers=2, timeout_s=60)
    df = pd.read_parquet(tmp_path / "requests.parquet")
    assert s.failure is None and s.ok == 6 and len(df) == 6 and set(df["worker"]) == {"w0"}


def test_bad_input_fails_before_start(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("timestamp,input_length,output_length\n1,abc,3\n")
    spec = load_spec({"arrival": {"kind": "trace", "trace": str(bad)}})
    with pytest.raises(ConfigError, match="malformed"):
        run_load("http://127.0.0.1:9", "m", spec, tmp_path / "out", workers=2)
    assert not (tmp_path / "out" / "locust.log").exists()


def test_cluster_is_reused_across_points_and_serves_run_load(tmp_path):
    from suite.load.cluster import LoadCluster

    ids = load_spec({"classes": CLASSES, "arrival": {"kind": "poisson", "rate_rps": 10}, "duration_s": 2, "seed": 3})
    text = load_spec({"classes": CLASSES, "arrival": {"kind": "concurrency", "concurrency": 4}, "num_requests": 12,
                      "completions_prompt": "text", "tokenizer": "words"})
    with running(ttft_ms=3, itl_ms=1) as url:
        with LoadCluster(url, "m", 2, keep=True) as lc:  # a runner's first deployment
            a = lc.run(ids, tmp_path / "a", timeout_s=60)
            pids = [p.pid for p in lc.procs]
        assert all(p.poll() is None for p in lc.procs)  # parked, not stopped
        with LoadCluster(url, "m", 2, keep=True) as lc:  # the next deployment adopts the processes
            b = run_load(url, "m", text, tmp_path / "b", workers=2, timeout_s=60)  # finds the open cluster
            assert lc.starts == 1 and [p.pid for p in lc.procs] == pids
        LoadCluster.close_parked()
    assert not any(p.poll() is None for p in lc.procs)  # stopped
    assert a.failure is None and a.ok == len(plans(ids)) == len(pd.read_parquet(tmp_path / "a" / "requests.parquet"))
    df = pd.read_parquet(tmp_path / "b" / "requests.parquet")
    assert b.failure is None and len(df) == 12 and (df["status"] == "ok").all()
    assert (df["prompt_tokens"] == df["input_tokens"]).all()  # text prompts of exact length (server counts words)
    assert "locust" in (tmp_path / "a" / "locust.log").read_text().lower() or a.ok  # the log slice exists


def test_dead_worker_fails_the_point_without_hanging_and_the_next_point_runs(tmp_path):
    import threading
    import time

    from suite.load.cluster import LoadCluster

    spec = load_spec({"classes": CLASSES, "arrival": {"kind": "constant", "rate_rps": 10}, "duration_s": 6})
    with running(ttft_ms=3, itl_ms=1) as url, LoadCluster(url, "m", 2) as lc:
        lc.start()
        victim = lc.procs[1]
        threading.Timer(2.0, victim.kill).start()
        t = time.monotonic()
        s = lc.run(spec, tmp_path / "a", timeout_s=60)
        assert time.monotonic() - t < 30
        assert s.failure and f"worker process 1 of 2 (pid {victim.pid}) exited" in s.failure
        df = pd.read_parquet(tmp_path / "a" / "requests.parquet")  # what the live worker sent is kept
        assert df["worker"].value_counts().max() >= 5 and len(df) == len(plans(spec))  # one record per plan
        lost = df[df["status"] == "not_sent"]
        assert lost["error"].str.contains("no record came back from its worker").any()  # the dead one's share
        assert lost["error"].str.contains(f"worker process 1 of 2 (pid {victim.pid}) exited", regex=False).all()
        again = lc.run(spec.model_copy(update={"duration_s": 1.0}), tmp_path / "b", timeout_s=60)
        assert again.failure is None and again.ok == len(plans(spec.model_copy(update={"duration_s": 1.0})))
        assert lc.starts == 2  # restarted after the crash


def _one_record_per_plan(df, spec):
    assert sorted(df["request_id"]) == sorted(f"{spec.seed}-{p.index}" for p in plans(spec))
    assert df["error"][df["status"] != "ok"].notna().all()  # every non-ok record says why


def test_never_accepting_listener_every_planned_request_has_a_record(tmp_path):
    """A listener that never accepts: its backlog takes a few connections, the rest never connect. The point is
    stopped at its limit; every planned request is a record (timeout, cancelled, or not_sent with the reason)."""
    import socket
    import time

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    url = f"http://127.0.0.1:{lsock.getsockname()[1]}"
    spec = load_spec({"classes": CLASSES, "arrival": {"kind": "constant", "rate_rps": 10}, "duration_s": 3,
                      "request_timeout_s": 2, "drain_timeout_s": 0})
    t = time.monotonic()
    try:
        s = run_load(url, "m", spec, tmp_path, workers=2, timeout_s=12)
    finally:
        lsock.close()
    assert time.monotonic() - t < 60
    df = pd.read_parquet(tmp_path / "requests.parquet")
    _one_record_per_plan(df, spec)
    assert s.failure and "did not finish" in s.failure and s.ok == 0
    assert set(df["status"]) <= {"timeout", "cancelled", "not_sent"}
    assert s.not_sent == (df["status"] == "not_sent").sum() > 0
    assert df.loc[df["status"] == "not_sent", "error"].str.contains("not sent").all()


def test_stalled_stream_and_stopped_server_every_planned_request_has_a_record(tmp_path):
    """A server that stalls mid-stream (every request times out), then one stopped (SIGSTOP) during a point that
    is cut at its limit: records == planned both times."""
    import os
    import signal
    import threading

    from suite.load.cluster import LoadCluster

    stall = load_spec({"classes": CLASSES, "arrival": {"kind": "poisson", "rate_rps": 8}, "duration_s": 2,
                       "request_timeout_s": 2, "seed": 4})
    with running(ttft_ms=3, itl_ms=1, stall_after=1) as url:
        s = run_load(url, "m", stall, tmp_path / "stall", workers=2, timeout_s=60)
    df = pd.read_parquet(tmp_path / "stall" / "requests.parquet")
    _one_record_per_plan(df, stall)
    assert s.failure is None and (df["status"] == "timeout").all() and (df["token_times_s"].map(len) == 1).all()
    assert df["ttft_s"].notna().all()  # the one token each got is its TTFT

    stop = load_spec({"classes": CLASSES, "arrival": {"kind": "constant", "rate_rps": 10}, "duration_s": 30,
                      "request_timeout_s": 120})
    srv = running(ttft_ms=3, itl_ms=1)
    with srv as url, LoadCluster(url, "m", 2) as lc:
        lc.start()
        threading.Timer(2.0, os.kill, (srv.proc.pid, signal.SIGSTOP)).start()
        try:
            s = lc.run(stop, tmp_path / "stop", timeout_s=5)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
    df = pd.read_parquet(tmp_path / "stop" / "requests.parquet")
    _one_record_per_plan(df, stop)
    assert s.failure and (df["status"] == "ok").sum() >= 5 and (df["status"] == "not_sent").sum() > 200
    assert s.ok + s.errors + s.timeouts + s.cancelled + s.not_sent == len(df)


def test_workers_start_only_once_their_handlers_exist(tmp_path, monkeypatch):
    """Locust connects a worker to the master before pdsuite's handlers exist; a point started in that gap would
    be dropped by the worker. The gap is widened to 4 s here: the point must still run whole."""
    from suite.load.cluster import LoadCluster

    monkeypatch.setenv("PDSUITE_TEST_WORKER_INIT_DELAY_S", "4")
    spec = load_spec({"classes": CLASSES, "arrival": {"kind": "constant", "rate_rps": 10}, "duration_s": 1})
    with running(ttft_ms=3, itl_ms=1) as url, LoadCluster(url, "m", 2, log_dir=tmp_path / "logs") as lc:
        s = lc.run(spec, tmp_path / "a", timeout_s=60)
    assert s.failure is None and s.ok == len(plans(spec)) == 10
    assert "Unknown message type" not in (tmp_path / "logs" / "locust-cluster.log").read_text()
