"""The suite's OTLP receiver takes spans as real exporters send them: OpenTelemetry's SDK and OTLP/HTTP exporter
(the ones vLLM uses, vllm/tracing/otel.py), with a span built as vLLM's OutputProcessor.do_tracing builds it."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

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

from suite.telemetry.otlp import TraceReceiver, export_request, read_spans

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


def test_spans_of_earlier_requests_go_outside_the_point(tmp_path):
    """A warm-up request's span exported after the point began is not the point's (same ids would collide)."""
    with TraceReceiver("127.0.0.1", 0) as rx:
        rx.outside(tmp_path / "outside.jsonl")
        rx.sink(tmp_path / "point.jsonl", since_ns=time.time_ns() - 1_000_000_000)  # arrival was 2 s ago
        vllm_span(rx.endpoint)
        assert rx.settle(1, quiet_s=0.5) == 0
        rx.sink(tmp_path / "point2.jsonl", since_ns=time.time_ns() - 3_000_000_000)
        vllm_span(rx.endpoint)
        assert rx.settle(1) == 1
    assert len(read_spans(tmp_path / "outside.jsonl")) == 1 and len(read_spans(tmp_path / "point2.jsonl")) == 1
    assert read_spans(tmp_path / "point.jsonl") == []


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL = sorted(FIXTURES.glob("vllm-*/spans-*.jsonl"))  # vllm-<version>-<gpu>/spans-<deployment>-<point>.jsonl


def test_stored_records_replay_identically(tmp_path):
    """export_request(records) is the inverse of what the receiver stores (used to replay captured spans)."""
    with TraceReceiver("127.0.0.1", 0) as rx:
        rx.sink(tmp_path / "a.jsonl")
        vllm_span(rx.endpoint)
        rx.settle(1)
    first = read_spans(tmp_path / "a.jsonl")
    assert _replay(first, tmp_path / "b.jsonl") == [dict(r, received_ns=None) for r in first]  # one span


def _replay(records, path):
    with TraceReceiver("127.0.0.1", 0) as rx:
        rx.sink(path)
        body = export_request(records).SerializeToString()
        urllib.request.urlopen(urllib.request.Request(rx.endpoint, body, {"Content-Type": "application/x-protobuf"}))
        rx.settle(len(records))
    return sorted((dict(r, received_ns=None) for r in read_spans(path)), key=lambda r: r["span_id"])


def test_real_spans_are_present():
    assert {p.name for p in REAL} >= {"spans-colocated-rate6.jsonl", "spans-disagg-len2048.jsonl"}
@pytest.mark.parametrize("fixture", REAL, ids=[p.name for p in REAL])
def test_spans_a_real_vllm_emitted(fixture, tmp_path):
    """Spans captured from a real vLLM by this receiver go through it again unchanged and read as request spans."""
    from suite.analysis.spans import engine_span

    recs = read_spans(fixture)
    want = sorted((dict(r, received_ns=None) for r in recs), key=lambda r: r["span_id"])
    assert recs and _replay(recs, tmp_path / "r.jsonl") == want
    spans = [engine_span(r) for r in recs if r["name"] == "llm_request"]
    assert spans and all(s is not None and s.ttft_s >= s.queue_s >= 0 for s in spans)
    roles = {s.role for s in spans}
    assert roles in ({"colocated"}, {"prefill", "decode"}), roles
    if "disagg" in fixture.name:  # vllm-router's id reaches P and D: each P span has its D span (one straggler)
        by_id: dict = {}
        for s in spans:
            by_id.setdefault(s.request_id, []).append(s.role)
        assert sum(sorted(r) == ["decode", "prefill"] for r in by_id.values()) == 5 and len(by_id) == 7
        # P runs the prompt and one token (vllm-router sends it max_tokens=1); D the 32 the client asked for
        assert all(s.prompt_tokens in (1024, 2048) and s.completion_tokens == {"prefill": 1, "decode": 32}[s.role]
                   for s in spans)


def test_real_straggler_goes_outside_the_next_point(tmp_path):
    """Real spans of two repetitions in the order they arrived, with the sink switched at the second's start as the
    runner does: the first's late D span (its request arrived before) is kept outside the points, not in rep1."""
    spans = read_spans(FIXTURES / "vllm-0.26-h200" / "spans-disagg-len2048.jsonl")
    rep0, rep1 = spans[:6], spans[6:]
    start1 = min(r["start_ns"] for r in rep1 if r["attributes"]["gen_ai.usage.prompt_tokens"] == 2048
                 and r["resource"]["pdsuite.role"] == "prefill")
    with TraceReceiver("127.0.0.1", 0) as rx:
        rx.outside(tmp_path / "outside.jsonl")
        for path, since, recs in ((tmp_path / "rep0.jsonl", 0, rep0), (tmp_path / "rep1.jsonl", start1 - 10**6, rep1)):
            rx.sink(path, since_ns=since)
            for r in sorted(recs, key=lambda r: r["received_ns"]):  # one export per span, as they came
                body = export_request([r]).SerializeToString()
                urllib.request.urlopen(urllib.request.Request(rx.endpoint, body,
                                                              {"Content-Type": "application/x-protobuf"}))
            rx.settle(len(recs))
    [late] = read_spans(tmp_path / "outside.jsonl")
    assert late["span_id"] == rep1[0]["span_id"] and late["resource"]["pdsuite.role"] == "decode"
    assert len(read_spans(tmp_path / "rep1.jsonl")) == 5
