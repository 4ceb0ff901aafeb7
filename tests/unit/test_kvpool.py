"""disagg-kvpool: catalog entries, the command lines / env / pool services the framework modules render, the
emulated pool's prefix matching and eviction, the pool cost, and the bundled plan's validation."""

import json
import shlex

import pytest

from suite.config import Settings
from suite.deploy.catalog import deployments, port_settings
from suite.deploy.compose import deployment_services
from suite.deploy.model import Backend, Role, Topology
from suite.emulator.costmodel import CostModel
from suite.emulator.hardware import PROFILES, load_hardware
from suite.emulator.kvpool import PoolStore, block_hashes
from suite.modelcfg import load
from suite.normalise import normalise_text
from suite.plan import load_plan

NAMES = ["vllm-disagg-kvpool", "sglang-disagg-kvpool", "emu-vllm-disagg-kvpool", "emu-sglang-disagg-kvpool"]


def argv(svc: dict) -> list[str]:
    return [*svc.get("entrypoint", []), *shlex.split(svc["command"])]


def opt(args, flag):
    return args[args.index(flag) + 1]


def test_catalog_has_the_kvpool_deployments_from_the_same_table():
    cat = deployments()
    assert {n for n in cat if "kvpool" in n} == set(NAMES)  # no CPU twin
    for name in NAMES:
        dep = cat[name]
        assert dep.topology is Topology.DISAGG_KVPOOL and dep.router and dep.disaggregated
        plain = cat[name.replace("-kvpool", "")]
        assert dep.model_engines == list(plain.engines)  # P/D exactly as plain disagg
        assert dep.kvpool.role is Role.KVPOOL and dep.kvpool.gpu_vars == () and dep.kvpool.port_var == "KVPOOL_PORT"
        assert dep.gpus_needed == (2 if dep.backend is Backend.GPU else 0)
        assert "KVPOOL_PORT" in port_settings(dep)
    assert {"KVPOOL_METADATA_PORT", "KVPOOL_METRICS_PORT"} <= set(port_settings(cat["sglang-disagg-kvpool"]))


def test_vllm_gpu_lines_multiconnector_lmcache():
    dep = deployments()["vllm-disagg-kvpool"]
    svcs = deployment_services(dep)
    for eng, role in (("prefill", "kv_producer"), ("decode", "kv_consumer")):
        svc = svcs[dep.service(eng)]
        kv = json.loads(opt(argv(svc), "--kv-transfer-config"))
        assert kv["kv_connector"] == "MultiConnector" and kv["kv_role"] == role
        nixl, lmc = kv["kv_connector_extra_config"]["connectors"]
        assert nixl == {"kv_connector": "${VLLM_KV_CONNECTOR}", "kv_role": role,
                        "kv_buffer_device": "cuda"}
        assert lmc == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
        env = svc["environment"]
        assert env["LMCACHE_REMOTE_URL"] == "lm://${BIND_ADDRESS}:${KVPOOL_PORT}"
        assert env["LMCACHE_LOCAL_CPU"] == "False" and env["LMCACHE_CHUNK_SIZE"] == "256"
        assert svc["depends_on"][dep.service("pool")] == {"condition": "service_healthy"}
        assert svc["depends_on"][dep.service("nixl-check")] == {"condition": "service_completed_successfully"}
    pool = svcs[dep.service("pool")]
    assert argv(pool) == ["python3", "-m", "lmcache.v1.server", "${BIND_ADDRESS}", "${KVPOOL_PORT}",
                          "cpu"]
    assert pool["image"].startswith("${VLLM_IMAGE}") and "deploy" not in pool  # no GPU for the pool
    check = svcs[dep.service("nixl-check")]["entrypoint"][-1]
    assert "nixl" in check and "lmcache" in check
    # plain disagg keeps its NIXL-only check and lines
    plain = deployment_services(deployments()["vllm-disagg"])
    assert "lmcache" not in plain["vllm-disagg-nixl-check"]["entrypoint"][-1]
    assert "LMCACHE_REMOTE_URL" not in plain["vllm-disagg-prefill"]["environment"]


def test_sglang_gpu_lines_hicache_mooncake():
    dep = deployments()["sglang-disagg-kvpool"]
    svcs = deployment_services(dep)
    p, d = argv(svcs[dep.service("prefill")]), argv(svcs[dep.service("decode")])
    for args in (p, d):
        assert opt(args, "--hicache-storage-backend") == "mooncake" and opt(args, "--page-size") == "64"
        extra = json.loads(opt(args, "--hicache-storage-backend-extra-config"))
        assert extra["master_server_address"] == "${BIND_ADDRESS}:${KVPOOL_PORT}"
        assert "--disaggregation-mode" in args  # the P/D flags stay
    assert "--enable-hierarchical-cache" in p and "--disaggregation-decode-enable-offload-kvcache" not in p
    assert "--disaggregation-decode-enable-offload-kvcache" in d and "--enable-hierarchical-cache" not in d
    pool = argv(svcs[dep.service("pool")])
    assert pool[0] == "mooncake_master" and "--rpc_port=${KVPOOL_PORT}" in pool
    assert "--rpc_address=${BIND_ADDRESS}" in pool
    check = svcs[dep.service("mooncake-check")]
    assert "mooncake_master" in check["entrypoint"][-1]
    assert "sglang-disagg-mooncake-check" not in deployment_services(deployments()["sglang-disagg"])


