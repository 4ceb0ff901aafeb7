"""Telemetry the runner records around every point: engines' request spans (OTLP receiver) and GPU samples (NVML).

`RunTelemetry` is the runner's one handle: `engine_settings()` before the deployment starts (tracing arguments for
real engines), `point_start(folder)` / `point_end(folder, ...)` around each point's load, `close()` at the end.
Nothing here fails a point: a port in use or a host without NVML becomes a note in point.json.
"""

from __future__ import annotations

from pathlib import Path

from suite.telemetry.nvml import GpuSampler, gpu_labels
from suite.telemetry.otlp import SPANS_FILE, TraceReceiver

OUTSIDE_POINTS = "spans-outside-points.jsonl"  # warm-up and late spans: kept with the deployment, not a point


class RunTelemetry:
    def __init__(self, dep, settings, dep_dir: Path):
        self.dep, self.settings, self.dep_dir = dep, settings, dep_dir
        self.receiver: TraceReceiver | None = None
        self.notes: list[str] = []
        self._sampler: GpuSampler | None = None
        self._in_point = False
        if settings.TRACING == "on":
            try:
                self.receiver = TraceReceiver(settings.BIND_ADDRESS, settings.OTLP_PORT).start()
                self.receiver.sink(dep_dir / OUTSIDE_POINTS)
            except OSError as e:
                self.receiver = None
                self.notes.append(f"no request spans: the OTLP receiver could not bind "
                                  f"{settings.BIND_ADDRESS}:{settings.OTLP_PORT} ({e.strerror}); set OTLP_PORT")

    def engine_settings(self):
        """Settings for the deployment's driver: real engines get their framework's tracing arguments appended to
        its *_EXTRA_ARGS while the receiver runs (the emulator reads TRACING/OTLP_PORT from its command line)."""
        from suite.frameworks.base import get

        if self.receiver is None or self.dep.backend.value == "emu":
            return self.settings
        fw = get(self.dep.framework)
        # one *_EXTRA_ARGS setting reaches every engine: the arguments are the same for all of them
        extra = fw.tracing_args(self.dep, self.dep.model_engines[0], self.receiver.endpoint)
        if not extra:
            return self.settings
        old = getattr(self.settings, fw.extra_args_setting)
        return self.settings.model_copy(update={fw.extra_args_setting: " ".join([old, *extra]).strip()})

    def point_start(self, folder: Path) -> None:
        self._in_point = True
        if self.receiver is not None:
            self.receiver.sink(folder / SPANS_FILE)
        self._sampler = GpuSampler(gpu_labels(self.dep, self.settings), self.settings.GPU_SAMPLE_HZ)
        note = self._sampler.start()
        if note:
            self._sampler = None
            if note not in self.notes:
                self.notes.append(note)

    def point_end(self, folder: Path, expected_spans: int) -> dict:
        """Stop sampling, wait for the point's spans still in the engines' export queues; what point.json keeps."""
        out: dict = {}
        if not self._in_point:  # the point failed before its load started
            return out
        self._in_point = False
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler.write(folder)
            out["gpu"] = self._sampler.summary()
            self._sampler = None
        if self.receiver is not None:
            got = self.receiver.settle(expected_spans)
            self.receiver.sink(self.dep_dir / OUTSIDE_POINTS)
            out["spans"] = {"file": SPANS_FILE if got else None, "received": got, "expected": expected_spans,
                            "endpoint": self.receiver.endpoint}
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def spans_per_request(self) -> int:
        """Spans one request yields: one per engine on its path (P and D for P/D; one engine otherwise). Only vLLM
        engines and the vLLM-flavoured emulator emit them."""
        if self.dep.framework != "vllm":
            return 0
        return 2 if self.dep.disaggregated else 1

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        if self.receiver is not None:
            self.receiver.stop()
