"""Lint of the GENERATED compose stack: what a GPU user runs must be safe and wired as intended.

Reads yaml.safe_load(render()) - the same text `pdsuite gen` writes - and resolves ${VAR:-default} itself.
"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from suite.config import Settings
from suite.deploy.catalog import deployments
from suite.deploy.compose import render
from suite.deploy.model import Backend, Role, Topology

REF = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
# cap_add entries that are documented, per service: CUDA IPC needs ipc/pid host, not caps; only the optional
# dcgm-exporter (profile dcgm) takes SYS_ADMIN, which DCGM's profiling fields need (docs/time-breakdown.md).
ALLOWED_CAPS: dict[str, set[str]] = {"dcgm-exporter": {"SYS_ADMIN"}}


def resolve(text: str, env: dict[str, str] | None = None) -> str:
    env = env or {}
    return REF.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


@pytest.fixture(scope="module")
def stack() -> dict:
    return yaml.safe_load(render())


@pytest.fixture(scope="module")
def services(stack) -> dict[str, dict]:
    return stack["services"]


def argv(svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def opt(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def servers(services: dict[str, dict]):
    """Long-running services (everything but one-shot setup checks)."""
    return {n: s for n, s in services.items() if s.get("labels", {}).get("pdsuite.role") not in ("setup",)}


def test_every_deployment_is_a_profile_with_its_services(services):
    profiles = {p for s in services.values() for p in s["profiles"]}
    assert profiles == set(deployments()) | {"locust", "dcgm"}
    for dep in deployments().values():
        in_profile = {n for n, s in services.items() if dep.name in s["profiles"]}
        assert set(dep.services) <= in_profile, dep.name


def test_servers_bind_the_configured_address(services):
    for name, svc in servers(services).items():
        args = argv(svc)
        if "--worker" in args:  # a locust worker serves nothing
            continue
        # locust's --host is its target; its master listens for workers on --master-bind-host (default: all)
        if "locust" in args:
            hosts = [opt(args, "--web-host"), opt(args, "--master-bind-host")]
        elif name == "dcgm-exporter":  # listens on DCGM_EXPORTER_LISTEN (host:port)
            hosts = [svc["environment"]["DCGM_EXPORTER_LISTEN"].split("}:", 1)[0] + "}"]
        elif svc["labels"]["pdsuite.role"] == "kvpool" and "emulate" not in args:
            # LMCache server: `-m lmcache.v1.server HOST PORT cpu`; Mooncake master: --rpc_address=, --*_host=
            binds = ("--rpc_address=", "--http_metadata_server_host=")
            hosts = ([args[args.index("lmcache.v1.server") + 1]] if "lmcache.v1.server" in args else
                     [a.split("=", 1)[1] for a in args if a.startswith(binds)])
            assert hosts, name
        else:  # engines and routers; routers also serve Prometheus on their own port
            hosts = [opt(args, "--host")] + [h for h in [opt(args, "--prometheus-host")] if h]
        assert all(h == "${BIND_ADDRESS:-127.0.0.1}" for h in hosts), (name, hosts)


def test_nothing_is_exposed_on_all_interfaces(services):
    text = render()
    assert "0.0.0.0" not in text
    for name, svc in services.items():
        assert svc.get("network_mode") == "host", name  # host network: nothing published, binds decide
        for p in svc.get("ports", []):  # if anyone adds ports, they must be bound to the configured address
            assert str(p).startswith("${BIND_ADDRESS"), (name, p)


def test_a_wildcard_bind_address_is_visible_in_settings_not_hidden():
    # the one way to expose servers is the documented setting; the default must be loopback
    assert Settings().BIND_ADDRESS == "127.0.0.1"
    assert "${BIND_ADDRESS:-0.0.0.0}" in render(Settings(BIND_ADDRESS="0.0.0.0"))


def test_no_privileged_containers_or_undocumented_caps(services):
    for name, svc in services.items():
        assert not svc.get("privileged", False), name
        assert set(svc.get("cap_add", [])) <= ALLOWED_CAPS.get(name, set()), (name, svc.get("cap_add"))
        assert "devices" not in svc, name  # GPUs come only through deploy reservations
        assert not any(str(v).startswith("/var/run/docker.sock") for v in svc.get("volumes", [])), name


def test_no_disable_log_stats_anywhere():
    assert "--disable-log-stats" not in render()


def _kv_ports(svc: dict) -> set[str]:
    env = svc.get("environment", {})
    args = argv(svc)
    found = {env.get("VLLM_NIXL_SIDE_CHANNEL_PORT"), opt(args, "--kv-port")}
    return {resolve(p) for p in found if p}


@pytest.mark.parametrize("name", [n for n, d in deployments().items()
                                  if d.framework == "vllm" and d.disaggregated and d.backend is not Backend.CPU])
def test_nixl_side_channel_ports_distinct(services, name):
    dep = deployments()[name]
    pd = [e for e in dep.engines if e.role is not Role.KVPOOL]  # the pool server has no side channel
    ports = [_kv_ports(services[dep.service(e.name)]) for e in pd]
    assert all(ports), "every P/D engine must set its own NIXL side-channel port"
    assert len(set().union(*ports)) == sum(len(p) for p in ports), ports  # pairwise disjoint
    if dep.backend is Backend.GPU:  # the side channel listens on the configured address too
        for e in pd:
            env = services[dep.service(e.name)]["environment"]
            assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "${BIND_ADDRESS:-127.0.0.1}"
            # NIXL READs; without this UCX serves no cuda_ipc reads off NVLink (one GPU, PCIe): KV over TCP
            assert env["UCX_CUDA_IPC_ENABLE_GET_ZCOPY"] == "${UCX_CUDA_IPC_GET_ZCOPY:-y}"


# Which host GPUs each engine of a topology must reserve (P = PREFILL_GPU, D = DECODE_GPU).
EXPECTED_GPUS = {
    Topology.DISAGG: {"prefill": ["0", "1"], "decode": ["0", "1"]},  # both visible: CUDA IPC between them
    Topology.DISAGG_KVPOOL: {"prefill": ["0", "1"], "decode": ["0", "1"], "pool": None},  # the pool: CPU only
    Topology.TP2: {"engine": ["0", "1"]},
    Topology.COLOCATED: {"engine": ["0"]},
    # one GPU: P and D (or the baseline) both on PREFILL_GPU
    Topology.DISAGG_1GPU: {"prefill": ["0"], "decode": ["0"]},
    Topology.COLOCATED_1GPU: {"engine": ["0"]},
    Topology.DP2: {"replica0": ["0"], "replica1": ["1"]},
    # xPyD: all three GPUs visible to every engine
    Topology.P1D2: {"prefill": ["0", "1", "2"], "decode0": ["0", "1", "2"], "decode1": ["0", "1", "2"]},
    Topology.P2D1: {"prefill0": ["0", "1", "2"], "decode": ["0", "1", "2"], "prefill1": ["0", "1", "2"]},
}


def _device_ids(svc: dict, env: dict[str, str] | None = None) -> list[str] | None:
    devs = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    if not devs:
        return None
    assert len(devs) == 1 and devs[0]["driver"] == "nvidia" and devs[0]["capabilities"] == ["gpu"]
    return [resolve(str(i), env) for i in devs[0]["device_ids"]]


@pytest.mark.parametrize("name", [n for n, d in deployments().items() if d.backend is Backend.GPU])
def test_gpu_reservations_per_engine(services, name):
    dep = deployments()[name]
    expected = EXPECTED_GPUS[dep.topology]
    assert {e.name for e in dep.engines} == set(expected)
    for eng in dep.engines:
        svc = services[dep.service(eng.name)]
        assert _device_ids(svc) == expected[eng.name], eng.name
        if expected[eng.name] is None:
            continue
        # settings move the pins: P=2, D=5 reserves exactly those
        moved = _device_ids(svc, {"PREFILL_GPU": "2", "DECODE_GPU": "5", "THIRD_GPU": "7"})
        assert moved == [{"0": "2", "1": "5", "2": "7"}[g] for g in expected[eng.name]]
        assert svc["ipc"] == "host" and svc["pid"] == "host"  # CUDA IPC across containers (engines.md)
    if dep.router:
        assert _device_ids(services[dep.service("router")]) is None


@pytest.mark.parametrize("name", [n for n, d in deployments().items()
                                  if d.backend is Backend.GPU and d.disaggregated and not d.shared_gpu])
def test_disagg_engines_pick_different_gpus(services, name):
    dep = deployments()[name]
    picks = []
    for eng in dep.model_engines:
        svc = services[dep.service(eng.name)]
        picks.append((svc["environment"].get("CUDA_VISIBLE_DEVICES"), opt(argv(svc), "--base-gpu-id")))
    assert len(set(picks)) == len(picks), picks


def test_healthchecks_and_router_gating(services):
    for dep in deployments().values():
        for svc_name in dep.services:
            svc = services[svc_name]
            hc = svc.get("healthcheck")
            assert hc and hc["test"][0] == "CMD", svc_name
            assert "${BIND_ADDRESS:-127.0.0.1}" in hc["test"][-1], svc_name
            assert int(re.sub(r"\D", "", hc["timeout"])) >= 10, svc_name  # busy 2-core CI box (docs/ci.md)
        if dep.router:
            deps_on = services[dep.service("router")]["depends_on"]
            assert deps_on == {dep.service(e.name): {"condition": "service_healthy"} for e in dep.engines}


def test_gpu_engines_have_a_long_start_period(services):
    for dep in deployments().values():
        if dep.backend is not Backend.GPU:
            continue
        for eng in dep.model_engines:
            sp = services[dep.service(eng.name)]["healthcheck"]["start_period"]
            assert int(resolve(sp).rstrip("s")) >= 600, sp  # an 8B model load from a cold cache


def test_every_deployment_serves_the_one_endpoint(services):
    for dep in deployments().values():
        args = argv(services[dep.endpoint_service])
        assert opt(args, "--port") == "${ENDPOINT_PORT:-8000}", dep.name
        others = [s for s in dep.services if s != dep.endpoint_service]
        assert all(opt(argv(services[s]), "--port") != "${ENDPOINT_PORT:-8000}" for s in others), dep.name


def test_emulated_services_are_labelled_and_never_in_a_gpu_profile(services):
    gpu_profiles = {n for n, d in deployments().items() if d.backend is Backend.GPU}
    emulated = {n for n, s in services.items() if s["labels"].get("pdsuite.emulated") == "true"}
    expected = {s for d in deployments().values() if d.backend is Backend.EMU for s in d.services}
    assert emulated == expected and emulated
    for name in emulated:
        assert not set(services[name]["profiles"]) & gpu_profiles, name
        assert _device_ids(services[name]) is None, name
    for name, svc in services.items():
        if set(svc["profiles"]) & gpu_profiles:
            assert svc["labels"]["pdsuite.emulated"] == "false", name


def test_gpu_profiles_use_the_engine_images_and_mount_the_model_cache(services):
    for dep in deployments().values():
        if dep.backend is not Backend.GPU:
            continue
        for eng in dep.engines:
            svc = services[dep.service(eng.name)]
            assert svc["image"].startswith(("${VLLM_IMAGE", "${SGLANG_IMAGE")), svc["image"]
            if eng.role is Role.KVPOOL:  # the pool server reads no model
                continue
            # the models only (hub/), never the cache root where the login token file lives
            assert "${MODEL_CACHE_DIR:-~/.cache/huggingface}/hub:/root/.cache/huggingface/hub:${MODEL_CACHE_MODE:-rw}" \
                in svc["volumes"]
            assert not any(v.split(":")[1] == "/root/.cache/huggingface" for v in svc["volumes"])
            assert svc["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"


def test_only_real_engines_get_the_token(services):
    """Emulated engines, routers, pools and Locust need no token and get none."""
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if "HF_TOKEN" in env:
            assert svc["image"].startswith(("${VLLM_IMAGE", "${SGLANG_IMAGE", "${VLLM_CPU_IMAGE")), name  # real engines
            assert svc["labels"]["pdsuite.role"] not in ("router", "kvpool", "load"), name
        for v in svc.get("volumes", []):
            if "MODEL_CACHE_DIR" in v and not svc["image"].startswith(("${VLLM_IMAGE", "${SGLANG_IMAGE")):
                assert v.endswith(":ro"), f"{name} mounts the model cache writable"


def test_locust_profile(services):
    master, worker = services["locust-master"], services["locust-worker"]
    assert opt(argv(master), "--web-port") == "${LOCUST_WEB_PORT:-8089}"
    assert opt(argv(master), "--host") == "http://${BIND_ADDRESS:-127.0.0.1}:${ENDPOINT_PORT:-8000}"
    assert worker["deploy"]["replicas"] == "${LOCUST_WORKERS:-2}"
    # workers reach the master where it listens: the configured address
    assert opt(argv(worker), "--master-host") == "${BIND_ADDRESS:-127.0.0.1}"
