"""Joining vLLM's request spans to client records: the ids as vLLM forms them (cmpl-<X-Request-Id>-<i>,
chatcmpl-<X-Request-Id>), directly served (client id) and behind vllm-router (router id, read back as response id)."""

from suite.analysis.spans import join, response_base, span_base


def span(req_id: str, role: str, start_s: float) -> dict:
    attrs = {"gen_ai.request.id": req_id, "gen_ai.latency.time_in_queue": 0.01,
             "gen_ai.latency.time_in_model_prefill": 0.05, "gen_ai.latency.time_to_first_token": 0.07,
             "gen_ai.latency.e2e": 0.5, "gen_ai.latency.time_in_model_decode": 0.4}
    return {"name": "llm_request", "start_ns": int(start_s * 1e9), "attributes": attrs, "trace_id": "00",
            "resource": {"pdsuite.role": role, "pdsuite.engine": role}}


def test_ids():
    assert span_base("cmpl-0-12-0") == "0-12" and response_base("cmpl-0-12") == "0-12"
    assert span_base("chatcmpl-0-12") == "0-12" and response_base("chatcmpl-0-12") == "0-12"
    router = "___prefill_addr_127.0.0.1:5600___decode_addr_127.0.0.1:5601_ab12"
    assert span_base(f"cmpl-{router}-0") == router == response_base(f"cmpl-{router}")


def test_direct_and_router_requests_join():
    router = "___prefill_addr_a___decode_addr_b_ff"
    records = [{"request_id": "0-1", "response_id": "cmpl-0-1"},  # served directly
               {"request_id": "0-2", "response_id": f"cmpl-{router}"},  # through the router
               {"request_id": "0-3", "response_id": None}]  # no spans for it
    spans = [span("cmpl-0-1-0", "colocated", 1.0), span(f"cmpl-{router}-0", "decode", 2.1),
             span(f"cmpl-{router}-0", "prefill", 2.0), span("cmpl-9-9-0", "colocated", 3.0),
             {"name": "other", "start_ns": 0}]
    j = join(records, spans)
    assert [s.role for s in j.by_request["0-2"]] == ["prefill", "decode"]  # ordered by arrival
    assert [s.role for s in j.by_request["0-1"]] == ["colocated"] and "0-3" not in j.by_request
    assert j.unmatched_spans == 1 and j.other_spans == 1  # counted, not dropped silently
