"""The streaming client keeps each token's own arrival time even when it reads late (kernel stamps + reads that
end where the server's writes ended), and reuses or drops connections correctly."""

import time

import pytest

from suite.load import client
from suite.load.client import Endpoint, follow, prepare, request_body, send, stream_request
from suite.load.testserver import running
from suite.schema import Status


def _req(ep, i, tokens=6):
    return prepare(ep, "completions", request_body("completions", "m", list(range(16)), tokens), request_id=f"r{i}",
                   request_class="c", input_tokens=16, max_tokens=tokens, scheduled_s=0.0, timeout_s=10)


def test_busy_reader_still_sees_each_token_arrive_at_its_own_time(monkeypatch):
    """The server writes a token every 20 ms; the client is busy for 8 ms before every read. Token times must be
    the packets' arrival (kernel stamps), not the late reads: TTFT ~30 ms, not ~38."""
    real_read = client.read_stamped

    def busy_read(sock):
        time.sleep(0.008)
        return real_read(sock)

    monkeypatch.setattr(client, "read_stamped", busy_read)
    with running(ttft_ms=30, itl_ms=20) as url:
        ep = Endpoint(url)
        t0 = time.monotonic_ns()
        p = _req(ep, 0)
        send(p, t0)
        out = follow(p, t0)
    r = out.record
    assert r.status is Status.OK, r.error
    assert out.kernel_clock, "this kernel should give SO_TIMESTAMPNS stamps"
    assert 0.029 <= r.ttft_s < 0.036, r.ttft_s
    assert len(r.itl_s) == 5
    assert all(0.016 < gap < 0.024 for gap in r.itl_s), r.itl_s


def test_tokens_read_late_are_never_timed_early():
    """Read after the whole stream has arrived, the kernel has merged the packets and reports the last one's
    arrival for all of them: times may be late (an upper bound), never earlier than the server's writes."""
    with running(ttft_ms=30, itl_ms=20) as url:
        ep = Endpoint(url)
        t0 = time.monotonic_ns()
        p = _req(ep, 0)
        send(p, t0)
        time.sleep(0.3)
        out = follow(p, t0)
    times = out.record.token_times_s
    assert out.record.status is Status.OK and len(times) == 6
    assert all(t >= 0.029 + 0.02 * i for i, t in enumerate(times)), times
    assert times[-1] < 0.25  # the last packet's arrival, not the read at 0.3 s


def test_keep_alive_reused_and_errors_recorded():
    with running(ttft_ms=1, itl_ms=1, fail_every=2) as url:
        ep = Endpoint(url)
        t0 = time.monotonic_ns()
        a = stream_request(ep, "completions", request_body("completions", "m", [1, 2], 3), request_id="a",
                           request_class="c", input_tokens=2, max_tokens=3, scheduled_s=0, t0_ns=t0, timeout_s=5)
        assert a.record.status is Status.OK and len(ep.idle) == 1
        sock = ep.idle[0]
        b = stream_request(ep, "chat", request_body("chat", "m", "x y", 3), request_id="b", request_class="c",
                           input_tokens=2, max_tokens=3, scheduled_s=0, t0_ns=t0, timeout_s=5)
        assert b.record.http_status == 500 and "injected failure" in b.record.error
        assert ep.idle == [sock]  # an error response with a body still leaves the connection usable
        ep.close()


@pytest.mark.parametrize("gap_s", [0.0, 0.3])
def test_send_stamps_the_send_not_the_preparation(gap_s):
    with running(ttft_ms=1, itl_ms=1) as url:
        ep = Endpoint(url)
        t0 = time.monotonic_ns()
        p = _req(ep, 1, tokens=2)
        time.sleep(gap_s)
        send(p, t0)
        out = follow(p, t0)
    assert out.record.status is Status.OK
    assert out.record.sent_s >= gap_s
    assert out.record.ttft_s < 0.1


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("quirks", [{"empty_every": 3}, {"empty_every": 1}, {"empty_every": 2, "finish_chunk": True}])
def test_ttft_is_the_first_token_even_with_empty_text(api, quirks):
    """Tokens streamed with empty text (a partial UTF-8 character, as vLLM streams it) are tokens: the first one
    is the TTFT, and each gets its ITL. Chat's role-only first chunk and a closing finish-reason-only chunk are
    not tokens. The server's first token is empty here, 30 ms after the request; the next come every 15 ms."""
    with running(ttft_ms=30, itl_ms=15, **quirks) as url:
        ep = Endpoint(url)
        t0 = time.monotonic_ns()
        p = prepare(ep, api, request_body(api, "m", list(range(8)) if api == "completions" else "a b c", 7),
                    request_id="r", request_class="c", input_tokens=8, max_tokens=7, scheduled_s=0.0, timeout_s=10)
        send(p, t0)
        r = follow(p, t0).record
    assert r.status is Status.OK, r.error
    assert len(r.token_times_s) == 7 == r.completion_tokens  # every token, none merged, no marker counted
    assert r.first_token_s == r.token_times_s[0] and 0.029 <= r.ttft_s < 0.06, r.ttft_s
    assert all(gap > 0 for gap in r.itl_s) and 0.085 <= sum(r.itl_s) < 0.13, r.itl_s  # 6 gaps of 15 ms, each its own


def test_a_stream_that_breaks_after_tokens_keeps_its_ttft():
    with running(ttft_ms=5, itl_ms=2, break_every=1) as url:
        r = stream_request(Endpoint(url), "completions", request_body("completions", "m", [1, 2], 8),
                           request_id="r", request_class="c", input_tokens=2, max_tokens=8, scheduled_s=0.0,
                           t0_ns=time.monotonic_ns(), timeout_s=10).record
    assert r.status is Status.ERROR and len(r.token_times_s) == 4 and r.ttft_s is not None
