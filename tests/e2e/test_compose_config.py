"""`docker compose config` (the real Compose v2 plugin) accepts every profile and resolves it as intended.

Needs only the compose plugin - no Docker engine.
"""

from __future__ import annotations

import json

import pytest
import yaml
from dockerutil import clean_env

from suite.deploy.catalog import deployments
from suite.deploy.compose import render
from suite.deploy.model import Backend, Topology

pytestmark = pytest.mark.docker

PROFILES = [*deployments(), "locust"]
GENERATED = yaml.safe_load(render())["services"]
GPU_IDS = {  # host GPU ids each engine reserves, with PREFILL_GPU=2 DECODE_GPU=3
    Topology.DISAGG: {"prefill": ["2", "3"], "decode": ["2", "3"]},
    Topology.DISAGG_KVPOOL: {"prefill": ["2", "3"], "decode": ["2", "3"]},  # the pool service reserves no GPU
    Topology.TP2: {"engine": ["2", "3"]},
    Topology.COLOCATED: {"engine": ["2"]},
    Topology.DP2: {"replica0": ["2"], "replica1": ["3"]},
    Topology.DISAGG_1GPU: {"prefill": ["2"], "decode": ["2"]},  # one GPU: both on PREFILL_GPU
    Topology.COLOCATED_1GPU: {"engine": ["2"]},
    Topology.P1D2: {"prefill": ["2", "3", "4"], "decode0": ["2", "3", "4"], "decode1": ["2", "3", "4"]},  # THIRD_GPU=4
    Topology.P2D1: {"prefill0": ["2", "3", "4"], "decode": ["2", "3", "4"], "prefill1": ["2", "3", "4"]},
}
ENV = {"PREFILL_GPU": "2", "DECODE_GPU": "3", "THIRD_GPU": "4", "ENDPOINT_PORT": "9000", "ENGINE_A_PORT": "9100",
       "ENGINE_B_PORT": "9200", "ENGINE_C_PORT": "9300", "BIND_ADDRESS": "127.0.0.2", "KVPOOL_PORT": "9400"}


def config(compose, profile: str, **env: str) -> dict:
    r = compose("--profile", profile, "config", "--format", "json", env=clean_env(**env))
    return json.loads(r.stdout)["services"]


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_resolves_to_its_services(compose, profile):
    services = config(compose, profile)
    assert set(services) == {n for n, s in GENERATED.items() if profile in s["profiles"]}
    text = json.dumps(services)
    assert "${" not in text  # every reference resolved from defaults, no .env needed
    assert "0.0.0.0" not in text


@pytest.mark.parametrize("profile", [p for p, d in deployments().items() if d.backend is Backend.GPU])
def test_gpu_profile_device_ids_and_ports(compose, profile):
    dep = deployments()[profile]
    services = config(compose, profile, **ENV)
    if dep.kvpool is not None:  # the pool: no GPU, binds the configured address, its own port
        pool = services[dep.service(dep.kvpool.name)]
        assert "deploy" not in pool and pool["network_mode"] == "host"
        assert "127.0.0.2" in " ".join(pool["command"]) and "9400" in " ".join(pool["command"])
    for eng in dep.model_engines:
        svc = services[dep.service(eng.name)]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert [d["device_ids"] for d in devices] == [GPU_IDS[dep.topology][eng.name]], eng.name
        cmd = svc["command"]
        port = cmd[cmd.index("--port") + 1]
        assert port == ENV[eng.port_var]
        assert cmd[cmd.index("--host") + 1] == "127.0.0.2"
        assert svc["network_mode"] == "host" and svc["ipc"] == "host"
    endpoint = services[dep.endpoint_service]["command"]
    assert endpoint[endpoint.index("--port") + 1] == "9000"
    if dep.router:
        router = services[dep.service("router")]
        assert "deploy" not in router or not router["deploy"].get("resources")
        assert {k: v["condition"] for k, v in router["depends_on"].items()} == \
            {dep.service(e.name): "service_healthy" for e in dep.engines}


def test_vllm_disagg_resolves_distinct_nixl_ports(compose):
    services = config(compose, "vllm-disagg", VLLM_NIXL_PORT_PREFILL="5700", VLLM_NIXL_PORT_DECODE="5701")
    ports = [services[f"vllm-disagg-{r}"]["environment"]["VLLM_NIXL_SIDE_CHANNEL_PORT"] for r in ("prefill", "decode")]
    assert ports == ["5700", "5701"]


def test_no_service_without_a_profile(compose):
    # `docker compose up` with no profile must start nothing (GPU services would fail on a CPU host)
    assert compose("config", "--services").stdout.split() == []


def test_all_profiles_wildcard_covers_every_service(compose):
    # what `make down` relies on: COMPOSE_PROFILES='*' selects every service of every profile (Compose 2.26)
    r = compose("config", "--services", env=clean_env(COMPOSE_PROFILES="*"))
    assert set(r.stdout.split()) == set(GENERATED)
