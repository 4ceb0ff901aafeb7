"""GPU telemetry during a point: NVML (nvidia-ml-py, `import pynvml`) sampled at >= 10 Hz in a thread.

Per GPU and sample: SM utilization and memory-bandwidth utilization (nvmlDeviceGetUtilizationRates: percent of
the driver's last sample period in which a kernel ran / device memory was read or written), memory used,
power draw, SM and memory clocks. Each GPU is labelled with what the deployment runs on it (role, engine, TP rank,
replica). No NVML library or no GPU: `GpuSampler.start()` returns a one-line note instead of raising.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GPU_FILE = "gpu.parquet"
DEFAULT_HZ = 20.0
COLUMNS = ("t_s", "gpu", "name", "role", "engine", "tp_rank", "replica", "sm_util_pct", "mem_bw_util_pct",
           "mem_used_bytes", "mem_total_bytes", "power_w", "sm_clock_mhz", "mem_clock_mhz")


@dataclass(frozen=True)
class GpuLabel:
    role: str = ""  # prefill | decode | colocated | "" (the deployment does not use this GPU)
    engine: str = ""  # the engine's service suffix: prefill, decode, engine, replica0, ...
    tp_rank: int = 0
    replica: int = 0


def gpu_labels(dep, settings) -> dict[int, GpuLabel]:
    """Host GPU index -> what the deployment runs on it, from its engines' GPU settings. An engine's container sees
    its reserved GPUs in PCI order (CUDA_DEVICE_ORDER=PCI_BUS_ID, the order NVML indexes them) and takes the
    ordinals in cuda_devices; TP rank k runs on the k-th of those."""
    if dep.backend.value != "gpu":
        return {}
    labels: dict[int, GpuLabel] = {}
    replicas = [e for e in dep.engines if e.role.value == "colocated"]
    for eng in dep.engines:
        if not eng.gpu_vars or not eng.cuda_devices:
            continue
        host = sorted(int(getattr(settings, v)) for v in eng.gpu_vars)
        for rank, ordinal in enumerate(int(c) for c in eng.cuda_devices.split(",")):
            if ordinal < len(host):
                replica = replicas.index(eng) if eng in replicas else eng.index
                old = labels.get(host[ordinal])
                new = GpuLabel(eng.role.value, eng.name, rank, replica)
                # two engines on one GPU (P and D sharing it): keep both names
                labels[host[ordinal]] = new if old is None else GpuLabel(
                    f"{old.role}+{new.role}", f"{old.engine}+{new.engine}", old.tp_rank, old.replica)
    return labels


class GpuSampler:
    """Samples every visible GPU until stop(); write() stores the rows as gpu.parquet."""

    def __init__(self, labels: dict[int, GpuLabel] | None = None, hz: float = DEFAULT_HZ):
        self.labels = labels or {}
        self.period = 1.0 / max(hz, 10.0)  # the floor: at least 10 Hz
        self.rows: list[tuple] = []
        self.note: str | None = None
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._handles: list = []
        self._t0 = 0.0

    def start(self) -> str | None:
        """Start sampling; returns a note (and samples nothing) when there is no NVML or no GPU."""
        try:
            import pynvml
        except ImportError:
            self.note = "no GPU telemetry: nvidia-ml-py (pynvml) is not installed"
            return self.note
        try:
            pynvml.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound / DriverNotLoaded on hosts without a GPU
            self.note = f"no GPU telemetry: NVML unavailable ({type(e).__name__}: {str(e)[:120]})"
            return self.note
        self._nvml = pynvml
        try:
            n = pynvml.nvmlDeviceGetCount()
            self._handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(n)]
            self._names = {i: _text(pynvml.nvmlDeviceGetName(h)) for i, h in self._handles}
        except Exception as e:
            self._shutdown()
            self.note = f"no GPU telemetry: NVML device query failed ({type(e).__name__})"
            return self.note
        if not self._handles:
            self._shutdown()
            self.note = "no GPU telemetry: NVML sees no GPU"
            return self.note
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return None

    def device_names(self) -> dict[int, str]:
        return dict(getattr(self, "_names", {}))

    def _loop(self) -> None:
        nv = self._nvml
        nxt = time.monotonic()
        while not self._stop.is_set():
            t = time.monotonic() - self._t0
            for i, h in self._handles:
                try:
                    util = nv.nvmlDeviceGetUtilizationRates(h)
                    mem = nv.nvmlDeviceGetMemoryInfo(h)
                    power = nv.nvmlDeviceGetPowerUsage(h) / 1000.0  # mW
                    sm = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
                    mclk = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)
                except Exception:  # one failed read (GPU busy resetting, permission): counted, not fatal
                    self.errors += 1
                    continue
                lab = self.labels.get(i, GpuLabel())
                self.rows.append((t, i, self._names.get(i, ""), lab.role, lab.engine, lab.tp_rank, lab.replica,
                                  float(util.gpu), float(util.memory), int(mem.used), int(mem.total), power,
                                  int(sm), int(mclk)))
            nxt += self.period
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._shutdown()

    def _shutdown(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None

    def write(self, folder: Path) -> Path | None:
        if not self.rows:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = list(zip(*self.rows, strict=True))
        table = pa.table({name: list(col) for name, col in zip(COLUMNS, cols, strict=True)})
        path = folder / GPU_FILE
        pq.write_table(table, path, compression="zstd")
        return path

    def summary(self) -> dict:
        """Per GPU: label, sample count and rate, means and peaks (what point.json and the report show)."""
        out: dict[str, dict] = {}
        by_gpu: dict[int, list[tuple]] = {}
        for r in self.rows:
            by_gpu.setdefault(r[1], []).append(r)
        for gpu, rows in sorted(by_gpu.items()):
            span = rows[-1][0] - rows[0][0]
            col = {name: [r[k] for r in rows] for k, name in enumerate(COLUMNS)}
            out[str(gpu)] = {
                "name": rows[0][2], "role": rows[0][3], "engine": rows[0][4], "tp_rank": rows[0][5],
                "replica": rows[0][6], "samples": len(rows), "hz": round((len(rows) - 1) / span, 1) if span else None,
                "sm_util_pct_mean": _mean(col["sm_util_pct"]), "mem_bw_util_pct_mean": _mean(col["mem_bw_util_pct"]),
                "mem_used_bytes_max": max(col["mem_used_bytes"]), "power_w_mean": _mean(col["power_w"]),
                "power_w_max": max(col["power_w"]), "sm_clock_mhz_mean": _mean(col["sm_clock_mhz"]),
                "mem_clock_mhz_mean": _mean(col["mem_clock_mhz"])}
        return {"gpus": out, "read_errors": self.errors, "file": GPU_FILE if self.rows else None}


def _mean(xs: list) -> float:
    return round(sum(xs) / len(xs), 3) if xs else float("nan")


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
