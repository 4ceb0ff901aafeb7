"""Bring a deployment up and down. Two drivers read the same generated compose services:

- ComposeDriver: `docker compose --profile <deployment>` - what users and CI run.
- HostDriver (`--driver host`; `process` is its former name): the same commands as local processes, engines from
  the user's environment - for hosts without Docker (Slurm/HPC) and for fast runner tests with fault injection.

Both answer: which services run, where their /metrics are, whether any died, and its last log lines.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from suite.config import SECRET_SETTINGS, Settings, expand
from suite.deploy.catalog import get as get_deployment
from suite.deploy.compose import deployment_services
from suite.deploy.model import Backend, Deployment, Role
from suite.frameworks.base import get as get_framework
from suite.runner import hostenv

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
    kind = ""

    def __init__(self, dep: Deployment, settings: Settings, log_dir: Path):
        self.dep, self.settings, self.log_dir = dep, settings, log_dir
        self.services = services_of(dep, settings)
        self.versions: dict[str, str] = {}

    @property
    def endpoint(self) -> str:
        return f"http://{self.settings.BIND_ADDRESS}:{self.settings.ENDPOINT_PORT}"

    def up(self, timeout_s: float) -> None: ...
    def dead(self) -> list[str]: ...
    def logs(self, service: str, tail: int = 50) -> str: ...
    def down(self) -> None: ...

    def engine_versions(self) -> dict[str, str]:
        return engine_versions(self)


class ComposeDriver(Driver):
    kind = "compose"

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


class HostDriver(Driver):
    """Runs any deployment's compose services as local processes: the same argv and environment compose would
    give the containers (rendered from the same catalog and settings), engines and routers taken from the user's
    environment (PATH, or ENGINE_PREFIX: venvs or `pip install --target` folders). For hosts without Docker
    (Slurm/HPC nodes) and for fast runner tests. Every service runs in its own process group, so `down` ends the
    engine's worker processes too; a state file names the groups, so `pdsuite down --driver host` and the next
    run find what a dead runner left behind."""

    kind = "host"

    def __init__(self, dep: Deployment, settings: Settings, log_dir: Path):
        super().__init__(dep, settings, log_dir)
        self.procs: dict[str, subprocess.Popen] = {}
        self.env_paths = hostenv.EnginePaths.from_settings(settings)

    def _argv(self, svc: dict) -> list[str]:
        argv = [*svc.get("entrypoint", []), *shlex.split(expand(svc.get("command", ""), self.settings))]
        engine = svc["labels"]["pdsuite.role"] not in ("router", "setup")
        if engine and not svc.get("entrypoint") and self.dep.backend is not Backend.EMU:  # the image's entrypoint
            argv = [*get_framework(self.dep.framework).image_entrypoint, *argv]
        if argv[0] == "pdsuite":  # the suite itself: this interpreter, this checkout
            return [sys.executable, "-m", "suite.cli", *argv[1:]]
        if argv[0] == "python3" and not self.env_paths.venv_python() and (not engine or self.dep.emulated):
            return [sys.executable, *argv[1:]]  # routers installed with the suite (sglang_router)
        return self.env_paths.resolve(argv)

    def _env(self, name: str, svc: dict) -> dict[str, str]:
        env = {k: expand(str(v), self.settings) for k, v in svc.get("environment", {}).items()}
        engine = next((e for e in self.dep.engines if self.dep.service(e.name) == name), None)
        if self.dep.backend is Backend.GPU and engine is not None and engine.gpu_vars:
            # what the container would see: its reserved GPUs, narrowed by the ordinals it pins
            env["CUDA_VISIBLE_DEVICES"] = hostenv.host_gpus(
                engine.model_copy(update={"cuda_devices": env.get("CUDA_VISIBLE_DEVICES", "")}), self.settings)
        if self.dep.backend is Backend.GPU and engine is not None:
            env.setdefault("HF_HOME", str(Path(self.settings.MODEL_CACHE_DIR).expanduser()))
        # a secret reaches only a service whose definition names it (real engines: HF_TOKEN), never by inheritance
        base = {k: v for k, v in os.environ.items() if k not in SECRET_SETTINGS}
        return self.env_paths.environ(base) | env | {"PYTHONUNBUFFERED": "1"}

    def services_argv(self) -> dict[str, tuple[list[str], dict[str, str], str]]:
        """service -> (argv, env, role): what `up` starts, for preflight checks and `--dry-run` output."""
        out = {}
        for name, svc in deployment_services(self.dep).items():
            out[name] = (self._argv(svc), self._env(name, svc), svc["labels"]["pdsuite.role"])
        return out

    def up(self, timeout_s: float) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        plan = self.services_argv()
        problem = hostenv.preflight(self.dep, self.settings, plan)
        if problem:
            raise DeployError(problem)
        setup = [n for n, (_, _, role) in plan.items() if role == "setup"]
        pool = [n for n, (_, _, role) in plan.items() if role == Role.KVPOOL.value]
        routers = [n for n, (_, _, role) in plan.items() if role == "router"]
        engines = [n for n in plan if n not in setup + pool + routers]
        for name in setup:  # one-shot checks (NIXL present, ...): must exit 0 before any engine starts
            self._start(name, plan[name])
            self._wait_exit(name, 120)
        for group in (pool, *gpu_waves(engines, plan), routers):
            for name in group:
                self._start(name, plan[name])
            self._wait_healthy(group, timeout_s)

    def _start(self, name: str, spec: tuple[list[str], dict[str, str], str]) -> None:
        argv, env, _ = spec
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        try:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise DeployError(f"{name}: cannot start {argv[0]}: {e.strerror}") from None
        finally:
            log.close()
        hostenv.write_state(self.settings, self.dep.name, {n: p.pid for n, p in self.procs.items()}, self.log_dir)

    def _wait_exit(self, name: str, timeout_s: float) -> None:
        try:
            rc = self.procs[name].wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise DeployError(f"{name}: setup check did not finish in {timeout_s:.0f}s") from None
        if rc != 0:
            raise DeployError(f"{name} failed (exit {rc}): {self.root_cause(name)}")

    def _wait_healthy(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        by_name = {s.name: s for s in self.services}
        paths = {s.name: get_framework(self.dep.framework).health_path for s in self.services}
        pending = set(names)
        while pending:
            for name in sorted(pending):
                if self.procs[name].poll() is not None:
                    raise DeployError(f"{name} exited with {self.procs[name].returncode} before it was healthy: "
                                      f"{self.root_cause(name)}")
                svc = by_name[name]
                path = "/health" if svc.role in ("router", "kvpool") else paths[name]
                if svc.role == "kvpool" and self.dep.backend is Backend.GPU:
                    ok = hostenv.tcp_ok(self.settings.BIND_ADDRESS, svc.port)
                else:
                    ok = http_ok(f"http://{self.settings.BIND_ADDRESS}:{svc.port}{path}", timeout=2)
                if ok:
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                name = sorted(pending)[0]
                raise DeployError(f"{name} not healthy after {timeout_s:.0f}s: {self.root_cause(name)}")
            time.sleep(0.5 if self.dep.backend is Backend.GPU else 0.2)

    def root_cause(self, service: str) -> str:
        """The line of the service's log that says why it failed (framework-declared patterns first, e.g.
        "NIXL is not available"), not only the engine's generic last words."""
        fw = get_framework(self.dep.framework)
        return hostenv.root_cause(self.logs(service, 400), fw.failure_patterns)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None and n in {s.name for s in self.services}]

    def logs(self, service: str, tail: int = 50) -> str:
        path = self.log_dir / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.is_file() else ""

    def kill(self, service: str) -> None:
        """Fault injection for tests: SIGKILL one service."""
        os.killpg(self.procs[service].pid, signal.SIGKILL)

    def down(self) -> None:
        hostenv.stop_groups({n: p.pid for n, p in self.procs.items()}, procs=self.procs)
        self.procs.clear()
        hostenv.clear_state(self.settings, self.dep.name)


