"""Peak dense BF16 tensor FLOP/s and HBM bandwidth per GPU, keyed by the device name NVML reports.

Values are the vendor's datasheet numbers (without structured sparsity); sources in docs/time-breakdown.md.
Emulated runs are looked up by the emulator's hardware profile name (EMU_HARDWARE).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    name: str
    bf16_flops: float  # dense, per GPU
    hbm_bps: float  # bytes/s
    memory_bytes: float
    source: str


_T, _TB, _GB = 1e12, 1e12, 1e9
# (substring of the lower-cased NVML name, in order: the first match wins) -> peak
TABLE: list[tuple[str, GpuPeak]] = [
    ("h200 nvl", GpuPeak("H200 NVL", 835 * _T, 4.8 * _TB, 141 * _GB, "NVIDIA H200 datasheet")),
    ("h200", GpuPeak("H200 SXM", 989 * _T, 4.8 * _TB, 141 * _GB, "NVIDIA H200 datasheet")),
    ("h100 nvl", GpuPeak("H100 NVL", 835 * _T, 3.9 * _TB, 94 * _GB, "NVIDIA H100 datasheet")),
    ("h100 pcie", GpuPeak("H100 PCIe", 756 * _T, 2.0 * _TB, 80 * _GB, "NVIDIA H100 datasheet")),
    ("h100", GpuPeak("H100 SXM", 989 * _T, 3.35 * _TB, 80 * _GB, "NVIDIA H100 datasheet")),  # "H100 80GB HBM3"
    ("a100-sxm4-80gb", GpuPeak("A100 SXM 80GB", 312 * _T, 2.039 * _TB, 80 * _GB, "NVIDIA A100 datasheet")),
    ("a100-sxm4-40gb", GpuPeak("A100 SXM 40GB", 312 * _T, 1.555 * _TB, 40 * _GB, "NVIDIA A100 datasheet")),
    ("a100 80gb pcie", GpuPeak("A100 PCIe 80GB", 312 * _T, 1.935 * _TB, 80 * _GB, "NVIDIA A100 datasheet")),
    ("a100-pcie-40gb", GpuPeak("A100 PCIe 40GB", 312 * _T, 1.555 * _TB, 40 * _GB, "NVIDIA A100 datasheet")),
    ("l40s", GpuPeak("L40S", 362 * _T, 0.864 * _TB, 48 * _GB, "NVIDIA L40S datasheet")),
    ("l4", GpuPeak("L4", 121 * _T, 0.3 * _TB, 24 * _GB, "NVIDIA L4 datasheet")),
]
# emulator hardware profiles (suite/emulator/hardware.py) -> the GPU they stand in for
EMULATED = {"h100": "h100", "h200": "h200"}


def lookup(nvml_name: str) -> GpuPeak | None:
    """The peak of a GPU by its NVML name (e.g. "NVIDIA H200", "NVIDIA H100 80GB HBM3"); None if unknown."""
    n = nvml_name.lower().replace("nvidia", "").strip()
    return next((peak for key, peak in TABLE if key in n), None)


def emulated_peak(profile: str) -> GpuPeak | None:
    """An emulated run's GPU: the table entry its profile stands in for, or the profile's own (effective) numbers."""
    if profile in EMULATED:
        return lookup(EMULATED[profile])
    from suite.emulator.hardware import HardwareError, load_hardware

    try:
        hw = load_hardware(profile)
    except HardwareError:
        return None
    return GpuPeak(f"{hw.name} (emulator profile)", hw.flops, hw.mem_bw, hw.mem_bytes,
                   f"emulator hardware profile {hw.name} (effective values, not a datasheet)")
