"""The whole stack in Docker on a GPU-less machine, through the same compose file a GPU user runs.

EMULATED engines (`pdsuite emulate` in the suite image) behind the REAL vllm-router and sglang-router (router
image): health-gated bring-up (`up --wait`), a streaming request through each router, KV hand-offs visible in the
engines' metrics, `make down` cleaning every profile, then a short mixed Locust load through the runner's compose
driver and a report asserted on. Every number here is emulated: it proves the pipeline, not engine performance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dockerutil import ROOT, clean_env, free_ports
from prometheus_client.parser import text_string_to_metric_families

from suite.config import Settings
from suite.deploy.catalog import get as get_deployment
from suite.frameworks.base import get as get_framework

pytestmark = pytest.mark.docker

PROFILES = ["emu-vllm-disagg", "emu-sglang-disagg", "emu-vllm-colocated"]
PORT_SETTINGS = ["ENDPOINT_PORT", "ENGINE_A_PORT", "ENGINE_B_PORT", "ROUTER_METRICS_PORT", "VLLM_NIXL_PORT_PREFILL",
                 "VLLM_NIXL_PORT_DECODE", "SGLANG_BOOTSTRAP_PORT", "SGLANG_NCCL_PORT_A", "SGLANG_NCCL_PORT_B",
                 "LOCUST_WEB_PORT"]


@pytest.fixture(scope="module")
def settings_env(images) -> dict[str, str]:
    """Free ports for every server (host network; the defaults may be busy on a shared machine)."""
    env = dict(zip(PORT_SETTINGS, map(str, free_ports(len(PORT_SETTINGS))), strict=True))
    Settings(**env)  # the same validation a user's .env gets
    return env


def compose(profile: str, *args: str, env: dict[str, str], timeout: float = 120, check: bool = True):
    cmd = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", profile, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(**env), cwd=ROOT)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(args)} -> {r.returncode}\n{r.stderr[-3000:]}")
    return r


def project_containers() -> list[str]:
    r = subprocess.run(["docker", "ps", "-a", "--filter", "label=com.docker.compose.project=pdsuite",
                        "--format", "{{.Names}}"], capture_output=True, text=True, timeout=60, check=True)
    return r.stdout.split()


def print_logs(profile: str, env: dict[str, str]) -> None:
    r = compose(profile, "logs", "--no-color", "--tail", "80", env=env, timeout=60, check=False)
    print(f"----- docker compose --profile {profile} logs -----\n{r.stdout}{r.stderr}", file=sys.stderr)


@pytest.fixture
def stack(request, settings_env):
    """Bring profiles up health-gated; on failure print their logs; always `down`."""
    started: list[str] = []

    def up(profile: str) -> None:
        started.append(profile)
        compose(profile, "up", "-d", "--wait", "--wait-timeout", "150", env=settings_env, timeout=300)

    yield up
    failed = getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed
    for profile in started:
        if failed:
            print_logs(profile, settings_env)
        compose(profile, "down", "--remove-orphans", "--timeout", "10", env=settings_env, timeout=180, check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # lets the fixture see the test's outcome
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep


def stream_chat(url: str, model: str, max_tokens: int = 8) -> list[str]:
    body = {"model": model, "messages": [{"role": "user", "content": "Explain KV cache transfer."}],
            "max_tokens": max_tokens, "stream": True}
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    pieces, done = [], False
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            delta = json.loads(data)["choices"][0].get("delta", {})
            if delta.get("content"):
                pieces.append(delta["content"])
    assert done, "stream ended without [DONE]"
    return pieces


def metric_total(url: str, family: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name in (family, f"{family}_count", f"{family}_total"))


@pytest.mark.parametrize("profile", PROFILES)
def test_stream_through_the_real_router(stack, settings_env, profile):
    dep = get_deployment(profile)
    fw = get_framework(dep.framework)
    s = Settings(**settings_env)
    stack(profile)
    base = f"http://{s.BIND_ADDRESS}:{s.ENDPOINT_PORT}"
    for _ in range(3):
        assert len(stream_chat(base, s.MODEL, max_tokens=8)) == 8
    if dep.router:  # the real router served it and counts requests on its own metrics port
        router = f"http://{s.BIND_ADDRESS}:{s.ROUTER_METRICS_PORT}/metrics"
        # (vllm-router 0.1.17 in P/D mode counts vllm_router_pd_requests_total, not vllm_router_requests_total)
        names = [fw.router_metrics[k].native for k in ("router_pd_requests", "router_requests")
                 if k in fw.router_metrics]
        assert max(metric_total(router, n) for n in names) >= 3, names
    if dep.topology.value == "disagg":  # every request's KV moved from P to D (recorded on one side)
        family = fw.engine_metrics["kv_transfer_s"].native
        moved = sum(metric_total(f"http://{s.BIND_ADDRESS}:{getattr(s, e.port_var)}/metrics", family)
                    for e in dep.engines)
        assert moved >= 3, family


def test_make_down_cleans_every_profile(stack, settings_env):
    stack("emu-sglang-colocated")
    assert project_containers()
    r = subprocess.run(["make", "-s", "down"], capture_output=True, text=True, timeout=180, cwd=ROOT,
                       env=clean_env(**settings_env))
    assert r.returncode == 0, r.stderr
    assert project_containers() == []


PLAN = {
    "name": "ci-emu",
    "description": "CI: emulated P/D vs co-located for both frameworks behind the real routers",
    "deployments": ["vllm-disagg", "sglang-disagg", "vllm-colocated"],
    "workload": {
        "classes": {"long_prefill": {"input": {"min": 1024, "max": 2048}, "output": {"min": 8, "max": 16}},
                    "short_decode": {"input": {"min": 32, "max": 128}, "output": {"min": 32, "max": 64}}},
        "mix": {"long_prefill": 0.4, "short_decode": 0.6},
        "arrival": {"kind": "poisson", "rate_rps": 3},
        "duration_s": 8,
        "seed": 7,
    },
    "repetitions": 1,
    "warmup_requests": 2,
    "on_failure": "continue",
    "point_timeout_s": 180,
    "up_timeout_s": 180,
}


def test_mixed_load_and_report(settings_env, tmp_path):
    """`pdsuite run` (compose driver: up --wait, Locust headless, scrape, down) then `pdsuite report`."""
    plan = tmp_path / "ci-emu.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    env_file = tmp_path / "ci.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings_env.items()))
    pdsuite = str(Path(sys.executable).with_name("pdsuite"))
    env = clean_env(PYTHONUNBUFFERED="1")
    try:
        r = subprocess.run([pdsuite, "run", str(plan), "--backend", "emu", "--driver", "compose", "--workers", "2",
                            "--out", str(tmp_path / "results"), "--env-file", str(env_file)],
                           capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
        print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
        results = sorted((tmp_path / "results" / "ci-emu").iterdir())
        assert r.returncode == 0 and len(results) == 1, "pdsuite run failed (its output is above)"
        manifest = json.loads((results[0] / "manifest.json").read_text())
        assert manifest["status"] == "complete", manifest.get("failed_points")
        assert manifest["emulated"] is True
    except BaseException:
        for dep in PLAN["deployments"]:  # the runner keeps each deployment's logs; show what it saw
            for log in sorted((tmp_path / "results").rglob(f"emu-{dep}*/logs/*")):
                print(f"----- {log} -----\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        subprocess.run(["make", "-s", "down"], capture_output=True, timeout=180, cwd=ROOT, env=env)
    assert project_containers() == []

    r = subprocess.run([pdsuite, "report", str(results[0]), "--name", "ci", "--out", str(tmp_path / "reports"),
                        "--bootstrap", "200"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    report = tmp_path / "reports" / "ci"
    assert (report / "index.html").stat().st_size > 10_000
    assert "emulated" in (report / "report.md").read_text().lower()

    summary = pd.read_csv(report / "summary.csv")
    print(summary.head(20).to_string(), file=sys.stderr)
    deployments = {f"emu-{d}" for d in PLAN["deployments"]}
    dep_col = next(c for c in ("deployment", "dep") if c in summary.columns)
    assert set(summary[dep_col]) == deployments
    assert {"vllm", "sglang"} <= {get_deployment(d).framework for d in summary[dep_col]}
    cls_col = next(c for c in ("cls", "class", "request_class") if c in summary.columns)
    assert set(summary[cls_col]) >= set(PLAN["workload"]["classes"])
    for d in deployments:  # TTFT and ITL for every class of every deployment
        for cls in PLAN["workload"]["classes"]:
            row = summary[(summary[dep_col] == d) & (summary[cls_col] == cls)]
            assert len(row) >= 1, (d, cls)
            for col in ("ttft_p50", "itl_p50"):
                assert (row[col] > 0).all(), (d, cls, col, row.to_dict())
    err_cols = [c for c in summary.columns if c in ("errors", "timeouts") or "fail" in c]
    assert err_cols and (summary[err_cols].fillna(0) == 0).all().all(), summary[err_cols]

    kv = pd.read_csv(report / "kv_transfer.csv")
    print(kv.head(20).to_string(), file=sys.stderr)
    kv_deps = {v for c in kv.columns if c in ("deployment", "dep") for v in kv[c]}
    assert {"emu-vllm-disagg", "emu-sglang-disagg"} <= kv_deps