def gpu_waves(engines: list[str], plan: dict[str, tuple[list[str], dict[str, str], str]]) -> list[list[str]]:
    """Engines in start waves: an engine that shares a GPU with one of the current wave waits for it to be healthy.
    vLLM sizes its KV cache from the memory it sees free while profiling; two engines profiling one GPU at once
    (P and D of a *-1gpu deployment) leave one of them "No available memory for the cache blocks" (measured on an
    H200 with vLLM 0.26)."""
    waves: list[list[str]] = []
    used: set[str] = set()
    for name in engines:
        gpus = {g for g in plan[name][1].get("CUDA_VISIBLE_DEVICES", "").split(",") if g}
        if not waves or gpus & used:
            waves.append([])
            used = set()
        waves[-1].append(name)
        used |= gpus
    return waves


ProcessDriver = HostDriver  # the former name (emulated deployments only); same driver


def engine_versions(driver: Driver) -> dict[str, str]:
    """The version each engine reports about itself (vLLM GET /version), not the version the settings name."""
    fw = get_framework(driver.dep.framework)
    out = {}
    for s in driver.services:
        if s.role in ("router", "kvpool") or not fw.version_path:
            continue
        try:
            with urllib.request.urlopen(f"http://{driver.settings.BIND_ADDRESS}:{s.port}{fw.version_path}",
                                        timeout=5) as r:
                out[s.name] = str(json.loads(r.read()).get(fw.version_key, "?"))
        except Exception:
            out[s.name] = "unknown"
    return out


DRIVERS = {"compose": ComposeDriver, "host": HostDriver, "process": HostDriver}


def make_driver(kind: str, deployment: str, settings: Settings, log_dir: Path) -> Driver:
    return DRIVERS[kind](get_deployment(deployment), settings, log_dir)
