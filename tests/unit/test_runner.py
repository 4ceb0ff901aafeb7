"""Runner: atomic points, resume after interruption, dead services and failed start-ups become failure records."""

import json
import time
from pathlib import Path

import pytest

import suite.load
import suite.scrape
from suite.config import Settings
from suite.load.cluster import LoadCluster
from suite.plan import Plan
from suite.runner import drivers
from suite.runner.drivers import DeployError, Driver
from suite.runner.run import run_plan

WORKLOAD = {"arrival": {"kind": "poisson", "rate_rps": 2}, "duration_s": 1}


class FakeDriver(Driver):
    instances: list = []
    fail_up = False
    die_after_loads = None  # service dies once this many loads ran

    def __init__(self, dep, settings, log_dir):
        super().__init__(dep, settings, log_dir)
        self.events = []
        FakeDriver.instances.append(self)

    def up(self, timeout_s):
        self.events.append("up")
        if self.fail_up:
            raise DeployError("router exited with 2: bad flag")

    def dead(self):
        n = FakeLoad.calls
        return [self.services[0].name] if self.die_after_loads is not None and n >= self.die_after_loads else []

    def logs(self, service, tail=50):
        return f"last words of {service}\n"

    def down(self):
        self.events.append("down")


class FakeLoad:
    calls = 0
    interrupt_on = None

    @classmethod
    def run(cls, endpoint, model, spec, out_dir, workers=2, timeout_s=60):
        cls.calls += 1
        if cls.interrupt_on == cls.calls:
            raise KeyboardInterrupt
        from suite.load.run import LoadSummary

        (Path(out_dir) / "requests.parquet").write_bytes(b"fake")
        return LoadSummary(sent=3, ok=3)


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    FakeDriver.instances, FakeDriver.fail_up, FakeDriver.die_after_loads = [], False, None
    FakeLoad.calls, FakeLoad.interrupt_on = 0, None
    monkeypatch.setitem(drivers.DRIVERS, "fake", FakeDriver)
    monkeypatch.setitem(vars(suite.load), "run_load", FakeLoad.run)
    monkeypatch.setattr(suite.scrape, "snapshot", lambda urls, out, timeout=5.0: Path(out).mkdir(parents=True))
    monkeypatch.setattr(LoadCluster, "spawn", lambda self: None)  # no Locust processes: run_load is faked


def plan(**kw) -> Plan:
    return Plan(**({"name": "t", "deployments": ["vllm-colocated", "vllm-disagg"], "workload": WORKLOAD,
                    "points": [{"label": "a"}, {"label": "b"}], "repetitions": 2, "warmup_requests": 0} | kw))


def points(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in out.rglob("point.json")}


