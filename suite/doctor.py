"""`pdsuite doctor`: everything that would make `make up-...` fail, checked before anything starts.

Each check returns ok / warn / fail with one line of detail; any fail exits non-zero. External commands go
through `Probe`, so tests can feed recorded outputs (nvidia-smi, docker) instead of real ones.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import typer

GATED_ORGS = ("meta-llama/", "mistralai/", "google/gemma")  # hub ids that need an accepted licence + token


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


class Probe:
    """Runs external commands; returns (exit code, stdout). Replace in tests."""

    def run(self, *argv: str, timeout: float = 20) -> tuple[int, str]:
        if not shutil.which(argv[0]):
            return 127, ""
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, ""
        return p.returncode, p.stdout

    def port_free(self, host: str, port: int) -> bool:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
        return True


def check_docker(p: Probe) -> list[Check]:
    rc, out = p.run("docker", "version", "--format", "{{.Server.Version}}")
    if rc == 127:
        return [Check("docker", "fail", "docker CLI not found: install Docker Engine")]
    if rc != 0:
        return [Check("docker", "fail", "Docker daemon not reachable: start it (or add your user to the docker group)")]
    checks = [Check("docker", "ok", f"engine {out.strip()}")]
    rc, out = p.run("docker", "compose", "version", "--short")
    checks.append(Check("compose", "ok", f"Compose {out.strip()}") if rc == 0 and out.strip().startswith(("2", "v2"))
                  else Check("compose", "fail", "Docker Compose v2 plugin missing (`docker compose version` failed)"))
    return checks


def parse_gpus(csv: str) -> dict[int, tuple[str, int, int]]:
    """nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader,nounits"""
    gpus = {}
    for line in csv.strip().splitlines():
        idx, name, total, used = (x.strip() for x in line.split(","))
        gpus[int(idx)] = (name, int(total), int(used))
    return gpus


def link_between(topo: str, a: int, b: int) -> str:
    """The `nvidia-smi topo -m` cell for GPU a -> GPU b (NV18, PIX, SYS, ...)."""
    for row in topo.splitlines():  # the header row starts with whitespace, data rows with "GPUn"
        cells = row.split()
        if row.startswith(f"GPU{a}") and cells[0] == f"GPU{a}" and len(cells) > b + 1:
            return cells[b + 1]
    return "?"


def check_gpus(p: Probe, settings, gpus_needed: int) -> list[Check]:
    rc, runtimes = p.run("docker", "info", "--format", "{{json .Runtimes}}")
    checks = []
    if rc == 0 and "nvidia" not in runtimes:
        checks.append(Check("nvidia-runtime", "warn", "no 'nvidia' Docker runtime listed: install NVIDIA Container "
                                                     "Toolkit (CDI setups may still work)"))
    rc, out = p.run("nvidia-smi", "--query-gpu=index,name,memory.total,memory.used",
                    "--format=csv,noheader,nounits")
    if rc != 0:
        return [*checks, Check("gpus", "fail", "nvidia-smi failed: no NVIDIA driver/GPU on this host "
                                               "(use the emu-* or cpu-* profiles without GPUs)")]
    gpus = parse_gpus(out)
    want = [settings.PREFILL_GPU, settings.DECODE_GPU, settings.THIRD_GPU][:gpus_needed]
    missing = [g for g in want if g not in gpus]
    if missing:
        return [*checks, Check("gpus", "fail", f"GPU index {missing[0]} does not exist (host has "
                                               f"{sorted(gpus)}): set PREFILL_GPU/DECODE_GPU in .env")]
    checks.append(Check("gpus", "ok", "; ".join(f"{g}: {gpus[g][0]} {gpus[g][1] // 1024} GiB" for g in want)))
    for g in want:
        _, total, used = gpus[g]
        free = 1 - used / total
        if free < settings.GPU_MEMORY_FRACTION:
            checks.append(Check(f"gpu{g}-memory", "fail", f"GPU {g} has {free:.0%} memory free, engines need "
                                                          f"GPU_MEMORY_FRACTION={settings.GPU_MEMORY_FRACTION}: "
                                                          "stop what runs there or lower the fraction"))
    if gpus_needed >= 2:
        rc, topo = p.run("nvidia-smi", "topo", "-m")
        links = {(a, b): link_between(topo, a, b) if rc == 0 else "?" for i, a in enumerate(want) for b in want[i + 1:]}
        status = "ok" if all(v.startswith("NV") for v in links.values()) else "warn"
        detail = ", ".join(f"GPU{a}<->GPU{b}: {v}" for (a, b), v in links.items())
        checks.append(Check("nvlink", status, detail + ("" if status == "ok" else
                                                         " (no NVLink: KV transfer and TP run over PCIe/host)")))
    return checks


def check_ports(p: Probe, settings, port_vars: list[str]) -> list[Check]:
    busy = [f"{v}={getattr(settings, v)}" for v in port_vars
            if not p.port_free(settings.BIND_ADDRESS, getattr(settings, v))]
    if busy:
        return [Check("ports", "fail", f"port already in use on {settings.BIND_ADDRESS}: {', '.join(busy)} "
                                       "(`make down`, or change it in .env)")]
    return [Check("ports", "ok", f"{len(port_vars)} ports free on {settings.BIND_ADDRESS}")]


def check_model(settings) -> list[Check]:
    model = settings.MODEL
    if Path(model).is_absolute() or model.startswith("."):
        return [Check("model", "ok", f"local path {model}")]
    cache = Path(settings.MODEL_CACHE_DIR).expanduser() / "hub" / ("models--" + model.replace("/", "--"))
    if cache.is_dir():
        return [Check("model", "ok", f"{model} in cache {cache.parent}")]
    if settings.HF_TOKEN:
        return [Check("model", "ok", f"{model} will be downloaded with HF_TOKEN")]
    if model.startswith(GATED_ORGS):
        return [Check("model", "fail", f"{model} is gated and not cached: export HF_TOKEN (after accepting its "
                                       "licence on the Hub) or pre-fill MODEL_CACHE_DIR")]
    return [Check("model", "warn", f"{model} not cached and no HF_TOKEN: fine only if it is public")]


def check_setup_services(p: Probe, settings, dep) -> list[Check]:
    """Run the deployment's one-shot setup services (e.g. vLLM's NIXL check) in their image, if it is pulled."""
    from suite.frameworks.base import get

    fw = get(dep.framework)
    image = getattr(settings, fw.image_setting)
    checks = []
    for name, svc in fw.setup_services(dep).items():
        if p.run("docker", "image", "inspect", image)[0] != 0:
            checks.append(Check(name, "warn", f"{image} not pulled yet; the {name} service runs at start"))
            continue
        entry = svc["entrypoint"]
        rc, out = p.run("docker", "run", "--rm", "--entrypoint", entry[0], image, *entry[1:], timeout=180)
        checks.append(Check(name, "ok" if rc == 0 else "fail", f"{image}: {out.strip() or f'exit {rc}'}"))
    return checks


def diagnose(profile: str | None, settings, probe: Probe | None = None) -> list[Check]:
    from suite.deploy.catalog import get, gpu_order_problem, port_settings
    from suite.deploy.model import Backend

    p = probe or Probe()
    dep = get(profile) if profile else None  # ValueError on an unknown profile
    checks = check_docker(p)
    order = gpu_order_problem(dep, settings) if dep else None
    if order:
        checks.append(Check("gpu-order", "fail", f"{order}: engines pick their GPU by PCI-order ordinal"))
    checks += check_ports(p, settings, port_settings(dep) if dep else ["ENDPOINT_PORT"])
    if dep is None or dep.backend is Backend.GPU:
        checks += check_gpus(p, settings, dep.gpus_needed if dep else 2)
        checks += check_model(settings)
    if dep is not None and dep.backend is Backend.GPU:
        checks += check_kv_read(dep, settings, checks)
        checks += check_setup_services(p, settings, dep)
    return checks


def check_kv_read(dep, settings, checks: list[Check]) -> list[Check]:
    """A connector that READs the KV (a UCX GET; vLLM's NixlConnector) gets cuda_ipc only where GPU 0 has active
    NVLink unless told otherwise, so on one GPU or PCIe-only GPUs the KV silently goes over TCP."""
    from suite.frameworks.base import get

    setting = get(dep.framework).kv_read_setting
    if setting is None or not dep.disaggregated or getattr(settings, setting) != "auto":
        return []
    if any(c.name == "nvlink" and c.status == "ok" for c in checks):
        return []
    return [Check("kv-read", "warn", f"{setting}=auto without NVLink between P and D: UCX turns cuda_ipc reads "
                                     "off and NIXL moves the KV over TCP (~0.5 GB/s); set it to y")]


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(profile: str = typer.Option("", help="Deployment to check for, e.g. vllm-disagg (default: all GPU)"),
               env_file: str = typer.Option(".env", help="Settings file")) -> None:
        """Check Docker, Compose, NVIDIA runtime, GPUs, NVLink, free ports, model access, NIXL in the image."""
        from rich.console import Console
        from rich.markup import escape

        from suite.config import load_settings

        settings = load_settings(env_file)
        try:
            checks = diagnose(profile or None, settings)
        except ValueError as e:
            typer.echo(f"pdsuite: error: {e}", err=True)
            raise typer.Exit(2) from None
        console = Console(stderr=True)
        mark = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
        for c in checks:
            console.print(f"{mark[c.status]}{' ' * (5 - len(c.status))} {c.name:15} {escape(c.detail)}",
                          soft_wrap=True)
        failed = [c for c in checks if c.status == "fail"]
        if failed:
            typer.echo(f"pdsuite: error: {failed[0].name}: {failed[0].detail}", err=True)
            raise typer.Exit(1)
