"""The REAL vllm-router and sglang-router drive emulated engines unchanged: P/D pairs and two replicas (dp2).

Every process is started here, on free loopback ports, and killed in a finally block.
"""

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration
EMU = [sys.executable, "-m", "suite.cli", "emulate", "--model", "tiny", "--model-config", "tiny-llama",
       "--hardware", "cpu-tiny", "--kv-timeout", "3", "--spin-us", "0"]
H = "127.0.0.1"


def post(url: str, body: dict, timeout: float = 30):
    """(status, response) - the response is a readable file; errors come back as their HTTPError."""
    req = urllib.request.Request(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"})
    try:
        r = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        return e.code, e
    return r.status, r


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((H, 0))
    out = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return out


class Procs:
    def __init__(self, tmp_path):
        self.tmp, self.procs = tmp_path, []

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append((name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))

    def wait_healthy(self, url: str, timeout: float = 40) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p, _ in self.procs:
                assert p.poll() is None, f"{name} exited: {(self.tmp / f'{name}.log').read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{url} not healthy in {timeout} s")

    def stop(self) -> None:
        for _, p, _ in self.procs:
            p.terminate()
        for _, p, log in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            log.close()


@pytest.fixture
def procs(tmp_path):
    pr = Procs(tmp_path)
    try:
        yield pr
    finally:
        pr.stop()


def stream(url: str, body: dict) -> tuple[int, dict]:
    """Streams a completion; returns (content tokens received, usage)."""
    n, usage = 0, {}
    body = body | {"stream": True, "stream_options": {"include_usage": True}}
    status, r = post(url, body)
    with r:
        assert status == 200, r.read()
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                ev = orjson.loads(line[6:])
                if ev.get("choices"):
                    c = ev["choices"][0]
                    n += bool(c.get("text") or c.get("delta", {}).get("content"))
                usage = ev.get("usage") or usage
    return n, usage


def metric(url: str, name: str, **labels) -> float:
    total = 0.0
    for f in text_string_to_metric_families(get(url)):
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def vllm_router(pr: Procs, port: int, mport: int, workers: list[str]) -> None:
    pr.start("router", ["vllm-router", *workers, "--policy", "round_robin", "--disable-retries", "--host", H,
                        "--port", str(port), "--prometheus-host", H, "--prometheus-port", str(mport)])


def sglang_router(pr: Procs, port: int, mport: int, workers: list[str]) -> None:
    pr.start("router", [sys.executable, "-m", "sglang_router.launch_router", *workers, "--host", H,
                        "--port", str(port), "--prometheus-host", H, "--prometheus-port", str(mport)])


needs_vllm_router = pytest.mark.skipif(not shutil.which("vllm-router"), reason="vllm-router not installed")


