"""What the host driver needs from the host: where engines are installed, which GPUs exist, free ports, process
groups it owns (and a state file naming them), and the root-cause line of a failed engine's log."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from suite.config import Settings
from suite.deploy.model import Deployment, Engine


@dataclass(frozen=True)
class EnginePaths:
    """ENGINE_PREFIX: colon-separated folders holding engines and routers. A venv (bin/python) puts its bin/ on
    PATH; a `pip install --target` folder (the offline wheelhouse's prefix) also goes on PYTHONPATH."""

    prefixes: tuple[Path, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> EnginePaths:
        return cls(tuple(Path(p).expanduser().resolve() for p in settings.ENGINE_PREFIX.split(":") if p))

    def environ(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        bins = [str(p / "bin") for p in self.prefixes if (p / "bin").is_dir()]
        targets = [str(p) for p in self.prefixes if not (p / "pyvenv.cfg").is_file()]
        if bins:
            env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
        if targets:
            env["PYTHONPATH"] = os.pathsep.join([*targets, *filter(None, [env.get("PYTHONPATH")])])
        return env

    def venv_python(self) -> str | None:
        """The python3 of the first venv prefix (its engine's interpreter), if any."""
        return next((str(p / "bin" / "python3") for p in self.prefixes if (p / "pyvenv.cfg").is_file()), None)

    def resolve(self, argv: list[str]) -> list[str]:
        """argv with its program found on the prefixes' PATH (unchanged when not found: preflight says so)."""
        found = shutil.which(argv[0], path=self.environ(dict(os.environ)).get("PATH"))
        beside = Path(sys.executable).parent / argv[0]  # the suite's own venv (routers, locust)
        return [found or (str(beside) if beside.is_file() else argv[0]), *argv[1:]]


def host_gpus(eng: Engine, settings: Settings) -> str:
    """Host GPU indices for CUDA_VISIBLE_DEVICES, exactly what the engine's container would see: the GPUs it
    reserves (its GPU settings, PCI order), narrowed by the container-side CUDA ordinals it pins."""
    visible = [str(getattr(settings, g)) for g in eng.gpu_vars]
    ordinals = [int(o) for o in eng.cuda_devices.split(",") if o.strip()]
    return ",".join(visible[o] for o in ordinals) if ordinals else ",".join(visible)


def gpu_count() -> int | None:
    """GPUs on this host (nvidia-smi -L), or None where there is no NVIDIA driver."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no owner
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def tcp_ok(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def preflight(dep: Deployment, settings: Settings, plan: dict[str, tuple[list[str], dict[str, str], str]]) -> str:
    """One line naming the first thing that would stop the deployment, before anything starts ('' if none)."""
    from suite.deploy.catalog import port_settings
    from suite.deploy.model import Backend

    for name, (argv, env, _role) in plan.items():
        if not shutil.which(argv[0], path=env.get("PATH")):
            return (f"{name}: `{argv[0]}` not found on PATH or ENGINE_PREFIX ({settings.ENGINE_PREFIX or 'unset'}); "
                    "install the engine there (docs/gpu-runbook.md) or set ENGINE_PREFIX")
    for var in port_settings(dep):
        port = getattr(settings, var)
        if not port_free(settings.BIND_ADDRESS, port):
            return f"{dep.name}: port {port} ({var}) on {settings.BIND_ADDRESS} is in use; free it or change {var}"
    if dep.backend is Backend.GPU:
        have = gpu_count()
        used = sorted({g for e in dep.engines for g in e.gpu_vars})
        if have is None:
            return f"{dep.name}: no NVIDIA GPU on this host (nvidia-smi not found)"
        for var in used:
            if getattr(settings, var) >= have:
                return f"{dep.name}: {var}={getattr(settings, var)} but this host has {have} GPU(s) (nvidia-smi -L)"
    return ""


# ---- root cause of a failed start -------------------------------------------------------------------------------
_WARN = re.compile(r"(^|\s|\])(WARNING|WARN)\b")
_EXC = re.compile(r"\b([A-Z]\w*(?:Error|Exception)|error|ERROR)\b[:\]]?\s")
_PREFIX = re.compile(r"^(\(\w+[^)]*\)\s*)?(\w+ \d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \[[^\]]*\]\s*)?")


def root_cause(log: str, patterns: tuple[str, ...] = ()) -> str:
    """The line that says why: the first line matching a framework's known root causes, else the LAST exception
    line that is not a generic wrapper (vLLM ends with "Engine core initialization failed. See root cause above"),
    else the last non-empty line."""
    # WARNING lines are not causes: vLLM 0.26 logs an optional module's failed import (nixl_ep) as a warning
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not _WARN.search(ln)]
    for pat in patterns:
        rx = re.compile(pat)
        for ln in lines:
            if rx.search(ln):
                return _short(ln)
    generic = re.compile(r"See root cause above|Engine core initialization failed|^Traceback|^During handling")
    for ln in reversed(lines):
        if _EXC.search(ln) and not generic.search(ln):
            return _short(ln)
    return _short(lines[-1]) if lines else "(no log output)"


def _short(line: str) -> str:
    line = _PREFIX.sub("", line)
    return line if len(line) <= 300 else line[:297] + "..."


# ---- process groups and the state file --------------------------------------------------------------------------
def state_dir(settings: Settings) -> Path:
    return Path(settings.HOST_STATE_DIR).expanduser()


def write_state(settings: Settings, deployment: str, pids: dict[str, int], log_dir: Path) -> None:
    d = state_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    data = {"deployment": deployment, "services": pids, "runner_pid": os.getpid(), "log_dir": str(log_dir),
            "started_at": time.time()}
    tmp = d / f"{deployment}.json.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, d / f"{deployment}.json")


def clear_state(settings: Settings, deployment: str) -> None:
    (state_dir(settings) / f"{deployment}.json").unlink(missing_ok=True)


def read_states(settings: Settings) -> list[dict]:
    out = []
    for f in sorted(state_dir(settings).glob("*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    return out


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_groups(groups: dict[str, int], procs: dict | None = None, grace_s: float = 15) -> None:
    """SIGTERM every group (engines shut their workers down), SIGKILL what is left after the grace period."""
    for pgid in groups.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
            os.killpg(pgid, signal.SIGCONT)  # a stopped (hung) process only acts on SIGTERM once continued
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_alive(g) for g in groups.values()):
        for p in (procs or {}).values():
            p.poll()  # reap our own children so their group can empty
        time.sleep(0.1)
    for pgid in groups.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    for p in (procs or {}).values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


def down_stale(settings: Settings, deployment: str | None = None) -> list[str]:
    """Take down host deployments named in state files (a runner that died, or `make up-X DRIVER=host`);
    returns the deployments taken down."""
    done = []
    for st in read_states(settings):
        if deployment and st.get("deployment") != deployment:
            continue
        groups = {k: int(v) for k, v in st.get("services", {}).items()}
        if any(group_alive(g) for g in groups.values()):
            stop_groups(groups)
            done.append(st["deployment"])
        clear_state(settings, st["deployment"])
    return done
