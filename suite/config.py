"""Every user-facing setting, in one place.

`Settings` is the single source for `.env.example` (generated, with the descriptions below) and for the
defaults written into `docker-compose.yml` (`${VAR:-default}`), so the three can never drift apart.
Values come from the process environment first, then `.env`, then these defaults.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from dotenv import dotenv_values
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

# Settings that hold secrets: read from the environment, never written to compose, logs or results.
SECRET_SETTINGS = frozenset({"HF_TOKEN"})
# Opt-in for a secret in `.env` or a plan's `settings:` (docs/reliability.md): refused unless this is "1".
ALLOW_SECRET_IN_FILE = "PDSUITE_ALLOW_TOKEN_IN_FILE"
MAX_ENV_FILE_BYTES = 1_000_000
DEFAULT_ENV_FILE = ".env"


def secrets_allowed_in_files(environ: dict[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get(ALLOW_SECRET_IN_FILE) == "1"


def mask_secrets(values: dict) -> dict:
    """A copy of a settings-like mapping with every secret's value replaced (for anything written to disk)."""
    return {k: ("***" if k in SECRET_SETTINGS and v else v) for k, v in values.items()}


class ConfigError(ValueError):
    """A bad setting; the CLI prints it as one line and exits non-zero."""


def _port(default: int, what: str):
    return Field(default, ge=1, le=65535, description=what)


