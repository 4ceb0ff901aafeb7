"""The emulated engine's request spans: the span vLLM's OutputProcessor.do_tracing emits, from the same SDK.

vLLM (vllm/v1/engine/output_processor.py, 0.26-0.33) ends one SERVER span "llm_request" per finished request,
started at the request's arrival, with the trace context of its traceparent header, and attributes from
vllm/tracing/utils.py SpanAttributes: time in queue (scheduled - queued), in model prefill (first token -
scheduled), decode (last - first token), inference (last token - scheduled), TTFT and e2e from arrival, usage and
sampling parameters, and gen_ai.request.id = the engine's request id (cmpl-<X-Request-Id>-<prompt index>,
chatcmpl-<X-Request-Id>). It exports with OpenTelemetry's BatchSpanProcessor and OTLP/HTTP exporter; so does this.
"""

from __future__ import annotations

import os
import time

SPAN_NAME = "llm_request"  # vLLM's span name
A = "gen_ai.latency."
ATTR_TTFT, ATTR_E2E, ATTR_QUEUE = A + "time_to_first_token", A + "e2e", A + "time_in_queue"
ATTR_PREFILL, ATTR_DECODE, ATTR_INFERENCE = A + "time_in_model_prefill", A + "time_in_model_decode", \
    A + "time_in_model_inference"
ATTR_REQUEST_ID = "gen_ai.request.id"
ATTR_PROMPT, ATTR_COMPLETION = "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"
ATTR_MAX_TOKENS, ATTR_TEMPERATURE, ATTR_N = "gen_ai.request.max_tokens", "gen_ai.request.temperature", \
    "gen_ai.request.n"


def vllm_request_id(x_request_id: str, chat: bool) -> str:
    """The id vLLM's OpenAI server gives the engine request (completion/serving.py: f"{request_id}-{i}")."""
    return f"chatcmpl-{x_request_id}" if chat else f"cmpl-{x_request_id}-0"


class SpanEmitter:
    """One TracerProvider per emulated engine, exporting over OTLP/HTTP protobuf to `endpoint`."""

    def __init__(self, endpoint: str, role: str, emulated_flavor: str):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # as vLLM: Resource.create also reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (pdsuite.role, ...)
        attrs = {"vllm.instrumenting_module_name": "vllm.llm_engine", "vllm.process_id": str(os.getpid()),
                 "pdsuite.emulated": True, "pdsuite.emulated_flavor": emulated_flavor}
        if "pdsuite.role" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
            attrs["pdsuite.role"] = role
        self.provider = TracerProvider(resource=Resource.create(attrs))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self.tracer = self.provider.get_tracer("vllm.llm_engine")
        self.propagator = TraceContextTextMapPropagator()

    def emit(self, *, headers, request_id: str, arrival: float, scheduled: float, first_token: float,
             last_token: float, prompt_tokens: int, completion_tokens: int, max_tokens: int,
             temperature: float | None) -> None:
        """Times are the emulator's monotonic seconds; spans carry epoch ns, as vLLM's (arrival = time.time())."""
        from opentelemetry.trace import SpanKind

        offset_ns = time.time_ns() - time.monotonic_ns()
        ns = lambda t: int(t * 1e9) + offset_ns  # noqa: E731
        attributes = {
            ATTR_TTFT: first_token - arrival, ATTR_E2E: last_token - arrival, ATTR_QUEUE: scheduled - arrival,
            ATTR_PROMPT: prompt_tokens, ATTR_COMPLETION: completion_tokens,
            ATTR_PREFILL: first_token - scheduled, ATTR_DECODE: last_token - first_token,
            ATTR_INFERENCE: last_token - scheduled, ATTR_REQUEST_ID: request_id, ATTR_MAX_TOKENS: max_tokens,
            ATTR_N: 1}
        if temperature:  # vLLM sets it only when truthy
            attributes[ATTR_TEMPERATURE] = temperature
        ctx = self.propagator.extract({k.lower(): v for k, v in headers.items()
                                       if k.lower() in ("traceparent", "tracestate")}) if headers else None
        span = self.tracer.start_span(SPAN_NAME, context=ctx, kind=SpanKind.SERVER, start_time=ns(arrival))
        span.set_attributes(attributes)
        span.end(end_time=ns(last_token))

    def shutdown(self) -> None:
        self.provider.shutdown()
