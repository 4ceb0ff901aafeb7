"""Hardware profiles for the emulator's cost model. Calibration: docs/emulator.md and
docs/kv-transfer.md with docs/data/ (2x H100 80GB HBM3, NVLink, measured 2026-11-27)."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Hardware:
    name: str
    flops: float  # effective dense FLOP/s of one GPU for prefill (already includes MFU)
    mem_bw: float  # effective HBM bytes/s for decode (peak x efficiency)
    mem_bytes: float  # device memory per GPU
    mem_fraction: float  # fraction the engine may take (weights + KV cache)
    step_overhead_s: float  # fixed cost of every engine step (launch, sampling, scheduling)
    prefill_floor_s: float  # a prefill chunk never takes less (overhead-bound short prompts)
    tp_efficiency: float  # fraction of linear speed-up kept per extra TP rank
    allreduce_latency_s: float  # per all-reduce op (TP: 2 per layer per step)
    link_bw: float  # GPU<->GPU bytes/s for KV transfer and all-reduce
    xfer_latency_s: float  # fixed cost of one KV transfer (post + notification)
    xfer_per_layer_s: float  # per-layer descriptor overhead of one KV transfer
    # shared CPU KV pool (disagg-kvpool): host -> GPU bytes/s for prefix KV loaded from the pool (plus
    # xfer_latency_s per load). Default: PCIe Gen5 x16, 64 GB/s per direction (spec, not measured).
    pool_bw: float = 64e9
    # fixed cost of a step with prefill tokens, on top of the compute term (scaled down below 128 tokens like the
    # floor): kernels a CUDA-graphed decode step does not launch. Measured on vLLM 0.26 / H200 (docs/emulator.md).
    prefill_fixed_s: float = 0.0


PROFILES: dict[str, Hardware] = {
    # H100 SXM 80GB: prefill ~530 TFLOP/s effective (Llama-8B shape, 8192 tokens in 261 ms), HBM 3.35 TB/s x 0.85,
    # ~32 ms floor for prompts <= 1k (HF eager; an upper bound), NCCL ~368 GB/s coalesced with ~18 us per op.
    "h100": Hardware(name="h100", flops=530e12, mem_bw=3.35e12 * 0.85, mem_bytes=80e9, mem_fraction=0.85,
                     step_overhead_s=1.5e-3, prefill_floor_s=0.032, tp_efficiency=0.9, allreduce_latency_s=18e-6,
                     link_bw=368e9, xfer_latency_s=0.1e-3, xfer_per_layer_s=2 * 17e-6),
    # H200 141GB, fitted to vLLM 0.26.0 on one H200 (Llama-3.1-8B shape, CUDA graphs, 2026-12-02):
    # bench/emulator_calibration.py -> docs/data/emulator-h200-fit.json (flops, mem_bw, step_overhead_s,
    # prefill_fixed_s, prefill_floor_s); the rest as h100 (same NVLink 4). tests/unit/test_emulator_h200.py
    # keeps them in step.
    "h200": Hardware(name="h200", flops=705.4e12, mem_bw=3.210e12, mem_bytes=141e9, mem_fraction=0.85,
                     step_overhead_s=0.116e-3, prefill_floor_s=9.0e-3, prefill_fixed_s=5.65e-3, tp_efficiency=0.9,
                     allreduce_latency_s=18e-6, link_bw=368e9, xfer_latency_s=0.1e-3, xfer_per_layer_s=2 * 17e-6),
    # A fast, tiny profile for tests and demos on CPUs: steps of ~1-2 ms with the tiny-llama config.
    "cpu-tiny": Hardware(name="cpu-tiny", flops=2e11, mem_bw=2e10, mem_bytes=4e9, mem_fraction=0.5,
                         step_overhead_s=1e-3, prefill_floor_s=0.0, tp_efficiency=0.9, allreduce_latency_s=20e-6,
                         link_bw=2e9, xfer_latency_s=0.5e-3, xfer_per_layer_s=50e-6, pool_bw=1e9),
}


class HardwareError(ValueError):
    """Unknown profile or a bad profile file."""


def load_hardware(ref: str) -> Hardware:
    """A profile name (h100, cpu-tiny) or a JSON file with every Hardware field."""
    if ref in PROFILES:
        return PROFILES[ref]
    p = Path(ref)
    if not p.is_file():
        raise HardwareError(f"unknown hardware profile {ref!r}; known: {', '.join(PROFILES)} (or a JSON file)")
    names = ", ".join(asdict(PROFILES["h100"]))
    try:
        if p.stat().st_size > 1_000_000:
            raise HardwareError(f"{p}: larger than 1 MB; not a hardware profile")
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HardwareError(f"{p}: not a JSON hardware profile ({type(e).__name__}); fields: {names}") from None
    if not isinstance(data, dict):
        raise HardwareError(f"{p}: a hardware profile is a JSON object with the fields {names}")
    values = {}
    for f in fields(Hardware):
        if f.name == "name":
            values["name"] = str(data.get("name", p.stem))
            continue
        if f.name not in data and f.default is MISSING:
            raise HardwareError(f"{p}: field {f.name!r} missing; fields: {names}")
        v = data.get(f.name, f.default)
        # every number is a rate, a size, a fraction or a duration: finite and > 0 (durations may be 0)
        zero_ok = f.name.endswith("_s")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or \
                (v == 0 and not zero_ok):
            raise HardwareError(f"{p}: field {f.name!r} = {v!r} must be a finite number "
                                f"{'>= 0' if zero_ok else '> 0'}")
        values[f.name] = float(v)
    if values["mem_fraction"] > 1 or values["tp_efficiency"] > 1:
        raise HardwareError(f"{p}: mem_fraction and tp_efficiency are fractions (<= 1)")
    return Hardware(**values)
