"""A container killed mid-point under the compose driver (`docker kill`, as a crash would): the point fails with
the service's last log lines, the deployment's remaining points are skipped, `down` runs, nothing hangs.
(The process-driver twin is tests/integration/test_runner_faults.py.)"""

import json
import subprocess
import threading
import time

import pytest

from suite.config import Settings
from suite.netutil import free_ports
from suite.plan import Plan
from suite.runner import drivers
from suite.runner.drivers import ComposeDriver
from suite.runner.run import run_plan

pytestmark = pytest.mark.docker

PORTS = ["ENDPOINT_PORT", "ENGINE_A_PORT", "ENGINE_B_PORT", "ENGINE_C_PORT", "ROUTER_METRICS_PORT",
         "VLLM_NIXL_PORT_PREFILL", "VLLM_NIXL_PORT_DECODE", "VLLM_NIXL_PORT_THIRD", "LOCUST_WEB_PORT"]


def project_containers() -> list[str]:
    r = subprocess.run(["docker", "ps", "-a", "--filter", "label=com.docker.compose.project=pdsuite",
                        "--format", "{{.Names}}"], capture_output=True, text=True, timeout=60, check=True)
    return r.stdout.split()


class KillingCompose(ComposeDriver):
    victim = "decode"
    after_s = 3.0

    def up(self, timeout_s):
        super().up(timeout_s)
        svc = self.dep.service(self.victim)
        threading.Timer(self.after_s, lambda: subprocess.run(
            ["docker", "kill", *subprocess.run(["docker", "ps", "-q", "--filter",
                                                f"label=com.docker.compose.service={svc}"],
                                               capture_output=True, text=True).stdout.split()],
            capture_output=True, timeout=60)).start()


def test_container_killed_mid_point_fails_it_and_skips_the_rest(images, tmp_path, monkeypatch):
    monkeypatch.setitem(drivers.DRIVERS, "killing-compose", KillingCompose)
    settings = Settings(**dict(zip(PORTS, free_ports(len(PORTS)), strict=True)))
    plan = Plan(name="faults", deployments=["vllm-disagg"], warmup_requests=0, repetitions=1,
                workload={"classes": {"c": {"input": {"min": 64, "max": 128}, "output": {"min": 64, "max": 64}}},
                          "mix": {"c": 1}, "arrival": {"kind": "poisson", "rate_rps": 4}, "duration_s": 8,
                          "request_timeout_s": 10, "drain_timeout_s": 5},
                points=[{"label": "first"}, {"label": "second"}], point_timeout_s=60, up_timeout_s=120)
    t0 = time.monotonic()
    try:
        state = run_plan(plan, settings, tmp_path, backend="emu", driver_kind="killing-compose", workers=1)
    finally:
        assert project_containers() == [], "down must always run"
    assert time.monotonic() - t0 < 300, "a fault must not stall the plan"
    dep = "emu-vllm-disagg"
    first = json.loads((state.out / dep / "first/rep0/point.json").read_text())
    second = json.loads((state.out / dep / "second/rep0/point.json").read_text())
    assert first["status"] == "failed" and f"{dep}-decode died during the point" in first["failure"]
    assert first["native"]["last_logs"][f"{dep}-decode"].strip(), "the dead container's last log lines are kept"
    assert (state.out / dep / "first/rep0/requests.parquet").is_file(), "records up to the fault are kept"
    assert second["status"] == "failed" and second["failure"].startswith("skipped")
