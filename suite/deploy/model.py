"""What a deployment is: engines with roles and GPU pins, an optional router, one endpoint.

Framework modules turn these into command lines; `compose.py` turns them into compose services; the runner
and the report read the same objects. Nothing here knows about a particular framework.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Role(StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"
    COLOCATED = "colocated"  # prefill and decode on the same engine
    ROUTER = "router"
    KVPOOL = "kvpool"  # a shared CPU KV pool server the engines load prefix KV from and store it to


class Backend(StrEnum):
    """Where the engines come from. Only GPU uses the frameworks' engine images."""

    GPU = "gpu"  # real engines on GPUs
    CPU = "cpu"  # real vLLM on CPU (no GPU needed)
    EMU = "emu"  # the suite's stand-in engine; everything it produces is labelled "emulated"


class Topology(StrEnum):
    DISAGG = "disagg"  # 1 prefill + 1 decode engine, one GPU each, KV moved between them
    COLOCATED = "colocated"  # one TP=1 engine on one GPU
    TP2 = "tp2"  # one TP=2 engine over both GPUs
    DP2 = "dp2"  # two TP=1 replicas behind the router
    P1D2 = "1p2d"  # xPyD: 1 prefill + 2 decode engines on three GPUs
    P2D1 = "2p1d"  # xPyD: 2 prefill + 1 decode engines on three GPUs
    DISAGG_KVPOOL = "disagg-kvpool"  # disagg plus a shared CPU KV pool service (LMCache server / Mooncake master)
    # One GPU: the smoke test of the whole P/D path on any single-GPU box (each engine a share of its memory)
    DISAGG_1GPU = "disagg-1gpu"  # prefill and decode engines on the same GPU
    COLOCATED_1GPU = "colocated-1gpu"  # one engine with the same memory share, the baseline for disagg-1gpu


SHARED_GPU_CAVEAT = ("shared GPU: shows the P/D path and the transfer cost, not the isolation benefit of two GPUs")


class Engine(BaseModel):
    model_config = {"frozen": True}

    name: str  # service suffix: prefill, decode, engine, replica0, ...
    role: Role
    port_var: str  # Settings field holding its port
    gpu_vars: tuple[str, ...]  # Settings fields holding host GPU indices it needs (reserved for the container)
    cuda_devices: str  # CUDA ordinals inside the container (all reserved GPUs are visible, PCI order)
    tp: int = 1
    index: int = 0  # 0 for engine A, 1 for engine B (selects per-side ports)


class Deployment(BaseModel):
    model_config = {"frozen": True}

    framework: str
    topology: Topology
    backend: Backend
    engines: tuple[Engine, ...]
    router: bool = Field(description="a router serves the endpoint (P/D and replicas)")

    @property
    def name(self) -> str:
        """Compose profile name, e.g. vllm-disagg, emu-sglang-dp2, cpu-vllm-colocated."""
        base = f"{self.framework}-{self.topology.value}"
        return base if self.backend is Backend.GPU else f"{self.backend.value}-{base}"

    @property
    def disaggregated(self) -> bool:
        """Prefill and decode run on different engines (KV moves between them)."""
        return any(e.role in (Role.PREFILL, Role.DECODE) for e in self.engines)

    @property
    def kvpool(self) -> Engine | None:
        """The shared KV pool service, if the deployment has one (it is no engine: no GPU, no model)."""
        return next((e for e in self.engines if e.role is Role.KVPOOL), None)

    @property
    def model_engines(self) -> list[Engine]:
        """The engines that serve the model (every engine but the KV pool server)."""
        return [e for e in self.engines if e.role is not Role.KVPOOL]

    def engines_with(self, role: Role) -> list[Engine]:
        return [e for e in self.engines if e.role is role]

    @property
    def shared_gpu(self) -> bool:
        """Topologies built for one GPU (P and D, or the baseline, take a share of its memory)."""
        return self.topology in (Topology.DISAGG_1GPU, Topology.COLOCATED_1GPU)

    @property
    def caveat(self) -> str | None:
        """What a result of this deployment cannot show; the report prints it with every figure of it."""
        return SHARED_GPU_CAVEAT if self.shared_gpu else None

    @property
    def emulated(self) -> bool:
        return self.backend is Backend.EMU

    @property
    def gpus_needed(self) -> int:
        return len({g for e in self.engines for g in e.gpu_vars}) if self.backend is Backend.GPU else 0

    def service(self, part: str) -> str:
        return f"{self.name}-{part}"

    @property
    def endpoint_service(self) -> str:
        return self.service("router") if self.router else self.service(self.engines[0].name)

    @property
    def services(self) -> list[str]:
        names = [self.service(e.name) for e in self.engines]
        return names + ([self.service("router")] if self.router else [])