@pytest.mark.parametrize("fw, block", [("vllm", "256"), ("sglang", "64")])
def test_emulated_twin_runs_the_emulated_pool(fw, block):
    dep = deployments()[f"emu-{fw}-disagg-kvpool"]
    svcs = deployment_services(dep)
    pool = svcs[dep.service("pool")]
    assert pool["labels"]["pdsuite.emulated"] == "true" and pool["labels"]["pdsuite.role"] == "kvpool"
    assert opt(argv(pool), "--role") == "kvpool" and opt(argv(pool), "--port") == "${KVPOOL_PORT}"
    prefill = argv(svcs[dep.service("prefill")])
    assert opt(prefill, "--kv-pool") == "http://${BIND_ADDRESS}:${KVPOOL_PORT}"
    assert opt(prefill, "--kv-pool-block") == block
    assert "--kv-pool" not in argv(svcs[dep.service("decode")])
    assert "--kv-pool" not in argv(deployment_services(deployments()[f"emu-{fw}-disagg"])[f"emu-{fw}-disagg-prefill"])


def test_block_hashes_chain_whole_prefixes():
    a = block_hashes(list(range(10)), 4)
    assert len(a) == 2  # the partial last block is never stored
    b = block_hashes([99, *range(1, 10)], 4)
    assert a[1] != b[1]  # same second block after a different first one: no match
    assert block_hashes(list(range(10)) + [7] * 6, 4)[:2] == a


def test_pool_store_longest_prefix_and_lru_eviction():
    s = PoolStore(capacity_bytes=3 * 100)
    assert s.store(["a", "b"], 100) == 2 and s.store(["a", "b"], 100) == 0
    assert s.lookup(["a", "b", "c"]) == 2 and s.lookup(["x", "a"]) == 0
    s.store(["c"], 100)
    s.lookup(["a"])  # a is now the most recently used
    s.store(["d"], 100)  # evicts b, the least recently used
    assert s.lookup(["a"]) == 1 and s.lookup(["a", "b"]) == 1 and s.evicted == 1 and s.used == 300


def test_pool_load_cost_uses_the_pool_bandwidth():
    cost = CostModel(load("llama-3.1-8b"), PROFILES["h100"])
    t = cost.pool_load_s(2048)
    assert t == pytest.approx(PROFILES["h100"].xfer_latency_s + 2048 * 131072 / 64e9)
    assert cost.pool_load_s(0) == 0.0
    assert t > cost.transfer_s(2048)  # PCIe from host memory is slower than the NVLink hand-off


def test_hardware_json_without_pool_bw_keeps_loading(tmp_path):
    data = {k: v for k, v in PROFILES["cpu-tiny"].__dict__.items() if k != "pool_bw"}
    (tmp_path / "hw.json").write_text(json.dumps(data))
    assert load_hardware(str(tmp_path / "hw.json")).pool_bw == 64e9


def test_normalise_reads_the_emulated_pool_page():
    text = ("# TYPE pdsuite_kvpool_hit_blocks_total counter\npdsuite_kvpool_hit_blocks_total 5.0\n"
            "# TYPE pdsuite_kvpool_blocks gauge\npdsuite_kvpool_blocks 3.0\n")
    snap = normalise_text(text, "vllm", "kvpool")
    assert snap.page == "kvpool" and not snap.warnings
    assert snap.get("kvpool_hit_blocks", "kvpool").value == 5.0


@pytest.mark.parametrize("backend", ["gpu", "emu"])
def test_kvpool_plan_validates(backend):
    plan = load_plan("kvpool", Settings(), backend=backend, gpus_present=2 if backend == "gpu" else None)
    assert set(plan.resolved_deployments(backend)) >= {f"{'' if backend == 'gpu' else 'emu-'}{fw}-disagg-kvpool"
                                                       for fw in ("vllm", "sglang")}
    assert any(p.get("shared_prefix_tokens") for p in plan.points)


def test_pool_metrics_scraped_only_where_the_pool_serves_them():
    from suite.config import Settings
    from suite.runner.drivers import services_of

    s = Settings()
    pool = {d: next(x for x in services_of(deployments()[d], s) if x.role == "kvpool")
            for d in ("vllm-disagg-kvpool", "sglang-disagg-kvpool", "emu-vllm-disagg-kvpool")}
    assert pool["vllm-disagg-kvpool"].metrics_url == ""  # LMCache's server speaks no HTTP
    assert pool["sglang-disagg-kvpool"].metrics_url.endswith(f":{s.KVPOOL_METRICS_PORT}/metrics")
    assert pool["emu-vllm-disagg-kvpool"].metrics_url.endswith(f":{s.KVPOOL_PORT}/metrics")
