"""Render docker-compose.yml from the deployment catalog (`pdsuite gen` writes it; a test keeps it in sync).

Every service uses the host network: P/D engines need it for CUDA IPC and NIXL side channels (engines.md),
and it gives every deployment the same endpoint address. Servers bind ${BIND_ADDRESS} (127.0.0.1 by default).
"""

from __future__ import annotations

import shlex

import yaml

from suite.config import SECRET_SETTINGS, Settings
from suite.deploy.catalog import deployments
from suite.deploy.model import Backend, Deployment, Engine, Role
from suite.frameworks.base import Framework, get

HF_CACHE = "/root/.cache/huggingface"
LOCUSTFILE = "/app/locustfiles/pd_mix.py"


def command(args: list[str]) -> str:
    """One compose command string; *_EXTRA_ARGS stay unquoted so compose splits them into arguments."""
    return " ".join(a if a.endswith("_EXTRA_ARGS}") else shlex.quote(a) for a in args)


def healthcheck(port_var: str, path: str, start_period: str, interval: str = "10s") -> dict:
    probe = f"import urllib.request as u; u.urlopen('http://${{BIND_ADDRESS}}:${{{port_var}}}{path}', timeout=8)"
    return {"test": ["CMD", "python3", "-c", probe], "interval": interval, "timeout": "10s", "retries": 3,
            "start_period": start_period}


def probe_interval(dep: Deployment) -> str:
    """Emulated services are up in ~2 s: probe every 2 s (Docker 20.10 has no start_interval), so a deployment is
    healthy in seconds, not two 10 s probe cycles (engines, then the router that waits for them)."""
    return "2s" if dep.backend is Backend.EMU else "10s"


def _labels(dep: Deployment, role: str) -> dict[str, str]:
    return {"pdsuite.deployment": dep.name, "pdsuite.framework": dep.framework, "pdsuite.role": role,
            "pdsuite.backend": dep.backend.value, "pdsuite.emulated": str(dep.emulated).lower()}


def _base(dep: Deployment, role: str) -> dict:
    return {"profiles": [dep.name], "network_mode": "host", "labels": _labels(dep, role), "init": True,
            "stop_grace_period": "20s"}


def tcp_healthcheck(port_var: str, start_period: str) -> dict:
    """For servers without HTTP (LMCache server, Mooncake master RPC): the port accepts a connection."""
    probe = f"import socket; socket.create_connection(('${{BIND_ADDRESS}}', ${{{port_var}}}), timeout=8).close()"
    return {"test": ["CMD", "python3", "-c", probe], "interval": "5s", "timeout": "10s", "retries": 5,
            "start_period": start_period}


def kvpool_service(fw: Framework, dep: Deployment, eng: Engine) -> dict:
    """The shared KV pool: the framework's pool server in its engine image (GPU), or the emulated pool."""
    svc = _base(dep, eng.role.value)
    if dep.backend is Backend.EMU:
        args = ["pdsuite", "emulate", "--flavor", fw.name, "--role", eng.role.value, "--host", "${BIND_ADDRESS}",
                "--port", f"${{{eng.port_var}}}", "--hardware", "${EMU_HARDWARE}",
                "--kv-pool-capacity-gb", "${KVPOOL_SIZE_GB}"]
        return svc | {"image": "${SUITE_IMAGE}", "command": command(args), "environment": {"PYTHONUNBUFFERED": "1"},
                      "healthcheck": healthcheck(eng.port_var, "/health", "30s", probe_interval(dep))}
    argv = fw.kvpool_args(dep)
    svc |= {"image": f"${{{fw.image_setting}}}", "entrypoint": argv[:1], "command": command(argv[1:]),
            "healthcheck": tcp_healthcheck(eng.port_var, "60s")}
    setup = fw.setup_services(dep)
    if setup:
        svc["depends_on"] = {dep.service(n): {"condition": "service_completed_successfully"} for n in setup}
    return svc


