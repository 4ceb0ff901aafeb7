"""SGLang 0.5.23: engine and router command lines, metric names and units, P/D quirks.

Facts: SGLang's source (sglang/srt/server_args.py, sglang/srt/disaggregation/) and docs/gpu-runbook.md.
P/D: --disaggregation-mode prefill|decode, the prefill side runs the bootstrap server, both sides get the same
bootstrap port, each its own --nccl-port; sglang-router injects bootstrap_host/port/room. Metrics need
--enable-metrics; KV-transfer metrics are in ms and MB.
"""

from __future__ import annotations

import json

from suite.frameworks.base import (
    Backend,
    Deployment,
    Engine,
    Framework,
    MetricMap,
    Role,
    memory_fraction,
    register,
    url,
)

NCCL_PORT = ("SGLANG_NCCL_PORT_A", "SGLANG_NCCL_PORT_B", "SGLANG_NCCL_PORT_C")  # by engine index


def bootstrap_port(eng: Engine) -> str:
    """Each prefill engine runs its own bootstrap server; decode engines are given the first one's port."""
    return "SGLANG_BOOTSTRAP_PORT_THIRD" if eng.role is Role.PREFILL and eng.index == 2 else "SGLANG_BOOTSTRAP_PORT"
MS, MB, GB = 1e-3, 1e6, 1e9
# disagg-kvpool: HiCache with Mooncake as its shared storage (L3) tier; flags from SGLang 0.5.23
# sglang/srt/arg_groups/fields/memory.py (enable_hierarchical_cache, hicache_storage_backend,
# hicache_storage_backend_extra_config) and fields/disagg.py (disaggregation_decode_enable_offload_kvcache).
# mem_cache/storage/mooncake_store/README.md "Prefill/Decode Disaggregation": HiCache runs on the prefill worker;
# the decode worker writes its KV into the same storage with --disaggregation-decode-enable-offload-kvcache
# (disaggregation/decode_kvcache_offload_manager.py builds its cache controller on --hicache-storage-backend).
KVPOOL_PAGE = 64  # --page-size on both sides (the README's PD example; storage keys are per page)
MOONCAKE_CONFIG = {  # README "Using extra-config of sglang arguments"; TCP: no RDMA assumed on one host
    "master_server_address": "${BIND_ADDRESS}:${KVPOOL_PORT}",
    "metadata_server": "http://${BIND_ADDRESS}:${KVPOOL_METADATA_PORT}/metadata",
    "local_hostname": "${BIND_ADDRESS}", "protocol": "tcp", "device_name": "",
    "global_segment_size": "${KVPOOL_SIZE_GB}gb"}

# Emulator metric tables (below): tokenizer-side families carry _TL, scheduler-side ones _SL (SGLang 0.5.23).
_TL = ("engine_type", "model_name", "is_streaming")
_SL = ("engine_type", "model_name", "tp_rank", "pp_rank", "moe_ep_rank")
_TTFT_B = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
_ITL_B = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6,
          0.8, 1, 2, 4, 6, 8)
_MS_B = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


# Runs inside .venvs/sglang (suite/cpu/parse_runner.py calls check(argv) per line): SGLang's own launch_server
# parser. Cross-field checks need the model's config and a GPU, so they are not part of the proof.
PARSE_CHECK = """
import sglang
from sglang.srt.server_args import prepare_server_args

VERSION = sglang.__version__

def check(argv):
    a = prepare_server_args(argv)
    return {"host": a.host, "port": a.port, "tp": a.tp_size, "context_length": a.context_length,
            "disaggregation_mode": a.disaggregation_mode, "transfer_backend": a.disaggregation_transfer_backend,
            "bootstrap_port": a.disaggregation_bootstrap_port, "base_gpu_id": a.base_gpu_id,
            "nccl_port": a.nccl_port, "enable_metrics": a.enable_metrics, "page_size": a.page_size,
            "hicache": a.enable_hierarchical_cache, "hicache_storage_backend": a.hicache_storage_backend,
            "hicache_storage_extra": a.hicache_storage_backend_extra_config,
            "decode_offload": a.disaggregation_decode_enable_offload_kvcache}
"""


