"""A results volume that fills up mid-plan (a real 96 KiB tmpfs): the plan stops with one clear reason, finished
points stay intact, the unfinished one leaves nothing half-written, the deployment is taken down, and after space
is freed `--resume` finishes the rest."""

import json
import os
import subprocess
from pathlib import Path

import pytest

import suite.load
import suite.scrape
from suite.config import Settings
from suite.load.run import LoadSummary
from suite.plan import Plan
from suite.runner import drivers
from suite.runner.drivers import Driver
from suite.runner.run import run_plan

pytestmark = pytest.mark.integration


class NoopDriver(Driver):
    events: list = []

    def up(self, timeout_s):
        NoopDriver.events.append("up")

    def dead(self):
        return []

    def logs(self, service, tail=50):
        return ""

    def down(self):
        NoopDriver.events.append("down")


def fake_load(endpoint, model, spec, out_dir, workers=2, timeout_s=60):
    (Path(out_dir) / "requests.parquet").write_bytes(os.urandom(30_000))  # ~3 points fit in 96 KiB
    return LoadSummary(sent=3, ok=3)


@pytest.fixture
def tiny_volume(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(vol)]).returncode:
        pytest.skip("needs root to mount a tmpfs (CI runs as root)")
    yield vol
    # lazy: a file the run left open (its log) would make a plain umount fail "busy" and leak the mount
    subprocess.run(["umount", "-l", str(vol)], check=False)


def test_full_results_volume_stops_cleanly_and_resume_finishes(tiny_volume, monkeypatch):
    monkeypatch.setitem(drivers.DRIVERS, "noop", NoopDriver)
    monkeypatch.setitem(vars(suite.load), "run_load", fake_load)
    monkeypatch.setattr(suite.scrape, "snapshot", lambda urls, out, timeout=5.0: Path(out).mkdir(parents=True))
    NoopDriver.events = []
    plan = Plan(name="full", deployments=["vllm-colocated"], warmup_requests=0,
                workload={"arrival": {"kind": "poisson", "rate_rps": 2}, "duration_s": 1},
                points=[{"label": f"p{i}"} for i in range(6)])

    state = run_plan(plan, Settings(), tiny_volume, backend="emu", driver_kind="noop")
    assert state.fatal and "results volume full" in state.fatal and "--resume" in state.fatal
    done = sorted(p.parent.parent.name for p in state.out.rglob("point.json"))
    assert 1 <= len(done) < 6
    for p in state.out.rglob("point.json"):
        assert json.loads(p.read_text())["status"] == "ok"  # finished points intact
        assert (p.parent / "requests.parquet").stat().st_size == 30_000
    assert not list(state.out.rglob("*.partial")), "no half-written point may remain"
    assert NoopDriver.events[-1] == "down"

    subprocess.run(["mount", "-o", "remount,size=2m", str(tiny_volume)], check=True)  # space freed
    state2 = run_plan(plan, Settings(), tiny_volume, backend="emu", driver_kind="noop", resume=state.out)
    assert state2.fatal is None
    assert sorted(p.parent.parent.name for p in state.out.rglob("point.json")) == [f"p{i}" for i in range(6)]
    assert json.loads((state.out / "manifest.json").read_text())["status"] == "complete"