def engine_service(fw: Framework, dep: Deployment, eng: Engine) -> dict:
    if eng.role is Role.KVPOOL:
        return kvpool_service(fw, dep, eng)
    svc = _base(dep, eng.role.value)
    pool = {dep.service(dep.kvpool.name): {"condition": "service_healthy"}} if dep.kvpool else {}
    if dep.backend is Backend.EMU:
        args = ["pdsuite", "emulate", "--flavor", fw.name, "--role", eng.role.value,
                "--host", "${BIND_ADDRESS}", "--port", f"${{{eng.port_var}}}", "--model", "${MODEL}",
                "--model-config", "${EMU_MODEL_CONFIG}", "--hardware", "${EMU_HARDWARE}", "--tp", str(eng.tp),
                *fw.emulator_args(dep, eng)]
        svc |= {"image": "${SUITE_IMAGE}", "command": command(args),
                "environment": {"PYTHONUNBUFFERED": "1"} | fw.tracing_env(dep, eng),
                "healthcheck": healthcheck(eng.port_var, "/health", "30s", probe_interval(dep))}
        return svc | ({"depends_on": pool} if pool else {})
    if dep.backend is Backend.CPU:
        # vLLM's engine-core message queue needs ~160 MiB of /dev/shm; Docker's default is 64 MiB
        svc |= {"image": "${VLLM_CPU_IMAGE}", "entrypoint": ["vllm", "serve"], "shm_size": "1g",
                "volumes": ["cpu-kv:/kv"], "healthcheck": healthcheck(eng.port_var, fw.health_path, "240s")}
    else:
        gpu_ids = [f"${{{g}}}" for g in eng.gpu_vars]
        # only hub/ (the models): the token file `huggingface-cli login` leaves next to it stays out
        models = f"${{MODEL_CACHE_DIR}}/hub:{HF_CACHE}/hub:${{MODEL_CACHE_MODE}}"
        svc |= {"image": f"${{{fw.image_setting}}}", "ipc": "host", "pid": "host",
                "ulimits": {"memlock": -1}, "volumes": [models],
                "deploy": {"resources": {"reservations": {"devices": [
                    {"driver": "nvidia", "device_ids": gpu_ids, "capabilities": ["gpu"]}]}}},
                "healthcheck": healthcheck(eng.port_var, fw.health_path, "${ENGINE_START_PERIOD_S}s")}
        if fw.entrypoint:
            svc["entrypoint"] = fw.entrypoint
        setup = fw.setup_services(dep)
        depends = {dep.service(n): {"condition": "service_completed_successfully"} for n in setup} | pool
        engines = dep.model_engines
        if dep.shared_gpu and eng != engines[0]:  # one GPU: start after the engine before it (gpu_waves says why)
            depends[dep.service(engines[engines.index(eng) - 1].name)] = {"condition": "service_healthy"}
        if depends:
            svc["depends_on"] = depends
    svc["command"] = command(fw.engine_args(dep, eng))
    svc["environment"] = fw.engine_env(dep, eng) | fw.tracing_env(dep, eng)
    return svc


def router_service(fw: Framework, dep: Deployment) -> dict:
    svc = _base(dep, "router")
    svc |= {"image": "${ROUTER_IMAGE}", "command": command(fw.router_args(dep)),
            "depends_on": {dep.service(e.name): {"condition": "service_healthy"} for e in dep.engines},
            "healthcheck": healthcheck("ENDPOINT_PORT", "/health", "30s", probe_interval(dep))}
    return svc


def deployment_services(dep: Deployment) -> dict[str, dict]:
    fw = get(dep.framework)
    services: dict[str, dict] = {}
    if dep.backend is Backend.GPU:
        for name, extra in fw.setup_services(dep).items():
            services[dep.service(name)] = _base(dep, "setup") | {"image": f"${{{fw.image_setting}}}",
                                                                 "restart": "no"} | extra
    for eng in dep.engines:
        services[dep.service(eng.name)] = engine_service(fw, dep, eng)
    if dep.router:
        services[dep.service("router")] = router_service(fw, dep)
    return services


