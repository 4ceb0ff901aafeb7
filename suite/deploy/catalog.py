"""Every deployment the suite knows: framework x topology x backend, built from one table of topologies."""

from __future__ import annotations

from functools import cache

from suite.deploy.model import Backend, Deployment, Engine, Role, Topology
from suite.frameworks.base import all_frameworks
from suite.frameworks.base import get as get_framework

PAIR = ("PREFILL_GPU", "DECODE_GPU")
TRIO = (*PAIR, "THIRD_GPU")


def _pd(name: str, role: Role, index: int, gpus: tuple[str, ...]) -> Engine:
    """A P/D engine: sees every GPU of the deployment and takes the one at its own ordinal."""
    port = ("ENGINE_A_PORT", "ENGINE_B_PORT", "ENGINE_C_PORT")[index]
    return Engine(name=name, role=role, port_var=port, gpu_vars=gpus, cuda_devices=str(index), index=index)


# The shared KV pool server of disagg-kvpool: a CPU service (no GPU) both engines reach at KVPOOL_PORT.
KVPOOL = Engine(name="pool", role=Role.KVPOOL, port_var="KVPOOL_PORT", gpu_vars=(), cuda_devices="")
DISAGG = (_pd("prefill", Role.PREFILL, 0, PAIR), _pd("decode", Role.DECODE, 1, PAIR))

# Engines of each topology. Engines that exchange KV (disagg) or shard a model (tp2) see both GPUs, in PCI
# order, and pick theirs by CUDA ordinal; so PREFILL_GPU must be the lower index (checked in Settings).
TOPOLOGIES: dict[Topology, tuple[tuple[Engine, ...], bool]] = {
    Topology.DISAGG: (DISAGG, True),
    Topology.COLOCATED: ((Engine(name="engine", role=Role.COLOCATED, port_var="ENDPOINT_PORT",
                                 gpu_vars=PAIR[:1], cuda_devices="0"),), False),
    Topology.TP2: ((Engine(name="engine", role=Role.COLOCATED, port_var="ENDPOINT_PORT", gpu_vars=PAIR,
                           cuda_devices="0,1", tp=2),), False),
    Topology.DP2: ((Engine(name="replica0", role=Role.COLOCATED, port_var="ENGINE_A_PORT", gpu_vars=PAIR[:1],
                           cuda_devices="0", index=0),
                    Engine(name="replica1", role=Role.COLOCATED, port_var="ENGINE_B_PORT", gpu_vars=PAIR[1:],
                           cuda_devices="0", index=1)), True),
    # xPyD: engine index 0 is always a prefill and 1 a decode (their port settings say so); the third varies.
    Topology.P1D2: ((_pd("prefill", Role.PREFILL, 0, TRIO), _pd("decode0", Role.DECODE, 1, TRIO),
                     _pd("decode1", Role.DECODE, 2, TRIO)), True),
    Topology.P2D1: ((_pd("prefill0", Role.PREFILL, 0, TRIO), _pd("decode", Role.DECODE, 1, TRIO),
                     _pd("prefill1", Role.PREFILL, 2, TRIO)), True),
    # P/D exactly as disagg, plus the shared CPU KV pool (framework modules: which server, which engine flags).
    Topology.DISAGG_KVPOOL: ((*DISAGG, KVPOOL), True),
    # One GPU: P and D (or the baseline) on PREFILL_GPU, each with SHARED_GPU_MEMORY_FRACTION of its memory.
    Topology.DISAGG_1GPU: ((Engine(name="prefill", role=Role.PREFILL, port_var="ENGINE_A_PORT",
                                   gpu_vars=PAIR[:1], cuda_devices="0", index=0),
                            Engine(name="decode", role=Role.DECODE, port_var="ENGINE_B_PORT",
                                   gpu_vars=PAIR[:1], cuda_devices="0", index=1)), True),
    Topology.COLOCATED_1GPU: ((Engine(name="engine", role=Role.COLOCATED, port_var="ENDPOINT_PORT",
                                      gpu_vars=PAIR[:1], cuda_devices="0"),), False),
}


@cache
def deployments() -> dict[str, Deployment]:
    out: dict[str, Deployment] = {}
    for backend in (Backend.GPU, Backend.EMU, Backend.CPU):
        for fw in all_frameworks():
            for topo, (engines, router) in TOPOLOGIES.items():
                if backend is Backend.CPU and topo not in fw.cpu_topologies:
                    continue
                d = Deployment(framework=fw.name, topology=topo, backend=backend, engines=engines, router=router)
                out[d.name] = d
    return out


def get(name: str) -> Deployment:
    try:
        return deployments()[name]
    except KeyError:
        raise ValueError(f"unknown deployment {name!r}; known: {', '.join(deployments())}") from None


def port_settings(dep: Deployment) -> list[str]:
    """Settings naming every port the deployment opens (for the doctor's busy-port check)."""
    fw = get_framework(dep.framework)
    ports = {e.port_var for e in dep.engines} | ({"ENDPOINT_PORT", "ROUTER_METRICS_PORT"} if dep.router else set())
    for eng in dep.engines:
        ports.update(fw.extra_ports(dep, eng))
    return sorted(ports)


def gpu_order_problem(dep: Deployment, settings) -> str | None:
    """Engines that see several GPUs pick theirs by PCI-order ordinal: their host indices must ascend."""
    used = sorted({v for e in dep.engines for v in e.gpu_vars}, key=TRIO.index)
    ids = [getattr(settings, v) for v in used]
    if dep.backend is Backend.GPU and ids != sorted(set(ids)):
        return f"{dep.name} needs {' < '.join(used)} (got {', '.join(map(str, ids))})"
    return None