@register
class SGLang(Framework):
    name = "sglang"
    # sglang-router 0.3.2 rejects `prompt: [ids]` on /v1/completions ("data did not match any variant of untagged
    # enum StringOrArray"), so the load generator sends exact-count text
    prompt_token_ids = False
    image_setting = "SGLANG_IMAGE"
    extra_args_setting = "SGLANG_EXTRA_ARGS"
    entrypoint = ["python3", "-m", "sglang.launch_server"]
    image_entrypoint = entrypoint
    version_path = "/get_server_info"  # {"version": "0.5.23", ...}
    failure_patterns = (r"CUDA out of memory", r"torch\.OutOfMemoryError", r"Address already in use",
                        r"No CUDA GPUs are available", r"ModuleNotFoundError", r"unrecognized arguments",
                        r"Not enough memory")
    role_label = "engine_type"
    # Command-line proof (suite/cpu/parsecheck.py): parser-only venv, see docs/cpu-backends.md.
    parser_venv = "sglang"
    parser_env: dict[str, str] = {}
    parser_source = PARSE_CHECK
    parser_skip_flags: dict[str, str] = {}
    role_values = {"unified": "colocated"}

    def engine_args(self, dep: Deployment, eng: Engine) -> list[str]:
        args = ["--model-path", "${MODEL}", "--served-model-name", "${MODEL}",
                "--host", "${BIND_ADDRESS}", "--port", f"${{{eng.port_var}}}",
                "--tp-size", str(eng.tp), "--context-length", "${MAX_MODEL_LEN}",
                "--mem-fraction-static", memory_fraction(dep), "--load-format", "${LOAD_FORMAT}",
                "--enable-metrics", "--nccl-port", f"${{{NCCL_PORT[eng.index]}}}"]
        if eng.role in (Role.PREFILL, Role.DECODE):
            # Both GPUs are visible to both containers (CUDA IPC); pick ours by ordinal.
            args += ["--base-gpu-id", eng.cuda_devices,
                     "--disaggregation-mode", eng.role.value,
                     "--disaggregation-transfer-backend", "${SGLANG_TRANSFER_BACKEND}",
                     "--disaggregation-bootstrap-port", f"${{{bootstrap_port(eng)}}}"]
            if dep.kvpool is not None:
                args += self.hicache_args(eng)
        return [*args, "${SGLANG_EXTRA_ARGS}"]

    def hicache_args(self, eng: Engine) -> list[str]:
        """P: HiCache (GPU -> host -> Mooncake) looks prefixes up in the pool and writes them back; D: offloads the
        KV it holds into the same pool."""
        side = (["--enable-hierarchical-cache"] if eng.role is Role.PREFILL
                else ["--disaggregation-decode-enable-offload-kvcache"])
        return ["--page-size", str(KVPOOL_PAGE), *side, "--hicache-storage-backend", "mooncake",
                "--hicache-storage-backend-extra-config", json.dumps(MOONCAKE_CONFIG, separators=(",", ":"))]

    kvpool_metrics_port = "KVPOOL_METRICS_PORT"  # mooncake_master --metrics_port

    def kvpool_args(self, dep: Deployment) -> list[str]:
        """Mooncake master with its embedded HTTP metadata server (mooncake-store/src/master.cpp flags; both
        bind BIND_ADDRESS). It only coordinates: the memory is the engines' segments (global_segment_size)."""
        return ["mooncake_master", "--rpc_address=${BIND_ADDRESS}", "--rpc_port=${KVPOOL_PORT}",
                "--enable_http_metadata_server=true", "--http_metadata_server_host=${BIND_ADDRESS}",
                "--http_metadata_server_port=${KVPOOL_METADATA_PORT}", "--metrics_port=${KVPOOL_METRICS_PORT}",
                "--eviction_high_watermark_ratio=0.95"]

    def setup_services(self, dep: Deployment) -> dict[str, dict]:
        """disagg-kvpool: one-shot check that the image has Mooncake (store client and mooncake_master) and, with
        the nixl transfer backend, NIXL (the runner knows one-shot checks by their `pdsuite.role: setup` label)."""
        if dep.backend is not Backend.GPU or dep.kvpool is None:
            return {}
        check = ("import importlib.util as u, os, shutil, sys; bad = []; "
                 "nixl = os.environ.get('SGLANG_TRANSFER_BACKEND', 'nixl') == 'nixl'; "
                 "bad += ['nixl (SGLANG_TRANSFER_BACKEND=nixl)'] if nixl and u.find_spec('nixl') is None else []; "
                 "bad += ['mooncake (pip install mooncake-transfer-engine)'] if u.find_spec('mooncake') is None "
                 "else []; bad += ['mooncake_master on PATH'] if shutil.which('mooncake_master') is None else []; "
                 "print('MISSING: ' + ', '.join(bad) + ' (docs/gpu-runbook.md)' if bad else "
                 "'mooncake ok' + (', nixl ok' if nixl else '')); sys.exit(1 if bad else 0)")
        return {"mooncake-check": {"entrypoint": ["python3", "-c", check],
                                   "environment": {"SGLANG_TRANSFER_BACKEND": "${SGLANG_TRANSFER_BACKEND}"}}}

    def parser_argv(self, argv: list[str], local_model: str) -> list[str]:
        return argv  # prepare_server_args does not read the model

    def engine_env(self, dep: Deployment, eng: Engine) -> dict[str, str]:
        env = {"HF_TOKEN": "${HF_TOKEN}", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if eng.role in (Role.PREFILL, Role.DECODE):
            env["MC_TCP_ENABLE_CONNECTION_POOL"] = "true"
        else:
            env["CUDA_VISIBLE_DEVICES"] = eng.cuda_devices
        return env

    def router_args(self, dep: Deployment) -> list[str]:
        if dep.disaggregated:
            workers = ["--pd-disaggregation"]
            for e in dep.engines_with(Role.PREFILL):
                workers += ["--prefill", url(e.port_var), f"${{{bootstrap_port(e)}}}"]
            for e in dep.engines_with(Role.DECODE):
                workers += ["--decode", url(e.port_var)]
            workers += ["--prefill-policy", "round_robin", "--decode-policy", "round_robin"]
        else:
            workers = ["--worker-urls", *(url(e.port_var) for e in dep.engines), "--policy", "round_robin"]
        # Retries off (default 5), as for vllm-router: a retried request would hide a failure and skew latency.
        return ["python3", "-m", "sglang_router.launch_router", *workers, "--disable-retries",
                "--host", "${BIND_ADDRESS}", "--port", "${ENDPOINT_PORT}",
                "--prometheus-host", "${BIND_ADDRESS}", "--prometheus-port", "${ROUTER_METRICS_PORT}"]

    def emulator_args(self, dep: Deployment, eng: Engine) -> list[str]:
        if eng.role is not Role.PREFILL:
            return []
        args = ["--bootstrap-port", f"${{{bootstrap_port(eng)}}}"]
        if dep.kvpool is not None:
            args += ["--kv-pool", url(dep.kvpool.port_var), "--kv-pool-block", str(KVPOOL_PAGE)]
        return args

    def extra_ports(self, dep: Deployment, eng: Engine) -> list[str]:
        if eng.role is Role.KVPOOL:
            return ["KVPOOL_METADATA_PORT", "KVPOOL_METRICS_PORT"] if dep.backend is Backend.GPU else []
        ports = [bootstrap_port(eng)] if eng.role is Role.PREFILL else []
        return ports + ([NCCL_PORT[eng.index]] if dep.backend is Backend.GPU else [])

    # ---- metrics: SGLang reports KV transfer in ms, MB and GB/s --------------------------------------
    engine_metrics = {
        "ttft_s": MetricMap("sglang:time_to_first_token_seconds"),
        "itl_s": MetricMap("sglang:inter_token_latency_seconds"),
        "tpot_s": MetricMap("sglang:request_time_per_output_token_seconds"),
        "e2e_s": MetricMap("sglang:e2e_request_latency_seconds"),
        "queue_s": MetricMap("sglang:queue_time_seconds"),
        "prefill_s": MetricMap("sglang:per_stage_req_latency_seconds", labels={"stage": "prefill_forward"}),
        # P/D stages (req_time_stats.py): P bootstrap = handshake with D + D's KV allocation; P transfer stage =
        # transfer queue -> KV sent; D prepare/bootstrap before the transfer; D "transferred" = waiting for the KV,
        # which includes P's queue and prefill (not pure DMA); fake_output = D's first (prebuilt) step.
        "prefill_bootstrap_s": MetricMap("sglang:per_stage_req_latency_seconds", labels={"stage": "prefill_bootstrap"}),
        "kv_transfer_stage_s": MetricMap("sglang:per_stage_req_latency_seconds",
                                         labels={"stage": "prefill_transfer_kv_cache"}),
        "decode_prepare_s": MetricMap("sglang:per_stage_req_latency_seconds", labels={"stage": "decode_prepare"}),
        "decode_bootstrap_s": MetricMap("sglang:per_stage_req_latency_seconds", labels={"stage": "decode_bootstrap"}),
        "kv_wait_s": MetricMap("sglang:per_stage_req_latency_seconds", labels={"stage": "decode_transferred"}),
        "first_decode_s": MetricMap("sglang:per_stage_req_latency_seconds", labels={"stage": "fake_output"}),
        "kv_transfer_s": MetricMap("sglang:kv_transfer_latency_ms", scale=MS),
        "kv_transfer_bytes": MetricMap("sglang:kv_transfer_total_mb", scale=MB),
        "kv_transfer_bandwidth_Bps": MetricMap("sglang:kv_transfer_speed_gb_s", scale=GB),
        "kv_transfer_bootstrap_s": MetricMap("sglang:kv_transfer_bootstrap_ms", scale=MS),
        "kv_transfer_alloc_s": MetricMap("sglang:kv_transfer_alloc_ms", scale=MS),
        "kv_transfer_failures": MetricMap("sglang:num_transfer_failed_reqs"),
        "prompt_tokens": MetricMap("sglang:prompt_tokens"),
        "generation_tokens": MetricMap("sglang:generation_tokens"),
        "prompt_tokens_cached": MetricMap("sglang:cached_tokens"),
        # HiCache L3 hits (observability/metrics_collector.py: cached_tokens_total{cache_source="storage"}, only
        # present with a storage backend): the shared pool of disagg-kvpool
        "kvpool_hit_tokens": MetricMap("sglang:cached_tokens", labels={"cache_source": "storage"}),
        "requests_completed": MetricMap("sglang:num_requests"),
        "requests_running": MetricMap("sglang:num_running_reqs"),
        "requests_waiting": MetricMap("sglang:num_queue_reqs"),
        "cache_hit_ratio": MetricMap("sglang:cache_hit_rate", agg="mean"),
        "kv_cache_usage_ratio": MetricMap("sglang:token_usage", agg="mean"),
    }
    # ---- stand-in engine (suite/emulator): families exactly as SGLang 0.5.23 names, labels and buckets them
    # (checked against tests/fixtures/sglang-0.5.23-metrics*.txt).
    # key -> (family, type, help, label names, buckets, scale from s/bytes).
    emulator_handoff = "bootstrap_room"  # router injects bootstrap host/port/room; D waits for the room's KV
    emulator_error_style = "flat"  # {"object": "error", "message", "type", "param", "code"}
    emulator_created_series = False  # SGLang exports in multiprocess mode: no *_created samples
    emulator_metrics = {
        "ttft_s": ("sglang:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
                   _TL, _TTFT_B),
        "itl_s": ("sglang:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.",
                  ("engine_type", "model_name"), _ITL_B),
        "tpot_s": ("sglang:request_time_per_output_token_seconds", "histogram",
                   "Per-request TPOT in seconds: (finished_time - first_token_time) / (completion_tokens - 1).",
                   _TL, _ITL_B),
        "e2e_s": ("sglang:e2e_request_latency_seconds", "histogram",
                  "Histogram of End-to-end request latency in seconds", _TL, (*_TTFT_B[:-1], 400, 600, 1200, 1800,
                                                                               2400)),
        "queue_s": ("sglang:queue_time_seconds", "histogram", "Histogram of queueing time in seconds.", _SL,
                    (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80,
                     90, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000, 2500, 3000)),
        "stage_s": ("sglang:per_stage_req_latency_seconds", "histogram", "The latency of each stage of requests.",
                    (*_SL, "stage"), tuple(0.001 * 1.62**i for i in range(30))),
        "prompt_tokens": ("sglang:prompt_tokens", "counter", "Number of prefill tokens processed.", _TL, ()),
        "generation_tokens": ("sglang:generation_tokens", "counter", "Number of generation tokens processed.", _TL, ()),
        "num_requests": ("sglang:num_requests", "counter", "Number of requests processed.", _TL, ()),
        "cached_tokens": ("sglang:cached_tokens", "counter",
                          "Number of cached prompt tokens by source (device/host/storage).",
                          ("engine_type", "model_name", "cache_source"), ()),
        "running": ("sglang:num_running_reqs", "gauge", "The number of running requests.", _SL, ()),
        "waiting": ("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.", _SL, ()),
        "kv_usage": ("sglang:token_usage", "gauge", "The token usage.", _SL, ()),
        "gen_throughput": ("sglang:gen_throughput", "gauge", "The generation throughput (token/s).", _SL, ()),
        "cache_hit_rate": ("sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", _SL, ()),
        # P/D: transfer latency/size/speed observed on PREFILL, in ms / MB / GB/s; bootstrap and alloc on both
        "kv_transfer_s": ("sglang:kv_transfer_latency_ms", "histogram", "Histogram of KV cache transfer latency in ms.",
                          _SL, (*_MS_B, 5000), 1e3),
        "kv_transfer_bytes": ("sglang:kv_transfer_total_mb", "histogram", "Histogram of KV cache transfer size in MB.",
                              _SL, (1, 5, 10, 50, 100, 500, 1000, 5000, 10000), 1e-6),
        "kv_transfer_Bps": ("sglang:kv_transfer_speed_gb_s", "histogram",
                            "Histogram of KV cache transfer speed in GB/s.", _SL,
                            (0.1, 0.5, 1, 5, 10, 25, 50, 100, 200, 400), 1e-9),
        "kv_bootstrap_s": ("sglang:kv_transfer_bootstrap_ms", "histogram",
                           "Histogram of KV transfer bootstrap time in ms.", _SL, _MS_B, 1e3),
        "kv_alloc_s": ("sglang:kv_transfer_alloc_ms", "histogram",
                       "Histogram of KV transfer allocation waiting time in ms.", _SL, _MS_B, 1e3),
    }
    # names of the hand-off fields sglang-router injects into the JSON body
    emulator_handoff_fields = {"host": "bootstrap_host", "port": "bootstrap_port", "room": "bootstrap_room"}
    emulator_block_size = 1  # SGLang pages the KV per token by default (--page-size 1)

    def emulator_labels(self, role: Role, model: str) -> dict[str, str]:
        engine_type = {Role.PREFILL: "prefill", Role.DECODE: "decode"}.get(role, "unified")
        return {"engine_type": engine_type, "model_name": model, "tp_rank": "0", "pp_rank": "0",
                "moe_ep_rank": "0"}

    router_metrics = {
        "router_requests": MetricMap("smg_router_requests"),
        "router_http_requests": MetricMap("smg_http_requests"),
    }