class Settings(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    # --- model -------------------------------------------------------------------------------------
    MODEL: str = Field(
        "meta-llama/Llama-3.1-8B-Instruct",
        description="Hugging Face model id (or a path inside the model cache) served by every deployment.",
    )
    MAX_MODEL_LEN: int = Field(16384, ge=256, description="Max context length passed to the engines.")
    HF_TOKEN: str = Field("", description="Token for gated models. Read from the environment; never stored.")
    MODEL_CACHE_DIR: str = Field(
        "~/.cache/huggingface", description="Host folder mounted as the shared Hugging Face cache."
    )
    MODEL_CACHE_MODE: str = Field(
        "rw", pattern=r"^(rw|ro)$",
        description="How engines mount the cache's hub/ folder (models only: never the token file next to it): "
                    "rw lets an engine download a missing model; ro once the model is in the cache.")
    GPU_MEMORY_FRACTION: float = Field(
        0.85, gt=0.1, le=0.98, description="Fraction of each GPU's memory the engine may take."
    )
    LOAD_FORMAT: str = Field(
        "auto", pattern=r"^(auto|dummy|safetensors)$",
        description="auto = real weights; dummy = random weights (timing only).",
    )
    # --- GPUs --------------------------------------------------------------------------------------
    PREFILL_GPU: int = Field(0, ge=0, description="Host GPU index of the prefill engine (replica 0 / TP rank 0).")
    DECODE_GPU: int = Field(1, ge=0, description="Host GPU index of the decode engine (replica 1 / TP rank 1).")
    THIRD_GPU: int = Field(2, ge=0, description="Host GPU index of the third engine of xPyD deployments (1p2d, 2p1d).")
    # --- network -----------------------------------------------------------------------------------
    BIND_ADDRESS: str = Field("127.0.0.1", description="Address every server binds to. 0.0.0.0 exposes them.")
    ENDPOINT_PORT: int = _port(8000, "The one OpenAI-compatible endpoint every deployment serves.")
    ENGINE_A_PORT: int = _port(8100, "Port of the prefill engine (or replica 0) behind the router.")
    ENGINE_B_PORT: int = _port(8200, "Port of the decode engine (or replica 1) behind the router.")
    ENGINE_C_PORT: int = _port(8300, "Port of the third engine of xPyD deployments.")
    ROUTER_METRICS_PORT: int = _port(29000, "Prometheus port of the router.")
    LOCUST_WEB_PORT: int = _port(8089, "Locust web UI.")
    LOCUST_WORKERS: int = Field(2, ge=1, le=64, description="Locust worker processes started by `make locust`.")
    LOCUST_DEPLOYMENT: str = Field(
        "vllm-disagg", pattern=r"^[a-z0-9-]+$",
        description="Deployment the Locust UI drives (`make locust DEPLOYMENT=...`): picks prompt form and tokenizer.")
    # --- images ------------------------------------------------------------------------------------
    VLLM_IMAGE: str = Field("vllm/vllm-openai:v0.33.0", description="vLLM engine image.")
    SGLANG_IMAGE: str = Field("lmsysorg/sglang:v0.5.23", description="SGLang engine image.")
    ROUTER_IMAGE: str = Field("pdsuite/router:local",
                              description="Image with vllm-router and sglang-router (images/router).")
    SUITE_IMAGE: str = Field("pdsuite/suite:local",
                             description="Image with the suite, Locust and the emulator (images/suite).")
    VLLM_CPU_IMAGE: str = Field("pdsuite/vllm-cpu:local", description="Image with real vLLM for CPU (images/vllm-cpu).")
    VLLM_ROUTER_VERSION: str = Field("0.1.17", description="vllm-router version baked into ROUTER_IMAGE.")
    SGLANG_ROUTER_VERSION: str = Field("0.3.2", description="sglang-router version baked into ROUTER_IMAGE.")
    # --- P/D transfer ------------------------------------------------------------------------------
    VLLM_KV_CONNECTOR: str = Field("NixlConnector", description="vLLM KV connector for P/D.")
    UCX_CUDA_IPC_GET_ZCOPY: str = Field(
        "y", pattern=r"^(y|n|auto)$",
        description="UCX_CUDA_IPC_ENABLE_GET_ZCOPY of the vLLM P/D engines. UCX turns cuda_ipc reads off (auto) "
        "when GPU 0 has no active NVLink - one GPU, PCIe-only hosts - and NIXL's READ, what vLLM's NixlConnector "
        "posts, then falls back to TCP (NIXL probe on one H200: 0.5 GB/s, 466-1,381 GB/s with y; docs/kv-transfer.md).")
    VLLM_NIXL_PORT_PREFILL: int = _port(5600, "NIXL side-channel port of the vLLM prefill engine.")
    VLLM_NIXL_PORT_DECODE: int = _port(5601, "NIXL side-channel port of the vLLM decode engine.")
    VLLM_NIXL_PORT_THIRD: int = _port(5602, "NIXL side-channel port of the third vLLM engine (xPyD).")
    SGLANG_TRANSFER_BACKEND: str = Field(
        "nixl",
        pattern=r"^(mooncake|nixl|mooncake_tcp|mori|ascend)$",
        description="SGLang --disaggregation-transfer-backend (nixl is reliable on one host).",
    )
    SGLANG_BOOTSTRAP_PORT: int = _port(8998, "SGLang prefill bootstrap server port.")
    SGLANG_BOOTSTRAP_PORT_THIRD: int = _port(8999, "Bootstrap port of a second SGLang prefill engine (2p1d).")
    SGLANG_NCCL_PORT_A: int = _port(31000, "SGLang --nccl-port of engine A.")
    SGLANG_NCCL_PORT_B: int = _port(31100, "SGLang --nccl-port of engine B.")
    SGLANG_NCCL_PORT_C: int = _port(31200, "SGLang --nccl-port of the third engine (xPyD).")
    # --- shared CPU KV pool (disagg-kvpool deployments) -------------------------------------------------
    KVPOOL_PORT: int = _port(
        8400, "Port of the shared KV pool service: vLLM's LMCache server, SGLang's Mooncake master RPC, or the "
        "emulated pool.")
    KVPOOL_METADATA_PORT: int = _port(8401, "Mooncake master's HTTP metadata server (SGLang disagg-kvpool).")
    KVPOOL_METRICS_PORT: int = _port(8402, "Mooncake master's HTTP metrics port (SGLang disagg-kvpool).")
    KVPOOL_SIZE_GB: int = Field(
        8, ge=1, le=4096, description="Host memory for the shared KV pool, GB: each SGLang engine's Mooncake "
        "segment; each vLLM engine's LMCache CPU buffer (the LMCache server itself has no limit); the emulated "
        "pool's capacity.")
    # --- extra engine arguments ----------------------------------------------------------------------
    VLLM_EXTRA_ARGS: str = Field("", description="Appended to every vLLM engine command line.")
    SGLANG_EXTRA_ARGS: str = Field("", description="Appended to every SGLang engine command line.")
    SHARED_GPU_MEMORY_FRACTION: float = Field(
        0.4, gt=0.05, le=0.48,
        description="Fraction of the GPU each engine takes where P and D share one GPU (*-1gpu deployments).")
    # --- telemetry ---------------------------------------------------------------------------------
    TRACING: str = Field(
        "on", pattern=r"^(on|off)$",
        description="on: during `pdsuite run` the engines export per-request spans (vLLM --otlp-traces-endpoint; "
        "the emulator the same spans) to the suite's own OTLP receiver, stored with each point "
        "(docs/time-breakdown.md).")
    OTLP_PORT: int = _port(4318, "Port of the suite's OTLP/HTTP trace receiver (binds BIND_ADDRESS) during runs.")
    GPU_SAMPLE_HZ: float = Field(20.0, ge=10.0, le=100.0,
                                 description="NVML GPU telemetry samples per second during every point (GPU hosts).")
    DCGM_EXPORTER_IMAGE: str = Field("nvcr.io/nvidia/k8s/dcgm-exporter:3.3.5-3.4.1-ubuntu22.04",
                                     description="NVIDIA dcgm-exporter image of the optional `dcgm` profile.")
    DCGM_EXPORTER_PORT: int = _port(9400, "Prometheus port of the optional dcgm-exporter (`--profile dcgm`).")
    ENGINE_START_PERIOD_S: int = Field(900, ge=30, description="Health-check grace period for model load.")
    # --- host driver (no Docker) ---------------------------------------------------------------------
    ENGINE_PREFIX: str = Field(
        "", description="Host driver: where engines and routers are installed, colon-separated venvs or `pip "
        "install --target` folders (scripts/wheelhouse.py install); their bin/ goes first on PATH. Empty: PATH.")
    HOST_STATE_DIR: str = Field(
        "~/.cache/pdsuite/host", description="Host driver: state files naming the process groups it started.")
    # --- emulator ----------------------------------------------------------------------------------
    EMU_HARDWARE: str = Field("h100", description="Emulator hardware profile (see docs/emulator.md).")
    EMU_MODEL_CONFIG: str = Field("llama-3.1-8b",
                                  description="Emulator model config: a bundled name or a config.json path.")

    @field_validator("BIND_ADDRESS")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)  # raises ValueError with a clear message
        return v

    @field_validator("VLLM_EXTRA_ARGS", "SGLANG_EXTRA_ARGS")
    @classmethod
    def _no_forbidden(cls, v: str) -> str:
        if "--disable-log-stats" in v:
            raise ValueError("--disable-log-stats switches off the engine metrics the suite measures")
        return v

    @model_validator(mode="after")
    def _gpus(self) -> Settings:
        if self.PREFILL_GPU >= self.DECODE_GPU:
            # P/D and TP=2 containers see both GPUs in PCI order and pick theirs by ordinal (0 = prefill).
            raise ValueError("PREFILL_GPU must be a lower GPU index than DECODE_GPU")
        ports = [getattr(self, name) for name in type(self).model_fields if name.endswith("_PORT")
                 or "_PORT_" in name]
        dup = {p for p in ports if ports.count(p) > 1}
        if dup:
            raise ValueError(f"ports must be distinct, used twice: {sorted(dup)}")
        return self

    def public(self) -> dict[str, object]:
        """Values safe to record with results (secrets masked)."""
        return mask_secrets(self.model_dump())


