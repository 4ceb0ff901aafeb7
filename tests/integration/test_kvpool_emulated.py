"""disagg-kvpool, emulated, through the runner's process driver with the real routers: with a shared prompt prefix
the prefill engine of <fw>-disagg-kvpool loads the prefix from the (emulated) shared KV pool, reported under the
framework's own metric names (vLLM external_prefix_cache_hits, SGLang cached_tokens{cache_source="storage"});
plain <fw>-disagg has no pool and reports no such hits. Runs a shortened plans/kvpool.yaml (~15 s a framework)."""

import json

import pytest

from suite.config import Settings
from suite.netutil import free_ports
from suite.normalise import delta, normalise_text
from suite.plan import load_plan
from suite.runner.run import run_plan

pytestmark = pytest.mark.integration
HITS = {"vllm": "external_cache_hit_tokens", "sglang": "kvpool_hit_tokens"}  # suite/frameworks/<fw>.py


def free_settings() -> Settings:
    names = ["ENDPOINT_PORT", "ENGINE_A_PORT", "ENGINE_B_PORT", "ENGINE_C_PORT", "ROUTER_METRICS_PORT",
             "VLLM_NIXL_PORT_PREFILL", "VLLM_NIXL_PORT_DECODE", "VLLM_NIXL_PORT_THIRD", "SGLANG_BOOTSTRAP_PORT",
             "SGLANG_BOOTSTRAP_PORT_THIRD", "LOCUST_WEB_PORT", "KVPOOL_PORT"]
    return Settings(**dict(zip(names, free_ports(len(names)), strict=True)))


def prefill_delta(rep, dep: str, framework: str):
    text = {w: (rep / "metrics" / w / f"{dep}-prefill.prom").read_text() for w in ("before", "after")}
    return delta(normalise_text(text["before"], framework, "prefill"), normalise_text(text["after"], framework,
                                                                                       "prefill"))


@pytest.mark.parametrize("framework", ["vllm", "sglang"])
def test_pool_hits_only_with_the_pool(tmp_path, framework):
    settings = free_settings()
    plan = load_plan("kvpool", settings, backend="emu")
    # the bundled plan, shortened: its two deployments of this framework, the shared-prefix point, a few seconds
    plan = plan.model_copy(update={
        "deployments": [d for d in plan.deployments if d.startswith(f"{framework}-")], "repetitions": 1,
        "warmup_requests": 0, "points": [p for p in plan.points if p["label"] == "shared-prefix-2048"],
        "workload": plan.workload | {"duration_s": 4, "arrival": {"kind": "poisson", "rate_rps": 4}},
        "point_timeout_s": 60, "up_timeout_s": 60})
    assert len(plan.deployments) == 2 and plan.points
    state = run_plan(plan, settings, tmp_path, backend="emu", driver_kind="process", workers=1)
    hits = {}
    for dep in (f"emu-{framework}-disagg", f"emu-{framework}-disagg-kvpool"):
        rep = state.out / dep / "shared-prefix-2048" / "rep0"
        point = json.loads((rep / "point.json").read_text())
        assert point["status"] == "ok", point.get("failure")
        assert point["native"]["load_summary"]["ok"] >= 5
        s = prefill_delta(rep, dep, framework).get(HITS[framework], "prefill")
        hits[dep] = s.value if s else 0.0
    kvpool, plain = hits[f"emu-{framework}-disagg-kvpool"], hits[f"emu-{framework}-disagg"]
    assert plain == 0, hits
    # every request after the first finds the 2048-token prefix (block-aligned: LMCache chunks 256, pages 64)
    assert kvpool >= 2048 * (point["native"]["load_summary"]["ok"] - 2), hits
    pool = (state.out / f"emu-{framework}-disagg-kvpool" / "shared-prefix-2048" / "rep0" / "metrics" / "after" /
            f"emu-{framework}-disagg-kvpool-pool.prom").read_text()
    assert 'pdsuite_emulated_info{flavor="' + framework + '"' in pool and "pdsuite_kvpool_hit_blocks_total" in pool
