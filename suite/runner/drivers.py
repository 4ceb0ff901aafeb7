"""Bring a deployment up and down. Two drivers read the same generated compose services:

- ComposeDriver: `docker compose --profile <deployment>` - what users and CI run.
- ProcessDriver: the same commands as local processes (emulated deployments only: `pdsuite emulate` and the
  real router binaries) - for machines without Docker and for fast runner tests with fault injection.

Both answer: which services run, where their /metrics are, whether any died, and its last log lines.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from suite.config import Settings, expand
from suite.deploy.catalog import get as get_deployment
from suite.deploy.compose import deployment_services
from suite.deploy.model import Backend, Deployment, Role
from suite.frameworks.base import get as get_framework

ROOT = Path(__file__).resolve().parent.parent.parent


class DeployError(RuntimeError):
    """A deployment failed to start or died; the message says which service and why."""


@dataclass
class Service:
    name: str
    role: str
    port: int
    metrics_url: str


def services_of(dep: Deployment, settings: Settings) -> list[Service]:
    """Every engine and router of a deployment with its metrics URL (routers expose metrics separately)."""
    host = settings.BIND_ADDRESS
    out = []
    for e in dep.engines:
        port = getattr(settings, e.port_var)
        metrics = f"http://{host}:{port}/metrics"
        if e.role is Role.KVPOOL and dep.backend is Backend.GPU:  # LMCache's server speaks no HTTP
            var = get_framework(dep.framework).kvpool_metrics_port
            metrics = f"http://{host}:{getattr(settings, var)}/metrics" if var else ""
        out.append(Service(dep.service(e.name), e.role.value, port, metrics))
    if dep.router:
        out.append(Service(dep.service("router"), "router", settings.ENDPOINT_PORT,
                           f"http://{host}:{settings.ROUTER_METRICS_PORT}/metrics"))
    return out


def http_ok(url: str, timeout: float = 5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


class Driver:
    def __init__(self, dep: Deployment, settings: Settings, log_dir: Path):
        self.dep, self.settings, self.log_dir = dep, settings, log_dir
        self.services = services_of(dep, settings)

    @property
    def endpoint(self) -> str:
        return f"http://{self.settings.BIND_ADDRESS}:{self.settings.ENDPOINT_PORT}"

    def up(self, timeout_s: float) -> None: ...
    def dead(self) -> list[str]: ...
    def logs(self, service: str, tail: int = 50) -> str: ...
    def down(self) -> None: ...


class ComposeDriver(Driver):
    def _compose(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        env = os.environ | {k: str(v) for k, v in self.settings.model_dump().items()}
        cmd = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", self.dep.name, *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=check)
        except subprocess.TimeoutExpired:
            raise DeployError(f"`docker compose {' '.join(args)}` did not finish in {timeout:.0f}s") from None

    def up(self, timeout_s: float) -> None:
        r = self._compose("up", "-d", "--wait", "--wait-timeout", str(int(timeout_s)), timeout=timeout_s + 120)
        if r.returncode != 0:
            bad = self.dead() or [s.name for s in self.services]
            raise DeployError(f"{self.dep.name} did not become healthy: {r.stderr.strip().splitlines()[-1:]} "
                              f"| {bad[0]}: {self.logs(bad[0], 5).strip()[-400:]}")

    def dead(self) -> list[str]:
        """Services of this deployment whose container is not running. Asked of `docker ps` by label (~20 ms),
        not `docker compose ps` (~300 ms: it parses the whole compose file), since it runs after every point."""
        fmt = '{{.Label "com.docker.compose.service"}}|{{.State}}|{{.Label "pdsuite.role"}}'
        try:
            r = subprocess.run(["docker", "ps", "-a", "--filter", f"label=pdsuite.deployment={self.dep.name}",
                                "--format", fmt], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            raise DeployError("`docker ps` did not answer in 30 s") from None
        rows = [line.split("|") for line in r.stdout.splitlines() if line.count("|") == 2]
        return [svc for svc, state, role in rows if state != "running" and role != "setup"]  # checks exit 0

    def logs(self, service: str, tail: int = 50) -> str:
        return self._compose("logs", "--no-color", "--tail", str(tail), service, timeout=30).stdout

    def down(self) -> None:
        self._compose("down", "--remove-orphans", "--timeout", "20", timeout=180)


class ProcessDriver(Driver):
    """Runs an emulated deployment's compose commands as local processes (same argv, same env)."""

    def __init__(self, dep: Deployment, settings: Settings, log_dir: Path):
        if dep.backend is not Backend.EMU:
            raise DeployError(f"{dep.name}: only emulated deployments run without Docker; use Docker for it")
        super().__init__(dep, settings, log_dir)
        self.procs: dict[str, subprocess.Popen] = {}

    def _argv(self, svc: dict) -> list[str]:
        argv = shlex.split(expand(svc["command"], self.settings))
        if argv[0] == "pdsuite":
            return [sys.executable, "-m", "suite.cli", *argv[1:]]
        if argv[0] == "python3":
            return [sys.executable, *argv[1:]]
        return [str(Path(sys.executable).parent / argv[0]) if (Path(sys.executable).parent / argv[0]).exists()
                else argv[0], *argv[1:]]

    def up(self, timeout_s: float) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        svcs = deployment_services(self.dep)  # the very services compose would run
        engines = [n for n, s in svcs.items() if s["labels"]["pdsuite.role"] != "router"]
        routers = [n for n in svcs if n not in engines]
        for group in (engines, routers):
            for name in group:
                env = os.environ | {k: expand(str(v), self.settings) for k, v in svcs[name].get("environment",
                                                                                                {}).items()}
                log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
                self.procs[name] = subprocess.Popen(self._argv(svcs[name]), stdout=log, stderr=subprocess.STDOUT,
                                                    env=env, start_new_session=True)
            self._wait_healthy(group, timeout_s)

    def _wait_healthy(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        by_name = {s.name: s for s in self.services}
        pending = set(names)
        while pending:
            for name in list(pending):
                if self.procs[name].poll() is not None:
                    raise DeployError(f"{name} exited with {self.procs[name].returncode}: "
                                      f"{self.logs(name, 5).strip()[-400:]}")
                if http_ok(f"http://{self.settings.BIND_ADDRESS}:{by_name[name].port}/health", timeout=2):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise DeployError(f"{sorted(pending)[0]} not healthy after {timeout_s:.0f}s")
            time.sleep(0.2)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def logs(self, service: str, tail: int = 50) -> str:
        path = self.log_dir / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.is_file() else ""

    def kill(self, service: str) -> None:
        """Fault injection for tests: SIGKILL one service."""
        os.killpg(self.procs[service].pid, signal.SIGKILL)

    def down(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()


DRIVERS = {"compose": ComposeDriver, "process": ProcessDriver}


def make_driver(kind: str, deployment: str, settings: Settings, log_dir: Path) -> Driver:
    return DRIVERS[kind](get_deployment(deployment), settings, log_dir)