def read_env_file(env_file: str | Path, environ: dict[str, str]) -> dict[str, str]:
    """The settings of a .env file. The default `.env` may be absent (defaults apply); any other file named must
    exist: a typo would otherwise run silently on defaults (port 8000, the wrong GPUs)."""
    path = Path(env_file)
    if not path.exists():
        if str(env_file) == DEFAULT_ENV_FILE:
            return {}
        raise ConfigError(f"settings file {env_file}: no such file")
    if not path.is_file():
        raise ConfigError(f"settings file {env_file}: not a file")
    try:
        if path.stat().st_size > MAX_ENV_FILE_BYTES:
            raise ConfigError(f"settings file {env_file}: larger than {MAX_ENV_FILE_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"settings file {env_file}: not a text file (not UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"settings file {env_file}: cannot read ({e.strerror})") from None
    if "\x00" in text:
        raise ConfigError(f"settings file {env_file}: not a text file (NUL bytes)")
    import io

    values = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}
    secret = sorted(k for k in SECRET_SETTINGS if values.get(k))
    if secret and not secrets_allowed_in_files(environ):
        raise ConfigError(f"settings file {env_file}: {secret[0]} is set there; tokens are read from the environment "
                          f"only (export {secret[0]}=...), or set {ALLOW_SECRET_IN_FILE}=1 to allow it")
    return values


def load_settings(env_file: str | Path | None = DEFAULT_ENV_FILE, environ: dict[str, str] | None = None) -> Settings:
    """Environment > .env > defaults. Raises ConfigError with a one-line message on a bad value."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, str] = {}
    if env_file:
        values.update(read_env_file(env_file, environ))
    known = Settings.model_fields
    values.update({k: v for k, v in environ.items() if k in known})
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError(f"{env_file}: unknown setting {unknown[0]!r} (see .env.example)")
    try:
        return Settings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "settings"
        shown = "***" if where in SECRET_SETTINGS else repr(err.get("input"))[:60]
        raise ConfigError(f"bad setting {where}: {err['msg']} (got {shown})") from None


def env_example() -> str:
    """Render `.env.example` from the Settings model (tests keep the committed file identical)."""
    lines = ["# pdsuite settings. Copy to .env and edit; the environment overrides this file.",
             "# Generated by `pdsuite gen` from suite/config.py - edit the descriptions there.", ""]
    for name, field in Settings.model_fields.items():
        lines.append(f"# {field.description}")
        lines.append(f"{name}={'' if name in SECRET_SETTINGS else field.default}")
    return "\n".join(lines) + "\n"


def configuration_md() -> str:
    """docs/configuration.md: the settings table (generated, like .env.example)."""
    rows = ["# Configuration", "",
            "Every setting, its default and meaning. Put overrides in `.env` (copy `.env.example`) or the "
            "environment; the environment wins. Generated from `suite/config.py` by `pdsuite gen`.", "",
            "| setting | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "" if name in SECRET_SETTINGS else field.default
        rows.append(f"| `{name}` | `{default}` | {field.description} |")
    return "\n".join(rows) + "\n"


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand(text: str, settings: Settings) -> str:
    """Resolve compose-style ${VAR} / ${VAR:-default} references against settings (for parser proofs)."""
    values = settings.model_dump()
    return _VAR.sub(lambda m: str(values.get(m.group(1), m.group(2) or "")), text)
