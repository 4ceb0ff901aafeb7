"""The host driver (`--driver host`): real command lines as local processes, engines from ENGINE_PREFIX, one clear
line for every start-up failure, no orphan after down, and a state file the next run can act on."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from suite.config import Settings
from suite.deploy.catalog import get
from suite.runner import hostenv
from suite.runner.drivers import DeployError, HostDriver

pytestmark = pytest.mark.integration
FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_engine"
FAKE_GPU = FAKE.parent / "fake_gpu"  # nvidia-smi listing one GPU


@pytest.fixture
def prefix(tmp_path, monkeypatch):
    """An ENGINE_PREFIX venv-like folder holding the stand-in `vllm`; the stand-in nvidia-smi on PATH."""
    (tmp_path / "eng" / "bin").mkdir(parents=True)
    shutil.copy(FAKE / "vllm", tmp_path / "eng" / "bin" / "vllm")
    (tmp_path / "eng" / "pyvenv.cfg").write_text("")
    monkeypatch.setenv("PATH", f"{FAKE_GPU}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ENGINE_PIDS", str(tmp_path / "pids"))
    return tmp_path


def settings_for(tmp: Path, **kw) -> Settings:
    base = {"ENGINE_PREFIX": str(tmp / "eng"), "HOST_STATE_DIR": str(tmp / "state"), "ENDPOINT_PORT": 18600,
            "ENGINE_A_PORT": 18610, "ENGINE_B_PORT": 18620, "ROUTER_METRICS_PORT": 18630, "MODEL": "m"}
    return Settings(**(base | kw))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_engine_dies_at_start_quotes_the_root_cause(prefix, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_MODE", "nixl")
    d = HostDriver(get("vllm-colocated-1gpu"), settings_for(prefix), prefix / "logs")
    with pytest.raises(DeployError) as e:
        d.up(60)
    msg = str(e.value)
    assert msg.startswith("vllm-colocated-1gpu-engine exited with 1 before it was healthy")
    assert "NIXL is not available" in msg and "\n" not in msg
    d.down()


def test_healthy_engine_version_pinning_and_no_orphans(prefix):
    s = settings_for(prefix, PREFILL_GPU=0)
    d = HostDriver(get("vllm-colocated-1gpu"), s, prefix / "logs")
    d.up(60)
    try:
        assert d.engine_versions() == {"vllm-colocated-1gpu-engine": "0.26.0-fake"}  # asked of the engine
        engine_pid, worker_pid, gpus = (prefix / "pids").read_text().split()
        assert gpus == "0"  # CUDA_VISIBLE_DEVICES = the host index of PREFILL_GPU
        assert [st["deployment"] for st in hostenv.read_states(s)] == ["vllm-colocated-1gpu"]
    finally:
        d.down()
    assert not alive(int(engine_pid)) and not alive(int(worker_pid))  # the whole group, workers included
    assert hostenv.read_states(s) == []
    assert (prefix / "logs" / "vllm-colocated-1gpu-engine.log").is_file()


def test_stale_deployment_of_a_dead_runner_is_taken_down(prefix):
    s = settings_for(prefix)
    d = HostDriver(get("vllm-colocated-1gpu"), s, prefix / "logs")
    d.up(60)
    _engine, worker_pid, _ = (prefix / "pids").read_text().split()
    d.procs.clear()  # the runner "dies": nothing of it stops the engine
    assert hostenv.down_stale(s) == ["vllm-colocated-1gpu"]
    deadline = time.monotonic() + 10
    while alive(int(worker_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(int(worker_pid))


@pytest.mark.parametrize("case", ["missing", "port", "gpu"])
def test_preflight_one_line_before_anything_starts(prefix, case):
    kw = {}
    if case == "missing":
        kw["ENGINE_PREFIX"] = str(prefix / "nowhere")
    if case == "gpu":
        kw |= {"PREFILL_GPU": 3, "DECODE_GPU": 4}
    s = settings_for(prefix, **kw)
    d = HostDriver(get("vllm-colocated-1gpu"), s, prefix / "logs")
    with socket.socket() as busy:
        if case == "port":
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            busy.bind(("127.0.0.1", s.ENDPOINT_PORT))
            busy.listen()
        try:
            with pytest.raises(DeployError) as e:
                d.up(30)
        finally:
            d.down()
    want = {"missing": "`vllm` not found on PATH or ENGINE_PREFIX", "port": "port 18600 (ENDPOINT_PORT)",
            "gpu": "PREFILL_GPU=3 but this host has 1 GPU(s)"}[case]
    assert want in str(e.value)
    assert not (prefix / "pids").exists()  # nothing was started


def test_root_cause_prefers_known_patterns_then_last_exception():
    log = ("INFO loading\nNIXL is not available\nTraceback (most recent call last):\n"
           "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n")
    assert hostenv.root_cause(log, (r"NIXL is not available",)) == "NIXL is not available"
    assert hostenv.root_cause("a\nValueError: bad max_model_len\nRuntimeError: Engine core initialization failed. "
                              "See root cause above.\n") == "ValueError: bad max_model_len"


def test_root_cause_of_a_real_vllm_start_failure():
    """vLLM 0.26 on an H200: the decode engine of a one-GPU P/D pair, started while the prefill engine profiled the
    same GPU. The optional nixl_ep import fails as a WARNING first; the cause is the KV-cache sizing error."""
    from suite.frameworks.base import get as framework

    log = (FAKE.parent / "vllm-0.26-h200" / "disagg-1gpu-decode-start-failure.log").read_text()
    cause = hostenv.root_cause(log, framework("vllm").failure_patterns)
    assert cause.startswith("ValueError: No available memory for the cache blocks")


def test_engines_sharing_a_gpu_start_one_after_another(prefix):
    from suite.runner.drivers import gpu_waves

    d = HostDriver(get("vllm-disagg-1gpu"), settings_for(prefix), prefix / "logs")
    plan = d.services_argv()
    engines = [n for n, (_, _, role) in plan.items() if role in ("prefill", "decode")]
    assert gpu_waves(engines, plan) == [["vllm-disagg-1gpu-prefill"], ["vllm-disagg-1gpu-decode"]]
    two = HostDriver(get("vllm-disagg"), settings_for(prefix), prefix / "logs").services_argv()
    pd = [n for n, (_, _, role) in two.items() if role in ("prefill", "decode")]
    assert gpu_waves(pd, two) == [pd]  # one GPU each: both start at once
