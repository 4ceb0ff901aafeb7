"""vLLM 0.33: engine and router command lines, metric names, P/D quirks.

Facts: ../shared/notes/engines.md. P/D on one host uses NixlConnector (kv_producer / kv_consumer), each side
with its own NIXL side-channel port; the CPU backend uses ExampleConnector over a shared folder.
"""

from __future__ import annotations

import json

from suite.frameworks.base import Backend, Deployment, Engine, Framework, MetricMap, Role, Topology, register, url

KV_ROLE = {Role.PREFILL: "kv_producer", Role.DECODE: "kv_consumer"}
NIXL_PORT = {Role.PREFILL: "VLLM_NIXL_PORT_PREFILL", Role.DECODE: "VLLM_NIXL_PORT_DECODE"}
CPU_MODEL_DIR = "/models/tiny-llama"  # built by `pdsuite tiny-model` inside images/vllm-cpu
CPU_KV_DIR = "/kv"  # ExampleConnector's shared storage (a volume both CPU engines mount)
NIXL_MIN_VERSION = "1.5.0"


@register
class VLLM(Framework):
    name = "vllm"
    image_setting = "VLLM_IMAGE"
    extra_args_setting = "VLLM_EXTRA_ARGS"
    entrypoint = None  # vllm/vllm-openai's entrypoint is ["vllm", "serve"]
    cpu_topologies = (Topology.DISAGG, Topology.COLOCATED)

    def kv_transfer_config(self, dep: Deployment, eng: Engine) -> dict | None:
        if eng.role not in KV_ROLE:
            return None
        if dep.backend is Backend.CPU:
            return {"kv_connector": "ExampleConnector", "kv_role": KV_ROLE[eng.role],
                    "kv_connector_extra_config": {"shared_storage_path": CPU_KV_DIR}}
        return {"kv_connector": "${VLLM_KV_CONNECTOR}", "kv_role": KV_ROLE[eng.role], "kv_buffer_device": "cuda"}

    def engine_args(self, dep: Deployment, eng: Engine) -> list[str]:
        cpu = dep.backend is Backend.CPU
        args = [CPU_MODEL_DIR if cpu else "${MODEL}",
                "--served-model-name", "${MODEL}",
                "--host", "${BIND_ADDRESS}", "--port", f"${{{eng.port_var}}}",
                "--tensor-parallel-size", str(eng.tp)]
        if cpu:
            args += ["--max-model-len", "1024", "--load-format", "dummy", "--enforce-eager"]
        else:
            args += ["--max-model-len", "${MAX_MODEL_LEN}", "--gpu-memory-utilization", "${GPU_MEMORY_FRACTION}",
                     "--load-format", "${LOAD_FORMAT}"]
        kv = self.kv_transfer_config(dep, eng)
        if kv:
            args += ["--kv-transfer-config", json.dumps(kv, separators=(",", ":"))]
        return [*args, "${VLLM_EXTRA_ARGS}"]

    def engine_env(self, dep: Deployment, eng: Engine) -> dict[str, str]:
        env = {"HF_TOKEN": "${HF_TOKEN}"}
        if dep.backend is Backend.CPU:
            return env | {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                          "VLLM_CPU_OMP_THREADS_BIND": str(eng.index)}
        env |= {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": eng.cuda_devices}
        if eng.role in NIXL_PORT:
            env |= {"VLLM_NIXL_SIDE_CHANNEL_HOST": "${BIND_ADDRESS}",
                    "VLLM_NIXL_SIDE_CHANNEL_PORT": f"${{{NIXL_PORT[eng.role]}}}",
                    "UCX_TLS": "all", "UCX_NET_DEVICES": "all"}
        return env

    def router_args(self, dep: Deployment) -> list[str]:
        a, b = (url(e.port_var) for e in dep.engines)
        if dep.topology is Topology.DISAGG:
            workers = ["--vllm-pd-disaggregation", "--prefill", a, "--decode", b]
        else:
            workers = ["--worker-urls", a, b]
        return ["vllm-router", *workers, "--policy", "round_robin", "--disable-retries",
                "--host", "${BIND_ADDRESS}", "--port", "${ENDPOINT_PORT}",
                "--prometheus-host", "${BIND_ADDRESS}", "--prometheus-port", "${ROUTER_METRICS_PORT}"]

    def setup_services(self, dep: Deployment) -> dict[str, dict]:
        if dep.backend is not Backend.GPU or dep.topology is not Topology.DISAGG:
            return {}
        check = ("import importlib.metadata as m, sys; v = m.version('nixl'); "
                 f"ok = tuple(map(int, v.split('.')[:3])) >= {tuple(map(int, NIXL_MIN_VERSION.split('.')))}; "
                 f"print('nixl', v, 'ok' if ok else 'too old: need >= {NIXL_MIN_VERSION}'); sys.exit(0 if ok else 1)")
        return {"nixl-check": {"entrypoint": ["python3", "-c", check]}}

    def emulator_args(self, dep: Deployment, eng: Engine) -> list[str]:
        return ["--kv-port", f"${{{NIXL_PORT[eng.role]}}}"] if eng.role in NIXL_PORT else []

    def extra_ports(self, dep: Deployment, eng: Engine) -> list[str]:
        return [NIXL_PORT[eng.role]] if eng.role in NIXL_PORT and dep.backend is not Backend.CPU else []

    # ---- metrics (engine /metrics; counters carry _total) -----------------------------------------
    engine_metrics = {
        "ttft_s": MetricMap("vllm:time_to_first_token_seconds"),
        "itl_s": MetricMap("vllm:inter_token_latency_seconds"),
        "tpot_s": MetricMap("vllm:request_time_per_output_token_seconds"),
        "e2e_s": MetricMap("vllm:e2e_request_latency_seconds"),
        "queue_s": MetricMap("vllm:request_queue_time_seconds"),
        "prefill_s": MetricMap("vllm:request_prefill_time_seconds"),
        "decode_s": MetricMap("vllm:request_decode_time_seconds"),
        "kv_transfer_s": MetricMap("vllm:nixl_xfer_time_seconds"),
        "kv_transfer_post_s": MetricMap("vllm:nixl_post_time_seconds"),
        "kv_transfer_bytes": MetricMap("vllm:nixl_bytes_transferred"),
        "kv_transfer_descriptors": MetricMap("vllm:nixl_num_descriptors"),
        "kv_transfer_failures": MetricMap("vllm:nixl_num_failed_transfers"),
        "prompt_tokens": MetricMap("vllm:prompt_tokens"),
        "generation_tokens": MetricMap("vllm:generation_tokens"),
        "prompt_tokens_computed": MetricMap("vllm:prompt_tokens_by_source", labels={"source": "local_compute"}),
        "prompt_tokens_cached": MetricMap("vllm:prompt_tokens_by_source", labels={"source": "local_cache_hit"}),
        "prompt_tokens_transferred": MetricMap("vllm:prompt_tokens_by_source",
                                               labels={"source": "external_kv_transfer"}),
        "prefix_cache_queries": MetricMap("vllm:prefix_cache_queries"),
        "prefix_cache_hits": MetricMap("vllm:prefix_cache_hits"),
        "requests_completed": MetricMap("vllm:request_success"),
        "requests_running": MetricMap("vllm:num_requests_running"),
        "requests_waiting": MetricMap("vllm:num_requests_waiting"),
        "kv_cache_usage_ratio": MetricMap("vllm:kv_cache_usage_perc", agg="mean"),
    }
    router_metrics = {
        "router_requests": MetricMap("vllm_router_requests"),
        "router_pd_requests": MetricMap("vllm_router_pd_requests"),
        "router_pd_decode_pending_s": MetricMap("vllm_router_pd_decode_pending_seconds"),
    }
