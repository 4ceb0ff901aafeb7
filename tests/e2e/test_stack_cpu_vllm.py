"""Real vLLM on CPU through the compose file: `cpu-vllm-disagg` (prefill + decode with ExampleConnector over a
shared volume, the REAL vllm-router in P/D mode) comes up health-gated, a request through the router is served,
and the decode engine's own metrics show its prompt arrived as transferred KV, not recomputed."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.request

import pytest
from dockerutil import ROOT, clean_env, free_ports, unavailable
from prometheus_client.parser import text_string_to_metric_families

from suite.config import Settings

pytestmark = pytest.mark.docker
PROFILE = "cpu-vllm-disagg"
PORTS = ["ENDPOINT_PORT", "ENGINE_A_PORT", "ENGINE_B_PORT", "ROUTER_METRICS_PORT"]


def compose(*args: str, env: dict[str, str], timeout: float, check: bool = True):
    cmd = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", PROFILE, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(**env), cwd=ROOT)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(args)} -> {r.returncode}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture
def cpu_stack(images):
    if subprocess.run(["docker", "image", "inspect", images.VLLM_CPU_IMAGE], capture_output=True).returncode:
        unavailable(f"image {images.VLLM_CPU_IMAGE} missing (make images)")
    env = dict(zip(PORTS, map(str, free_ports(len(PORTS))), strict=True))
    settings = Settings(**env)
    ok = False
    try:
        compose("up", "-d", "--wait", "--wait-timeout", "480", env=env, timeout=600)
        ok = True
        yield settings
    finally:
        if not ok or sys.exc_info()[0] is not None:
            logs = compose("logs", "--no-color", "--tail", "60", env=env, timeout=60, check=False)
            print(f"----- {PROFILE} logs -----\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        compose("down", "--remove-orphans", "--volumes", "--timeout", "10", env=env, timeout=180, check=False)


def transferred_tokens(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "vllm:prompt_tokens_by_source_total" and s.labels.get("source") == "external_kv_transfer")


def test_cpu_vllm_pd_via_compose_moves_kv(cpu_stack):
    s = cpu_stack
    decode_metrics = f"http://{s.BIND_ADDRESS}:{s.ENGINE_B_PORT}/metrics"
    before = transferred_tokens(decode_metrics)
    prompt = [random.Random(7).randrange(100, 1000) for _ in range(300)]  # > 2 CPU KV blocks of 128 tokens
    body = {"model": s.MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0}
    req = urllib.request.Request(f"http://{s.BIND_ADDRESS}:{s.ENDPOINT_PORT}/v1/completions",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        out = json.loads(r.read())
    assert out["usage"]["prompt_tokens"] == 300 and out["usage"]["completion_tokens"] == 4
    assert transferred_tokens(decode_metrics) - before >= 256, "decode must load the prompt's full KV blocks"
