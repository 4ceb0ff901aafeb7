"""Join the engines' request spans (spans.jsonl) to the client's records (requests.parquet) by request id.

vLLM's OpenAI server names the engine request after the X-Request-Id header (vllm/entrypoints/serve/engine/
serving.py _base_request_id): completions `cmpl-<id>-<prompt index>`, chat `chatcmpl-<id>`; the response's `id` is
`cmpl-<id>` / `chatcmpl-<id>`, and the span's gen_ai.request.id is the engine request id. The client sends its own
request id as X-Request-Id, so a directly served request joins on it; behind vllm-router the engines see the
router's id (the same one for P and D), which the client reads back as the response id. Both keys are tried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from suite.telemetry.otlp import SPANS_FILE, read_spans

REQUEST_SPAN = "llm_request"  # vLLM's per-request span (vllm/v1/engine/output_processor.py do_tracing)
ATTR_ID = "gen_ai.request.id"
_PREFIX = re.compile(r"^(chatcmpl|cmpl)-")
_CMPL_INDEX = re.compile(r"-\d+$")


def span_base(engine_request_id: str | None) -> str | None:
    """The X-Request-Id inside a vLLM engine request id: cmpl-<id>-<prompt index> or chatcmpl-<id>."""
    if not engine_request_id:
        return None
    if engine_request_id.startswith("cmpl-"):
        return _CMPL_INDEX.sub("", engine_request_id[len("cmpl-"):], count=1)
    return _PREFIX.sub("", engine_request_id)


def response_base(response_id: str | None) -> str | None:
    """The X-Request-Id inside a vLLM response id: cmpl-<id> or chatcmpl-<id>."""
    return _PREFIX.sub("", response_id) if response_id else None


@dataclass
class EngineSpan:
    """One engine's view of one request (times: epoch seconds; durations: seconds)."""

    role: str  # prefill | decode | colocated (from the resource's pdsuite.role)
    engine: str
    arrival: float
    queue_s: float
    prefill_s: float
    decode_s: float
    ttft_s: float
    e2e_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    request_id: str
    trace_id: str

    @property
    def scheduled(self) -> float:
        return self.arrival + self.queue_s

    @property
    def first_token(self) -> float:
        return self.scheduled + self.prefill_s


def engine_span(rec: dict) -> EngineSpan | None:
    if rec.get("name") != REQUEST_SPAN:
        return None
    a, res = rec.get("attributes", {}), rec.get("resource", {})
    try:
        return EngineSpan(
            role=str(res.get("pdsuite.role", "")), engine=str(res.get("pdsuite.engine", res.get("service.name", ""))),
            arrival=rec["start_ns"] * 1e-9, queue_s=float(a["gen_ai.latency.time_in_queue"]),
            prefill_s=float(a["gen_ai.latency.time_in_model_prefill"]),
            decode_s=float(a.get("gen_ai.latency.time_in_model_decode", 0.0)),
            ttft_s=float(a["gen_ai.latency.time_to_first_token"]), e2e_s=float(a["gen_ai.latency.e2e"]),
            prompt_tokens=a.get("gen_ai.usage.prompt_tokens"),
            completion_tokens=a.get("gen_ai.usage.completion_tokens"),
            request_id=str(a.get(ATTR_ID, "")), trace_id=rec.get("trace_id", ""))
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class Joined:
    """Spans per client request id, and what could not be matched (counted, never dropped silently)."""

    by_request: dict[str, list[EngineSpan]] = field(default_factory=dict)
    unmatched_spans: int = 0
    other_spans: int = 0  # not vLLM request spans (another framework's, or malformed)


def join(records: list, spans: list[dict]) -> Joined:
    """records: RequestRecord objects (or dicts) of one point; spans: raw span records of the same point."""
    out = Joined()
    index: dict[str, list[EngineSpan]] = {}
    for rec in spans:
        s = engine_span(rec)
        if s is None:
            out.other_spans += 1
            continue
        index.setdefault(span_base(s.request_id) or "", []).append(s)
    used: set[str] = set()
    for r in records:
        get = r.get if isinstance(r, dict) else lambda k, _r=r: getattr(_r, k, None)
        rid = get("request_id")
        for key in (response_base(get("response_id")), rid):
            if key and key in index and key not in used:
                out.by_request[rid] = sorted(index[key], key=lambda s: s.arrival)
                used.add(key)
                break
    out.unmatched_spans = sum(len(v) for k, v in index.items() if k not in used)
    return out


def point_spans(point_dir: Path) -> list[dict]:
    return read_spans(point_dir / SPANS_FILE)
