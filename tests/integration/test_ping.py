import json
import subprocess
import sys
from pathlib import Path

import pytest

from suite.load.testserver import free_port, running

pytestmark = pytest.mark.integration


def ping(url: str, *args: str) -> subprocess.CompletedProcess:
    # The installed console script, next to this interpreter (PATH need not include the venv).
    pdsuite = str(Path(sys.executable).with_name("pdsuite"))
    return subprocess.run([pdsuite, "ping", "--url", url, "--model", "m", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_ping_measures_streaming_timings(api):
    with running(ttft_ms=40, itl_ms=10, emulated=True) as url:
        r = ping(url, "--input-tokens", "33", "--output-tokens", "6", "-n", "3", "--api", api)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 3
    for x in lines:
        assert x["error"] is None and x["tokens"] == 6 and x["prompt_tokens"] == 33 and x["emulated"] is True
        assert 39 <= x["ttft_ms"] < 60  # server waits 40 ms after the request's first byte
        assert len(x["itl_ms"]) == 5 and 45 <= x["e2e_ms"] < 120


def test_ping_endpoint_down_is_one_line_exit_1():
    r = ping(f"http://127.0.0.1:{free_port()}", "-n", "2")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "is down" in r.stderr


def test_ping_reports_server_errors_and_broken_streams():
    with running(ttft_ms=1, itl_ms=1, fail_every=2, break_every=3) as url:
        r = ping(url, "--output-tokens", "8", "-n", "3")
    assert r.returncode == 1
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert out[0]["error"] is None
    assert out[1]["http_status"] == 500 and "injected failure" in out[1]["error"]
    assert out[2]["status"] == "error" and out[2]["tokens"] is None and 0 < out[2]["chunks"] < 8
