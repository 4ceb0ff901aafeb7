"""Real faults during a plan (emulated engines + the real routers as local processes): a decode engine or the
router dies mid-point -> that point fails with the service's last log lines, the deployment's remaining points
are recorded as skipped, everything is torn down, and nothing hangs."""

import json
import threading
import time

import pytest

from suite.config import Settings
from suite.netutil import free_ports
from suite.plan import Plan
from suite.runner import drivers
from suite.runner.drivers import ProcessDriver, http_ok
from suite.runner.run import run_plan

pytestmark = pytest.mark.integration


def free_settings() -> Settings:
    names = ["ENDPOINT_PORT", "ENGINE_A_PORT", "ENGINE_B_PORT", "ENGINE_C_PORT", "ROUTER_METRICS_PORT",
             "VLLM_NIXL_PORT_PREFILL", "VLLM_NIXL_PORT_DECODE", "VLLM_NIXL_PORT_THIRD", "SGLANG_BOOTSTRAP_PORT",
             "SGLANG_BOOTSTRAP_PORT_THIRD", "LOCUST_WEB_PORT"]
    return Settings(**dict(zip(names, free_ports(len(names)), strict=True)))


class KillingDriver(ProcessDriver):
    """Kills one service `after_s` seconds into the first load point (the runner scrapes `before` first)."""

    victim_role = "decode"
    after_s = 2.0
    instances: list = []

    def up(self, timeout_s):
        super().up(timeout_s)
        KillingDriver.instances.append(self)
        victim = next(s.name for s in self.services if s.role == self.victim_role)
        threading.Timer(self.after_s, self.kill, args=(victim,)).start()


@pytest.fixture
def killing(monkeypatch):
    monkeypatch.setitem(drivers.DRIVERS, "killing", KillingDriver)
    KillingDriver.instances = []
    return KillingDriver


@pytest.mark.parametrize("framework, victim", [("vllm", "decode"), ("sglang", "router")])
def test_service_dying_mid_point_fails_it_and_skips_the_rest(tmp_path, killing, framework, victim):
    killing.victim_role = victim
    settings = free_settings()
    plan = Plan(name="faults", deployments=[f"{framework}-disagg"], warmup_requests=0, repetitions=1,
                workload={"classes": {"c": {"input": {"min": 64, "max": 128}, "output": {"min": 64, "max": 64}}},
                          "mix": {"c": 1}, "arrival": {"kind": "poisson", "rate_rps": 4}, "duration_s": 6,
                          "api": "chat", "request_timeout_s": 10, "drain_timeout_s": 5},
                points=[{"label": "first"}, {"label": "second"}], point_timeout_s=60, up_timeout_s=60)
    t0 = time.monotonic()
    state = run_plan(plan, settings, tmp_path, backend="emu", driver_kind="killing", workers=1)
    assert time.monotonic() - t0 < 150, "a fault must not stall the plan"

    dep = f"emu-{framework}-disagg"
    first = json.loads((state.out / dep / "first/rep0/point.json").read_text())
    second = json.loads((state.out / dep / "second/rep0/point.json").read_text())
    victim_name = f"{dep}-{victim}"
    assert first["status"] == "failed" and f"{victim_name} died during the point" in first["failure"]
    assert first["native"]["last_logs"][victim_name].strip(), "the dead service's last log lines are kept"
    assert (state.out / dep / "first/rep0/requests.parquet").is_file(), "records up to the fault are kept"
    assert second["status"] == "failed" and second["failure"].startswith("skipped")
    manifest = json.loads((state.out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and len(manifest["failed_points"]) == 2
    # torn down: no process left, the endpoint is gone
    driver = killing.instances[-1]
    assert not driver.procs
    assert not http_ok(f"http://127.0.0.1:{settings.ENDPOINT_PORT}/health", timeout=1)
