"""The suite's OTLP receiver takes spans as real exporters send them: OpenTelemetry's SDK and OTLP/HTTP exporter
(the ones vLLM uses, vllm/tracing/otel.py), with a span built as vLLM's OutputProcessor.do_tracing builds it."""

import json
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from suite.telemetry.otlp import TraceReceiver, read_spans

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def vllm_span(endpoint: str, compression=Compression.NoCompression) -> dict:
    """Export one span exactly as vLLM 0.26 does: init_otel_tracer's provider/resource, manual_instrument_otel's
    start_span(name, context, start_time, kind) + set_attributes + end(), attributes from do_tracing."""
    provider = TracerProvider(resource=Resource.create({"vllm.instrumenting_module_name": "vllm.llm_engine",
                                                        "vllm.process_id": "1234"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, compression=compression)))
    tracer = provider.get_tracer("vllm.tracing.otel")
    arrival_ns = time.time_ns() - 2_000_000_000
    attrs = {"gen_ai.latency.time_to_first_token": 0.25, "gen_ai.latency.e2e": 1.5,
             "gen_ai.latency.time_in_queue": 0.05, "gen_ai.usage.prompt_tokens": 2048,
             "gen_ai.usage.completion_tokens": 64, "gen_ai.latency.time_in_model_prefill": 0.19,
             "gen_ai.latency.time_in_model_decode": 1.25, "gen_ai.latency.time_in_model_inference": 1.44,
             "gen_ai.request.id": "cmpl-req-7-0", "gen_ai.request.max_tokens": 64, "gen_ai.request.n": 1}
    ctx = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT})
    span = tracer.start_span(name="llm_request", context=ctx, start_time=arrival_ns, kind=SpanKind.SERVER)
    span.set_attributes(attrs)
    span.end()
    provider.shutdown()
    return {"arrival_ns": arrival_ns, "attrs": attrs}


def test_vllm_span_stored_raw(tmp_path):
    with TraceReceiver("127.0.0.1", 0) as rx:
        rx.sink(tmp_path / "spans.jsonl")
        sent = vllm_span(rx.endpoint)
        assert rx.settle(1, max_s=5) == 1
    [rec] = read_spans(tmp_path / "spans.jsonl")
    assert rec["name"] == "llm_request" and rec["kind"] == 2  # SPAN_KIND_SERVER
    assert rec["start_ns"] == sent["arrival_ns"] and rec["end_ns"] > rec["start_ns"]
    assert rec["attributes"] == sent["attrs"]  # ints stay ints, floats floats
    assert rec["trace_id"] == TRACEPARENT.split("-")[1] and rec["parent_span_id"] == TRACEPARENT.split("-")[2]
    assert rec["resource"]["vllm.process_id"] == "1234"


def test_gzip_and_json_bodies(tmp_path):
    with TraceReceiver("127.0.0.1", 0) as rx:
        rx.sink(tmp_path / "spans.jsonl")
        vllm_span(rx.endpoint, Compression.Gzip)
        # OTLP/JSON: the same message through protobuf's JSON mapping
        from google.protobuf.json_format import MessageToJson

        req = ExportTraceServiceRequest()
        span = req.resource_spans.add().scope_spans.add().spans.add()
        span.name, span.trace_id, span.span_id = "llm_request", bytes(range(16)), bytes(range(8))
        kv = span.attributes.add()
        kv.key, kv.value.double_value = "gen_ai.latency.e2e", 0.5
        body = MessageToJson(req).encode()
        r = urllib.request.urlopen(urllib.request.Request(rx.endpoint, body, {"Content-Type": "application/json"}))
        assert r.status == 200
        rx.settle(2, max_s=5)
    recs = read_spans(tmp_path / "spans.jsonl")
    assert len(recs) == 2 and recs[1]["attributes"] == {"gen_ai.latency.e2e": 0.5}
    assert recs[1]["trace_id"] == bytes(range(16)).hex()


def test_garbage_is_rejected_not_stored(tmp_path):
    with TraceReceiver("127.0.0.1", 0) as rx:
        rx.sink(tmp_path / "spans.jsonl")
        req = urllib.request.Request(rx.endpoint, b"\xff\xfe not protobuf", {"Content-Type": "application/x-protobuf"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 400 and rx.rejected == 1
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(rx.endpoint.replace("/v1/traces", "/v1/logs"), b""))
        assert e.value.code == 404
    assert read_spans(tmp_path / "spans.jsonl") == []


def test_sink_switch_keeps_points_apart(tmp_path):
    with TraceReceiver("127.0.0.1", 0) as rx:
        rx.sink(tmp_path / "a.jsonl")
        vllm_span(rx.endpoint)
        rx.settle(1)
        assert rx.sink(tmp_path / "b.jsonl") == 1
        vllm_span(rx.endpoint)
        vllm_span(rx.endpoint)
        rx.settle(2)
    assert len(read_spans(tmp_path / "a.jsonl")) == 1 and len(read_spans(tmp_path / "b.jsonl")) == 2
    assert json.loads((tmp_path / "b.jsonl").read_text().splitlines()[0])["name"] == "llm_request"


def test_default_bind_is_loopback():
    assert TraceReceiver().host == "127.0.0.1"
