"""SGLang 0.5.23: engine and router command lines, metric names and units, P/D quirks.

Facts: ../shared/notes/engines.md. P/D: --disaggregation-mode prefill|decode, the prefill side runs the bootstrap
server, both sides get the same bootstrap port, each its own --nccl-port; sglang-router injects
bootstrap_host/port/room. Metrics need --enable-metrics; KV-transfer metrics are in ms and MB.
"""

from __future__ import annotations

from suite.frameworks.base import Backend, Deployment, Engine, Framework, MetricMap, Role, Topology, register, url

NCCL_PORT = ("SGLANG_NCCL_PORT_A", "SGLANG_NCCL_PORT_B")
MS, MB, GB = 1e-3, 1e6, 1e9


@register
class SGLang(Framework):
    name = "sglang"
    image_setting = "SGLANG_IMAGE"
    extra_args_setting = "SGLANG_EXTRA_ARGS"
    entrypoint = ["python3", "-m", "sglang.launch_server"]
    role_label = "engine_type"
    role_values = {"unified": "colocated"}

    def engine_args(self, dep: Deployment, eng: Engine) -> list[str]:
        args = ["--model-path", "${MODEL}", "--served-model-name", "${MODEL}",
                "--host", "${BIND_ADDRESS}", "--port", f"${{{eng.port_var}}}",
                "--tp-size", str(eng.tp), "--context-length", "${MAX_MODEL_LEN}",
                "--mem-fraction-static", "${GPU_MEMORY_FRACTION}", "--load-format", "${LOAD_FORMAT}",
                "--enable-metrics", "--nccl-port", f"${{{NCCL_PORT[eng.index]}}}"]
        if eng.role in (Role.PREFILL, Role.DECODE):
            # Both GPUs are visible to both containers (CUDA IPC); pick ours by ordinal.
            args += ["--base-gpu-id", eng.cuda_devices,
                     "--disaggregation-mode", eng.role.value,
                     "--disaggregation-transfer-backend", "${SGLANG_TRANSFER_BACKEND}",
                     "--disaggregation-bootstrap-port", "${SGLANG_BOOTSTRAP_PORT}"]
        return [*args, "${SGLANG_EXTRA_ARGS}"]

    def engine_env(self, dep: Deployment, eng: Engine) -> dict[str, str]:
        env = {"HF_TOKEN": "${HF_TOKEN}", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if eng.role in (Role.PREFILL, Role.DECODE):
            env["MC_TCP_ENABLE_CONNECTION_POOL"] = "true"
        else:
            env["CUDA_VISIBLE_DEVICES"] = eng.cuda_devices
        return env

    def router_args(self, dep: Deployment) -> list[str]:
        a, b = (url(e.port_var) for e in dep.engines)
        if dep.topology is Topology.DISAGG:
            workers = ["--pd-disaggregation", "--prefill", a, "${SGLANG_BOOTSTRAP_PORT}", "--decode", b,
                       "--prefill-policy", "round_robin", "--decode-policy", "round_robin"]
        else:
            workers = ["--worker-urls", a, b, "--policy", "round_robin"]
        return ["python3", "-m", "sglang_router.launch_router", *workers,
                "--host", "${BIND_ADDRESS}", "--port", "${ENDPOINT_PORT}",
                "--prometheus-host", "${BIND_ADDRESS}", "--prometheus-port", "${ROUTER_METRICS_PORT}"]

    def emulator_args(self, dep: Deployment, eng: Engine) -> list[str]:
        if eng.role is Role.PREFILL:
            return ["--bootstrap-port", "${SGLANG_BOOTSTRAP_PORT}"]
        return []

    def extra_ports(self, dep: Deployment, eng: Engine) -> list[str]:
        ports = ["SGLANG_BOOTSTRAP_PORT"] if eng.role is Role.PREFILL else []
        return ports + ([NCCL_PORT[eng.index]] if dep.backend is Backend.GPU else [])

    # ---- metrics: SGLang reports KV transfer in ms, MB and GB/s --------------------------------------
    engine_metrics = {
        "ttft_s": MetricMap("sglang:time_to_first_token_seconds"),
        "itl_s": MetricMap("sglang:inter_token_latency_seconds"),
        "tpot_s": MetricMap("sglang:request_time_per_output_token_seconds"),
        "e2e_s": MetricMap("sglang:e2e_request_latency_seconds"),
        "queue_s": MetricMap("sglang:queue_time_seconds"),
        "prefill_s": MetricMap("sglang:per_stage_req_latency_seconds", labels={"stage": "prefill_forward"}),
        "kv_transfer_s": MetricMap("sglang:kv_transfer_latency_ms", scale=MS),
        "kv_transfer_bytes": MetricMap("sglang:kv_transfer_total_mb", scale=MB),
        "kv_transfer_bandwidth_Bps": MetricMap("sglang:kv_transfer_speed_gb_s", scale=GB),
        "kv_transfer_bootstrap_s": MetricMap("sglang:kv_transfer_bootstrap_ms", scale=MS),
        "kv_transfer_alloc_s": MetricMap("sglang:kv_transfer_alloc_ms", scale=MS),
        "kv_transfer_failures": MetricMap("sglang:num_transfer_failed_reqs"),
        "prompt_tokens": MetricMap("sglang:prompt_tokens"),
        "generation_tokens": MetricMap("sglang:generation_tokens"),
        "prompt_tokens_cached": MetricMap("sglang:cached_tokens"),
        "requests_completed": MetricMap("sglang:num_requests"),
        "requests_running": MetricMap("sglang:num_running_reqs"),
        "requests_waiting": MetricMap("sglang:num_queue_reqs"),
        "cache_hit_ratio": MetricMap("sglang:cache_hit_rate", agg="mean"),
        "kv_cache_usage_ratio": MetricMap("sglang:token_usage", agg="mean"),
    }
    router_metrics = {
        "router_requests": MetricMap("smg_router_requests"),
        "router_http_requests": MetricMap("smg_http_requests"),
    }