def test_full_run_writes_every_point_and_timings(tmp_path):
    state = run_plan(plan(), Settings(), tmp_path, backend="emu", driver_kind="fake")
    got = points(state.out)
    assert len(got) == 8 and FakeLoad.calls == 8
    assert all(p["status"] == "ok" and p["emulated"] for p in got.values())
    assert set(got["emu-vllm-disagg/a/rep1"]["services"].values()) == {"prefill", "decode", "router"}
    manifest = json.loads((state.out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["emulated"] is True
    assert 0 <= manifest["timings"]["overhead_ratio"] <= 1
    assert [i.events for i in FakeDriver.instances] == [["down", "up", "down"]] * 2


def test_interrupt_keeps_finished_points_and_resume_runs_the_rest(tmp_path):
    FakeLoad.interrupt_on = 3
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan(), Settings(), tmp_path, backend="emu", driver_kind="fake")
    out = next((tmp_path / "t").iterdir())
    assert sorted(points(out)) == ["emu-vllm-colocated/a/rep0", "emu-vllm-colocated/a/rep1"]
    assert not list(out.rglob("*.partial")), "an interrupted point must not look finished"
    assert FakeDriver.instances[-1].events[-1] == "down"
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"

    FakeLoad.calls, FakeLoad.interrupt_on = 0, None
    state = run_plan(plan(), Settings(), tmp_path, backend="emu", driver_kind="fake", resume=out)
    assert FakeLoad.calls == 6 and len(points(out)) == 8
    assert json.loads((state.out / "manifest.json").read_text())["status"] == "complete"


def test_dead_service_fails_point_with_logs_and_skips_rest_of_deployment(tmp_path):
    FakeDriver.die_after_loads = 1
    state = run_plan(plan(deployments=["vllm-disagg"]), Settings(), tmp_path, backend="emu", driver_kind="fake")
    got = points(state.out)
    first = got["emu-vllm-disagg/a/rep0"]
    assert first["status"] == "failed" and "emu-vllm-disagg-prefill died" in first["failure"]
    assert "last words" in first["native"]["last_logs"]["emu-vllm-disagg-prefill"]
    assert (state.out / "emu-vllm-disagg/a/rep0/logs/emu-vllm-disagg-prefill.log").is_file()
    assert all(p["status"] == "failed" and p["failure"].startswith("skipped") for k, p in got.items()
               if k != "emu-vllm-disagg/a/rep0")
    assert FakeLoad.calls == 1 and len(state.failed) == 4


def test_failed_start_records_every_point_and_stops_when_asked(tmp_path):
    FakeDriver.fail_up = True
    state = run_plan(plan(on_failure="stop"), Settings(), tmp_path, backend="emu", driver_kind="fake")
    got = points(state.out)
    assert len(got) == 4 and all("bad flag" in p["failure"] for p in got.values())
    assert len(FakeDriver.instances) == 1 and FakeDriver.instances[0].events == ["down", "up", "down"]
    assert json.loads((state.out / "manifest.json").read_text())["status"] == "failed"


def test_load_error_is_a_failed_point_not_a_crash(tmp_path, monkeypatch):
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(vars(suite.load), "run_load", full_disk)
    state = run_plan(plan(deployments=["vllm-colocated"], repetitions=1), Settings(), tmp_path, backend="emu",
                     driver_kind="fake")
    got = points(state.out)
    assert all("No space left" in p["failure"] for p in got.values()) and len(got) == 2


def test_point_where_every_request_failed_is_a_failed_point(tmp_path, monkeypatch):
    from suite.load.run import LoadSummary

    def all_errors(*a, **k):
        return LoadSummary(sent=5, ok=0, errors=5)

    monkeypatch.setitem(vars(suite.load), "run_load", all_errors)
    state = run_plan(plan(deployments=["vllm-colocated"], repetitions=1), Settings(), tmp_path, backend="emu",
                     driver_kind="fake")
    got = points(state.out)
    assert all(p["status"] == "failed" and "all 5 requests failed" in p["failure"] for p in got.values())
    assert json.loads((state.out / "manifest.json").read_text())["status"] == "failed"


def test_compose_driver_ignores_exited_setup_checks_only(tmp_path, monkeypatch):
    """One-shot setup services (nixl/lmcache/mooncake checks) exit 0 by design; any other stopped service is dead."""
    import subprocess as _sp

    from suite.config import Settings
    from suite.deploy.catalog import get as get_dep
    from suite.runner.drivers import ComposeDriver

    out = ("sglang-disagg-kvpool-mooncake-check|exited|setup\nsglang-disagg-kvpool-prefill|running|prefill\n"
           "sglang-disagg-kvpool-decode|exited|decode\n")
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        return _sp.CompletedProcess(cmd, 0, out, "")

    drv = ComposeDriver(get_dep("sglang-disagg-kvpool"), Settings(), tmp_path)
    monkeypatch.setattr("suite.runner.drivers.subprocess.run", fake_run)
    assert drv.dead() == ["sglang-disagg-kvpool-decode"]
    assert "label=pdsuite.deployment=sglang-disagg-kvpool" in seen[0]


def test_a_label_that_leaves_out_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(ValueError, match="outside"):
        run_plan(plan(points=[{"label": "../../escaped"}]), Settings(), out, backend="emu", driver_kind="fake")
    assert not out.exists() and not (tmp_path / "escaped").exists() and FakeLoad.calls == 0


def test_watchdog_trips_on_a_silent_endpoint_and_on_a_dead_disk(tmp_path):
    import socket

    from suite.runner.liveness import Watchdog

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    tripped = []
    with Watchdog(f"http://127.0.0.1:{closed}/health", tmp_path, 0.6, tripped.append, interval_s=0.1) as w:
        time.sleep(1.5)
    assert w.tripped and "did not answer for 0.6 s" in w.tripped and tripped == [w.tripped]

    tripped.clear()
    with Watchdog(f"http://127.0.0.1:{closed}/health", tmp_path / "gone", 0.6, tripped.append,
                  interval_s=0.1) as w:
        time.sleep(1.5)
    assert tripped and len(tripped) == 1  # one reason (the first limit reached), one abort


def test_watchdog_stays_quiet_while_answers_come(tmp_path):
    from suite.runner.liveness import Watchdog, check_disk

    assert check_disk(tmp_path) is None and not list(tmp_path.iterdir()), "the probe file is removed"
    tripped = []
    with Watchdog("http://127.0.0.1:9/health", tmp_path, 30, tripped.append, interval_s=0.05):
        time.sleep(0.3)
    assert not tripped, "a failure shorter than the limit is no failure"


def test_an_unwritable_results_folder_mid_run_stops_with_one_line_and_resume_works(tmp_path, monkeypatch):
    import errno

    import suite.runner.run as run_mod

    real = run_mod.write_json
    calls = {"n": 0}

    def flaky(path, data):
        if path.name == "point.json":
            calls["n"] += 1
            if calls["n"] == 2:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real(path, data)

    monkeypatch.setattr(run_mod, "write_json", flaky)
    state = run_plan(plan(deployments=["vllm-colocated"]), Settings(), tmp_path, backend="emu", driver_kind="fake")
    assert state.fatal and state.fatal.startswith("cannot write results at ") and "Permission denied" in state.fatal
    assert "--resume" in state.fatal and "\n" not in state.fatal
    manifest = json.loads((state.out / "manifest.json").read_text())
    assert manifest["fatal"] == state.fatal and manifest["status"] == "partial"
    assert not list(state.out.rglob("*.partial")) and FakeDriver.instances[-1].events[-1] == "down"

    monkeypatch.setattr(run_mod, "write_json", real)
    state = run_plan(plan(deployments=["vllm-colocated"]), Settings(), tmp_path, backend="emu", driver_kind="fake",
                     resume=state.out)
    assert state.fatal is None and len(points(state.out)) == 4
