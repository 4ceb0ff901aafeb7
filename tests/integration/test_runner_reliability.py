"""Faults around a running plan (emulated engines + the real routers as local processes, the real CLI):

- SIGTERM / SIGHUP (`kill PID`, a closed terminal) end the run like Ctrl-C: the deployment is taken down (no
  listener left on its ports), the manifest says `interrupted` with the signal, and `--resume` finishes the plan;
- a hung router (SIGSTOP: it accepts connections but never answers) fails the point after `liveness_timeout_s`,
  not after `point_timeout_s`, and the deployment's remaining points are skipped with that reason;
- a port held by someone else is named as the cause (not "prefill died during the point");
- a plan secret (allowed by the opt-in) is masked in plan.json and manifest.json, and no emulated service sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from suite.plan import Plan
from suite.runner import drivers
from suite.runner.drivers import ProcessDriver
from suite.runner.run import run_plan
from tests.integration.test_runner_faults import free_settings

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

WORKLOAD = {"classes": {"c": {"input": {"min": 32, "max": 64}, "output": {"min": 16, "max": 16}}}, "mix": {"c": 1},
            "arrival": {"kind": "poisson", "rate_rps": 4}, "api": "chat", "request_timeout_s": 30,
            "drain_timeout_s": 5}


def ports_of(settings) -> list[int]:
    return [settings.ENDPOINT_PORT, settings.ENGINE_A_PORT, settings.ENGINE_B_PORT, settings.ROUTER_METRICS_PORT]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def write_plan(d: Path, **kw) -> Path:
    import yaml

    data = {"name": "sig", "deployments": ["vllm-disagg"], "warmup_requests": 0, "workload": WORKLOAD | {
        "duration_s": 8}, "points": [{"label": "first"}, {"label": "second"}], "point_timeout_s": 90,
            "up_timeout_s": 90} | kw
    p = d / "plan.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def cli_run(d: Path, settings, *extra: str, env: dict | None = None) -> subprocess.Popen:
    env_file = d / "free.env"
    env_file.write_text("".join(f"{k}={getattr(settings, k)}\n" for k in type(settings).model_fields
                                if k.endswith("_PORT") or "_PORT_" in k))
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"} | {"PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.Popen([sys.executable, "-m", "suite.cli", "run", str(d / "plan.yaml"), "--backend", "emu",
                             "--driver", "process", "--workers", "1", "--out", str(d / "results"),
                             "--env-file", str(env_file), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=d)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_take_the_deployment_down_and_resume_finishes(tmp_path, sig):
    settings = free_settings()
    write_plan(tmp_path)
    proc = cli_run(tmp_path, settings)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "results").rglob("first/rep0.partial/loadspec.json")):  # load is running
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first point never started"
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {signal.Signals(sig).name}" in err and "--resume" in err
    assert not [p for p in ports_of(settings) if listening(p)], "a service of the deployment outlived the runner"
    run = next((tmp_path / "results" / "sig").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["interrupted"] == signal.Signals(sig).name
    assert "first/rep0" in manifest["fatal"]
    assert not list(run.rglob("*.partial")) and not list(run.rglob("point.json")), "the cut point re-runs"

    resumed = cli_run(tmp_path, settings, "--resume", "latest")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["interrupted"] is None
    assert sorted(p.parent.parent.name for p in run.rglob("point.json")) == ["first", "second"]


class StoppingDriver(ProcessDriver):
    """SIGSTOPs the router `after_s` into the first point: its socket still accepts, it never answers."""

    after_s = 2.0
    instances: list = []

    def up(self, timeout_s):
        super().up(timeout_s)
        StoppingDriver.instances.append(self)
        router = next(s.name for s in self.services if s.role == "router")
        threading.Timer(self.after_s, lambda: os.killpg(self.procs[router].pid, signal.SIGSTOP)).start()


def test_hung_router_fails_the_point_after_the_liveness_limit_and_skips_the_rest(tmp_path, monkeypatch):
    monkeypatch.setitem(drivers.DRIVERS, "stopping", StoppingDriver)
    StoppingDriver.instances = []
    settings = free_settings()
    plan = Plan(name="hung", deployments=["sglang-disagg"], warmup_requests=0,
                workload=WORKLOAD | {"duration_s": 30}, points=[{"label": "first"}, {"label": "second"}],
                point_timeout_s=300, up_timeout_s=60, liveness_timeout_s=6)
    t0 = time.monotonic()
    state = run_plan(plan, settings, tmp_path, backend="emu", driver_kind="stopping", workers=1)
    took = time.monotonic() - t0
    assert took < 120, f"the plan waited {took:.0f} s: the hung router was not noticed"
    dep = "emu-sglang-disagg"
    first = json.loads((state.out / dep / "first/rep0/point.json").read_text())
    second = json.loads((state.out / dep / "second/rep0/point.json").read_text())
    assert first["status"] == "failed" and "did not answer for 6 s" in first["failure"], first["failure"]
    assert second["status"] == "failed" and second["failure"].startswith("skipped: the deployment broke at first")
    assert "did not answer" in second["failure"]
    assert (state.out / dep / "first/rep0/requests.parquet").is_file(), "the records up to the stall are kept"
    assert not StoppingDriver.instances[-1].procs
    assert not [p for p in ports_of(settings) if listening(p)], "the stopped router must be taken down too"


def test_a_port_held_by_another_process_is_named_as_the_cause(tmp_path):
    settings = free_settings()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", settings.ENGINE_B_PORT))
    squatter.listen(1)
    try:
        plan = Plan(name="busy", deployments=["vllm-disagg"], warmup_requests=0,
                    workload=WORKLOAD | {"duration_s": 2}, points=[{"label": "only"}], up_timeout_s=30)
        state = run_plan(plan, settings, tmp_path, backend="emu", driver_kind="process", workers=1)
    finally:
        squatter.close()
    point = json.loads((state.out / "emu-vllm-disagg/only/rep0/point.json").read_text())
    assert point["status"] == "failed"
    assert f"port {settings.ENGINE_B_PORT} on 127.0.0.1 is already in use" in point["failure"], point["failure"]


def test_a_plan_secret_is_masked_on_disk_and_kept_from_emulated_services(tmp_path, monkeypatch):
    canary = "hf_canary_6f1d2a"
    monkeypatch.setenv("PDSUITE_ALLOW_TOKEN_IN_FILE", "1")
    monkeypatch.setenv("HF_TOKEN", canary)
    seen: dict[str, str] = {}

    class Peeking(ProcessDriver):
        def up(self, timeout_s):
            super().up(timeout_s)
            for name, p in self.procs.items():
                seen[name] = Path(f"/proc/{p.pid}/environ").read_bytes().decode(errors="replace")

    monkeypatch.setitem(drivers.DRIVERS, "peeking", Peeking)
    from suite.plan import apply_overrides

    plan = Plan(name="secret", deployments=["vllm-colocated"], warmup_requests=0,
                workload=WORKLOAD | {"duration_s": 2}, points=[{"label": "only"}], settings={"HF_TOKEN": canary})
    settings = apply_overrides(free_settings(), plan.settings)
    state = run_plan(plan, settings, tmp_path, backend="emu", driver_kind="peeking", workers=1)
    assert seen and not [n for n, env in seen.items() if canary in env], "an emulated service got the token"
    written = [p for p in state.out.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()]
    assert not written, f"the token was written to {written}"
    assert json.loads((state.out / "plan.json").read_text())["settings"]["HF_TOKEN"] == "***"
    manifest = json.loads((state.out / "manifest.json").read_text())
    assert manifest["settings"]["HF_TOKEN"] == "***" and manifest["plan_spec"]["settings"]["HF_TOKEN"] == "***"
    assert os.environ["HF_TOKEN"] == canary, "the caller's environment is restored"


def test_a_deployment_left_by_a_killed_runner_is_found_stopped_and_named(tmp_path):
    """SIGKILL leaves no chance to clean up: the services keep their ports. The next run finds them through the
    state file (its runner is dead), stops them, names them in the manifest, and its points run normally."""
    settings = free_settings()
    write_plan(tmp_path, points=[{"label": "only"}], workload=WORKLOAD | {"duration_s": 3})
    state_dir = tmp_path / "state"
    proc = cli_run(tmp_path, settings, env={"HOST_STATE_DIR": str(state_dir)})
    deadline = time.monotonic() + 120
    while not list((tmp_path / "results").rglob("only/rep0.partial/loadspec.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the point never started"
        time.sleep(0.2)
    children = _children(proc.pid)  # its Locust processes: this test ends them itself below
    proc.kill()
    proc.communicate(timeout=30)
    assert listening(settings.ENDPOINT_PORT), "a SIGKILLed runner leaves its deployment running"
    assert list(state_dir.glob("*.json")), "the state file names it"

    again = cli_run(tmp_path, settings, env={"HOST_STATE_DIR": str(state_dir)})
    _, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    run = max((tmp_path / "results" / "sig").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert any(line.startswith("emu-vllm-disagg: left running by pdsuite run pid") for line in manifest["leftovers"])
    assert not [p for p in ports_of(settings) if listening(p)] and not list(state_dir.glob("*.json"))
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _children(ppid: int) -> list[int]:
    """Direct children of `ppid` that are not in a session of their own (the deployment's services are)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid and int(fields[3]) != int(stat.parent.name):  # ppid matches, not a session leader
            out.append(int(stat.parent.name))
    return out