@needs_vllm_router
def test_vllm_router_pd(procs):
    rp, pp, dp, pk, dk, mp = ports(6)
    procs.start("prefill", [*EMU, "--flavor", "vllm", "--role", "prefill", "--port", str(pp), "--kv-port", str(pk)])
    procs.start("decode", [*EMU, "--flavor", "vllm", "--role", "decode", "--port", str(dp), "--kv-port", str(dk)])
    procs.wait_healthy(f"http://{H}:{pp}/health")
    procs.wait_healthy(f"http://{H}:{dp}/health")
    vllm_router(procs, rp, mp, ["--vllm-pd-disaggregation", "--prefill", f"http://{H}:{pp}",
                                "--decode", f"http://{H}:{dp}"])
    procs.wait_healthy(f"http://{H}:{rp}/health")
    for prompt_len, out in ((300, 7), (40, 3)):
        n, usage = stream(f"http://{H}:{rp}/v1/completions",
                          {"model": "tiny", "prompt": list(range(prompt_len)), "max_tokens": out})
        assert n == out and usage["prompt_tokens"] == prompt_len and usage["completion_tokens"] == out
    dmetrics = f"http://{H}:{dp}/metrics"
    assert metric(dmetrics, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer") == 299 + 39
    assert metric(dmetrics, "vllm:nixl_bytes_transferred_count") == 2
    assert metric(dmetrics, "vllm:nixl_bytes_transferred_sum") > 0
    assert metric(f"http://{H}:{pp}/metrics", "vllm:nixl_bytes_transferred_count") == 0  # D reads, P does not
    # broken hand-off fields: an OpenAI-style 400, fast
    t0 = time.monotonic()
    status, r = post(f"http://{H}:{dp}/v1/completions", timeout=10, body={
        "model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2,
        "kv_transfer_params": {"do_remote_prefill": True, "remote_host": H, "remote_port": pk}})
    assert status == 400 and "remote_engine_id" in orjson.loads(r.read())["error"]["message"]
    assert time.monotonic() - t0 < 2


def test_sglang_router_pd(procs):
    rp, pp, dp, bp, mp = ports(5)
    procs.start("prefill", [*EMU, "--flavor", "sglang", "--role", "prefill", "--port", str(pp),
                            "--bootstrap-port", str(bp)])
    procs.start("decode", [*EMU, "--flavor", "sglang", "--role", "decode", "--port", str(dp)])
    procs.wait_healthy(f"http://{H}:{pp}/health")
    procs.wait_healthy(f"http://{H}:{dp}/health")
    sglang_router(procs, rp, mp, ["--pd-disaggregation", "--prefill", f"http://{H}:{pp}", str(bp),
                                  "--decode", f"http://{H}:{dp}", "--prefill-policy", "round_robin",
                                  "--decode-policy", "round_robin"])
    procs.wait_healthy(f"http://{H}:{rp}/health")
    # sglang-router 0.3.2 accepts only string prompts on /v1/completions (token-id lists are rejected)
    n, usage = stream(f"http://{H}:{rp}/v1/completions", {"model": "tiny", "prompt": "w " * 250, "max_tokens": 6})
    assert n == 6 and usage["prompt_tokens"] == 250
    n, usage = stream(f"http://{H}:{rp}/v1/chat/completions",
                      {"model": "tiny", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 4})
    assert n == 4 and usage["prompt_tokens"] == 3
    pm = f"http://{H}:{pp}/metrics"
    assert metric(pm, "sglang:kv_transfer_latency_ms_count", engine_type="prefill") == 2
    assert metric(pm, "sglang:kv_transfer_total_mb_sum") > 0
    assert metric(pm, "sglang:kv_transfer_speed_gb_s_count") == 2
    assert metric(f"http://{H}:{dp}/metrics", "sglang:num_requests_total", engine_type="decode") == 2
    t0 = time.monotonic()
    status, r = post(f"http://{H}:{dp}/v1/completions", timeout=10, body={
        "model": "tiny", "prompt": "a b", "max_tokens": 2, "bootstrap_host": H, "bootstrap_port": bp})
    assert status == 400 and "bootstrap_room" in orjson.loads(r.read())["message"]
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("flavor", [pytest.param("vllm", marks=needs_vllm_router), "sglang"])
def test_router_dp2_round_robin(procs, flavor):
    rp, a, b, mp = ports(4)
    for name, port in (("replica0", a), ("replica1", b)):
        procs.start(name, [*EMU, "--flavor", flavor, "--role", "colocated", "--port", str(port)])
        procs.wait_healthy(f"http://{H}:{port}/health")
    workers = ["--worker-urls", f"http://{H}:{a}", f"http://{H}:{b}"]
    if flavor == "vllm":
        vllm_router(procs, rp, mp, workers)
    else:
        sglang_router(procs, rp, mp, [*workers, "--policy", "round_robin"])
    procs.wait_healthy(f"http://{H}:{rp}/health")
    for _ in range(4):
        n, usage = stream(f"http://{H}:{rp}/v1/completions", {"model": "tiny", "prompt": "a b c d", "max_tokens": 5})
        assert n == 5 and usage["completion_tokens"] == 5
    fam = f"{flavor}:generation_tokens_total"
    served = [metric(f"http://{H}:{p}/metrics", fam) for p in (a, b)]
    assert sum(served) == 20 and min(served) > 0  # both replicas got work
