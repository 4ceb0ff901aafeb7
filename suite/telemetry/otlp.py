"""The suite's own OTLP/HTTP trace receiver: engines export their request spans to it during a run.

Parsing is OpenTelemetry's: the body of `POST /v1/traces` is an `ExportTraceServiceRequest` from the
`opentelemetry-proto` package (binary protobuf, or its JSON mapping), optionally gzip-compressed as OTLP allows.
Every span becomes one raw JSON line (ids in hex, times in ns since the epoch, attributes as plain values) in the
current sink file: the runner points the sink at each point's folder, so a point's spans are stored with it.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

TRACES_PATH = "/v1/traces"
SPANS_FILE = "spans.jsonl"
MAX_BODY = 64 << 20  # OTLP exporters batch at most 512 spans; anything near this is not a span batch


def any_value(v: AnyValue):
    """An OTLP AnyValue as the plain Python value it carries."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def span_records(req: ExportTraceServiceRequest, received_ns: int) -> list[dict]:
    out = []
    for rs in req.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(), "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name, "kind": int(s.kind), "start_ns": int(s.start_time_unix_nano),
                    "end_ns": int(s.end_time_unix_nano),
                    "attributes": {kv.key: any_value(kv.value) for kv in s.attributes},
                    "status_code": int(s.status.code), "scope": ss.scope.name, "resource": resource,
                    "received_ns": received_ns})
    return out


class TraceReceiver:
    """OTLP/HTTP receiver on host:port (127.0.0.1 unless configured). Thread-safe; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 4318):
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._sink: IO[str] | None = None
        self._sink_path: Path | None = None
        self.received = 0  # spans written to the current sink
        self.total = 0
        self.rejected = 0  # bodies that were not an ExportTraceServiceRequest
        self.last_span_at = 0.0  # monotonic
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}{TRACES_PATH}"

    def start(self) -> TraceReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the exporters keep their connection open

            def do_POST(self):
                if self.path.split("?")[0] != TRACES_PATH:
                    return self._reply(404, b"", "text/plain")
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    return self._reply(413, b"", "text/plain")
                body = self.rfile.read(n)
                try:
                    if self.headers.get("Content-Encoding", "").lower() == "gzip":
                        body = gzip.decompress(body)
                    ctype = self.headers.get("Content-Type", "application/x-protobuf").split(";")[0].strip()
                    if ctype == "application/json":
                        req = Parse(body.decode(), ExportTraceServiceRequest())
                    else:
                        req = ExportTraceServiceRequest.FromString(body)
                except Exception:  # a malformed body is the sender's fault: 400, as the OTLP spec says
                    with receiver._lock:
                        receiver.rejected += 1
                    return self._reply(400, b"", "text/plain")
                receiver._store(span_records(req, time.time_ns()))
                ctype = "application/json" if ctype == "application/json" else "application/x-protobuf"
                self._reply(200, b"{}" if ctype == "application/json"
                            else ExportTraceServiceResponse().SerializeToString(), ctype)

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # no per-request lines on the runner's console
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]  # port 0: the OS picked one
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def _store(self, records: list[dict]) -> None:
        with self._lock:
            self.total += len(records)
            self.last_span_at = time.monotonic()
            if self._sink is None:
                return
            for r in records:
                self._sink.write(json.dumps(r, separators=(",", ":")) + "\n")
            self._sink.flush()
            self.received += len(records)

    def sink(self, path: Path | None) -> int:
        """Write spans from now on to `path` (appending; None: drop them). Returns how many went to the old sink."""
        with self._lock:
            n = self.received
            if self._sink is not None:
                self._sink.close()
            self._sink, self._sink_path, self.received = None, path, 0
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._sink = open(path, "a")  # noqa: SIM115 - closed by the next sink() / stop()
            return n

    def settle(self, expected: int, quiet_s: float = 1.5, max_s: float = 5.0) -> int:
        """Wait for spans still in the engines' export queues: until `expected` arrived in the current sink, or
        none came for `quiet_s`, at most `max_s`. Returns the count received."""
        t0 = time.monotonic()
        while True:
            with self._lock:
                got, last = self.received, self.last_span_at
            now = time.monotonic()
            if got >= expected or now - t0 >= max_s or now - max(last, t0) >= quiet_s:
                return got
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.sink(None)

    def __enter__(self) -> TraceReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_spans(path: Path) -> list[dict]:
    """The raw span records of a spans.jsonl (missing file: none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