def locust_services() -> dict[str, dict]:
    host = "http://${BIND_ADDRESS}:${ENDPOINT_PORT}"
    common = {"image": "${SUITE_IMAGE}", "profiles": ["locust"], "network_mode": "host", "init": True,
              # the served model's tokenizer (exact prompt lengths) is read from the shared cache, read-only
              "environment": {"PDSUITE_MODEL": "${MODEL}", "MODEL": "${MODEL}", "MODEL_CACHE_DIR": HF_CACHE,
                              "PYTHONUNBUFFERED": "1"},
              "volumes": ["./results:/app/results", f"${{MODEL_CACHE_DIR}}:{HF_CACHE}:ro"],
              "labels": {"pdsuite.role": "load"}}
    # The master listens for workers on the configured address too (its default is every interface).
    master = common | {"command": command(["locust", "-f", LOCUSTFILE, "--master", "--host", host,
                                           "--master-bind-host", "${BIND_ADDRESS}",
                                           "--pd-deployment", "${LOCUST_DEPLOYMENT}",
                                           "--web-host", "${BIND_ADDRESS}", "--web-port", "${LOCUST_WEB_PORT}",
                                           "--expect-workers", "${LOCUST_WORKERS}"])}
    worker = common | {"command": command(["locust", "-f", LOCUSTFILE, "--worker", "--pd-deployment",
                                           "${LOCUST_DEPLOYMENT}",
                                           "--master-host", "${BIND_ADDRESS}"]),
                       "depends_on": ["locust-master"], "deploy": {"replicas": "${LOCUST_WORKERS}"}}
    return {"locust-master": master, "locust-worker": worker}


def dcgm_service() -> dict[str, dict]:
    """NVIDIA's dcgm-exporter for users who run DCGM: off unless its profile is enabled (`--profile dcgm`). It serves
    DCGM's GPU fields (incl. the profiling ones: SM active, DRAM active) as Prometheus text on
    ${BIND_ADDRESS}:${DCGM_EXPORTER_PORT}. The suite's own GPU telemetry (NVML, every point) does not need it."""
    return {"dcgm-exporter": {
        "image": "${DCGM_EXPORTER_IMAGE}", "profiles": ["dcgm"], "network_mode": "host", "init": True,
        "cap_add": ["SYS_ADMIN"], "command": command(["-f", "/etc/dcgm-exporter/dcp-metrics-included.csv"]),
        "environment": {"DCGM_EXPORTER_LISTEN": "${BIND_ADDRESS}:${DCGM_EXPORTER_PORT}"},
        "deploy": {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}},
        "labels": {"pdsuite.role": "telemetry"}}}


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def render(settings: Settings | None = None) -> str:
    """The compose file text. Defaults come from Settings so it works without a .env."""
    services: dict[str, dict] = {}
    for dep in deployments().values():
        services |= deployment_services(dep)
    services |= locust_services()
    services |= dcgm_service()
    text = yaml.dump({"name": "pdsuite", "services": services, "volumes": {"cpu-kv": {}}},
                     Dumper=_NoAliases, sort_keys=False, width=10_000)
    defaults = (settings or Settings()).model_dump()

    # ${VAR} -> ${VAR:-default}, so the file runs as is without a .env (secrets get an empty default).
    for name in sorted(defaults, key=len, reverse=True):
        d = "" if name in SECRET_SETTINGS else defaults[name]
        text = text.replace(f"${{{name}}}", f"${{{name}:-{d}}}")
    header = ("# Generated by `pdsuite gen` from suite/deploy/ and suite/frameworks/ - do not edit by hand.\n"
              "# Profiles: one per deployment (`pdsuite deployments`), plus `locust` and `dcgm` (dcgm-exporter). "
              "Settings: .env.example.\n")
    return header + text
