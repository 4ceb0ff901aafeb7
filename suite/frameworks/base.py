"""The contract every framework module fulfils, and the registry that finds them.

A framework module (vllm.py, sglang.py) is the only place that knows a framework's command lines, metric names
and units, and request quirks. Everything else asks `get(name)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from suite.deploy.model import Backend, Deployment, Engine, Role, Topology


@dataclass(frozen=True)
class MetricMap:
    """One normalised metric drawn from one native Prometheus family.

    scale converts the native unit to the schema's unit (seconds, bytes, bytes/s);
    labels selects series (e.g. {"source": "external_kv_transfer"});
    agg combines the selected series of a gauge (sum for counts, mean for ratios); counters and histograms sum.
    """

    native: str
    scale: float = 1.0
    labels: dict[str, str] = field(default_factory=dict)
    agg: str = "sum"  # sum | mean | max


class Framework:
    name: ClassVar[str]
    image_setting: ClassVar[str]  # Settings field naming the engine image
    extra_args_setting: ClassVar[str]
    entrypoint: ClassVar[list[str] | None]  # None: keep the image's entrypoint
    cpu_topologies: ClassVar[tuple[Topology, ...]] = ()  # topologies with a real CPU backend
    health_path: ClassVar[str] = "/health"
    # the engine image's entrypoint: what the host driver runs in front of the compose command line
    image_entrypoint: ClassVar[list[str]]
    # where the engine says which version it is (the report records what ran, not what the settings name)
    version_path: ClassVar[str | None] = None
    version_key: ClassVar[str] = "version"
    # regexes for the log line that names why an engine failed to start (the host driver quotes the first match)
    failure_patterns: ClassVar[tuple[str, ...]] = ()
    # normalised metric name -> native family (engine /metrics and router /metrics)
    engine_metrics: ClassVar[dict[str, MetricMap]]
    router_metrics: ClassVar[dict[str, MetricMap]]
    # label that tells an engine's role in its own metrics, if any (SGLang: engine_type)
    role_label: ClassVar[str | None] = None
    role_values: ClassVar[dict[str, str]] = {}  # role_label value -> Role value where they differ
    # request quirk: /v1/completions through this framework's endpoint accepts `prompt: [token ids]`
    # (False: the load generator sends text of an exact token count instead)
    prompt_token_ids: ClassVar[bool] = True
    # the Settings field that lets UCX's cuda_ipc serve READs without NVLink, where this framework's KV connector
    # reads the KV (a UCX GET, off by default on one GPU / PCIe); None: its transfers write (cuda_ipc serves PUTs)
    kv_read_setting: ClassVar[str | None] = None

    # ---- deployment -----------------------------------------------------------------------------
    def engine_args(self, dep: Deployment, eng: Engine) -> list[str]:
        """Arguments after the image entrypoint, with ${SETTING} references compose resolves."""
        raise NotImplementedError

    def engine_env(self, dep: Deployment, eng: Engine) -> dict[str, str]:
        return {}

    def router_args(self, dep: Deployment) -> list[str]:
        """Full router command line (router image has both routers on PATH)."""
        raise NotImplementedError

    def setup_services(self, dep: Deployment) -> dict[str, dict]:
        """Extra one-shot services that engines wait for (e.g. a NIXL presence check)."""
        return {}

    def kvpool_args(self, dep: Deployment) -> list[str]:
        """Full command line of the shared KV pool server (disagg-kvpool, GPU backend), run in the engine image."""
        raise NotImplementedError

    # Setting naming the port where the GPU pool server serves Prometheus text, or None if it serves none (then the
    # runner does not scrape it; the emulated pool serves /metrics on its own port).
    kvpool_metrics_port: str | None = None

    def emulator_args(self, dep: Deployment, eng: Engine) -> list[str]:
        """Hand-off options the stand-in engine needs to speak this framework's P/D protocol."""
        return []

    def max_model_len(self, dep: Deployment, settings) -> int:
        """Longest request (prompt + output) the deployment's engines accept."""
        return settings.MAX_MODEL_LEN

    # ---- request tracing (docs/time-breakdown.md) ---------------------------------------------------
    def tracing_args(self, dep: Deployment, eng: Engine, endpoint: str) -> list[str]:
        """Engine arguments that make a real engine export its request spans to `endpoint` (OTLP/HTTP). The runner
        appends them (to the framework's *_EXTRA_ARGS setting) only while its receiver runs; [] = no spans."""
        return []

    def tracing_env(self, dep: Deployment, eng: Engine) -> dict[str, str]:
        """OpenTelemetry SDK settings every engine gets (inert while tracing is off): OTLP over HTTP/protobuf to the
        suite's receiver, a short batch delay so a point's spans arrive before the next point, and resource
        attributes naming the engine so a span tells whether P or D sent it."""
        return {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "500",
                "OTEL_SERVICE_NAME": dep.service(eng.name),
                "OTEL_RESOURCE_ATTRIBUTES": f"pdsuite.role={eng.role.value},pdsuite.engine={eng.name}"}

    def extra_ports(self, dep: Deployment, eng: Engine) -> list[str]:
        """Settings naming ports the engine opens besides its HTTP port (side channels, bootstrap, NCCL)."""
        return []


_REGISTRY: dict[str, Framework] = {}
FRAMEWORK_MODULES = ("suite.frameworks.vllm", "suite.frameworks.sglang")


def register(cls: type[Framework]) -> type[Framework]:
    _REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Framework:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown framework {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def all_frameworks() -> list[Framework]:
    _load()
    return list(_REGISTRY.values())


def _load() -> None:
    import importlib

    for module in FRAMEWORK_MODULES:  # each registers itself on import
        importlib.import_module(module)


def memory_fraction(dep: Deployment) -> str:
    """Engines that share one GPU each take SHARED_GPU_MEMORY_FRACTION of it; others GPU_MEMORY_FRACTION."""
    return "${SHARED_GPU_MEMORY_FRACTION}" if dep.shared_gpu else "${GPU_MEMORY_FRACTION}"


def url(port_setting: str) -> str:
    return f"http://${{BIND_ADDRESS}}:${{{port_setting}}}"


__all__ = ["Backend", "Deployment", "Engine", "Framework", "MetricMap", "Role", "Topology", "get", "register", "url"]
