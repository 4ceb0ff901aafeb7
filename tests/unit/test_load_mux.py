"""The worker's stream reader (one epoll loop for all streams): every request ends in exactly one record, with the
same timings the blocking client measures, and timeouts, cancellations, cut streams and HTTP errors are records."""

import time

import gevent

from suite.load.client import Endpoint, prepare, request_body, send
from suite.load.mux import StreamMux, available
from suite.load.testserver import running
from suite.schema import Status


def _sent(ep, i, t0, tokens=8, timeout=10.0, api="completions"):
    prompt = "a b c d" if api == "chat" else list(range(16))
    p = prepare(ep, api, request_body(api, "m", prompt, tokens), request_id=f"r{i}", request_class="c",
                input_tokens=16, max_tokens=tokens, scheduled_s=0.0, timeout_s=timeout)
    send(p, t0)
    return p


def test_epoll_is_there_on_linux():
    assert available()


def test_many_streams_each_end_in_one_record_with_exact_token_times():
    with running(ttft_ms=30, itl_ms=20) as url:
        ep, mux, done = Endpoint(url), StreamMux(), []
        t0 = time.monotonic_ns()
        ended = [mux.add(_sent(ep, i, t0, api="chat" if i % 2 else "completions"), t0, done.append)
                 for i in range(40)]
        assert mux.empty.wait(10)
        assert all(e.is_set() for e in ended)
        mux.close()
    assert len(done) == 40 and len({o.record.request_id for o in done}) == 40
    for o in done:
        r = o.record
        assert r.status is Status.OK, r.error
        assert len(r.token_times_s) == 8 and r.completion_tokens == 8 and r.prompt_tokens is not None
        assert o.kernel_clock
        assert 0.029 <= r.ttft_s < 0.045, r.ttft_s  # the role-only chat chunk is not the first token
        assert all(0.012 < gap < 0.028 for gap in r.itl_s), r.itl_s
    assert len(ep.idle) == 40  # every connection read to the end goes back to the keep-alive pool


def test_timeout_cancel_cut_stream_and_http_error_are_records():
    with running(ttft_ms=5, itl_ms=400, fail_every=3, break_every=5) as url:
        ep, mux, done = Endpoint(url), StreamMux(), []
        t0 = time.monotonic_ns()
        # requests 1..5 on the server: #3 gets HTTP 500, #5 is cut half way; the others stream 4 tokens x 400 ms
        for i in range(5):
            mux.add(_sent(ep, i, t0, tokens=4, timeout=0.6 if i == 0 else 30), t0, done.append)
        gevent.sleep(1.0)  # r0 times out at 0.6 s; the cut stream and the 500 have ended
        mux.cancel_all("stopped by the test")
        assert mux.empty.is_set()
        mux.close()
    by = {o.record.request_id: o.record for o in done}
    assert len(done) == 5 and set(by) == {f"r{i}" for i in range(5)}
    assert by["r0"].status is Status.TIMEOUT and "0.6 s" in by["r0"].error
    assert by["r2"].status is Status.ERROR and by["r2"].http_status == 500 and "injected failure" in by["r2"].error
    assert by["r4"].status is Status.ERROR and "closed mid-body" in by["r4"].error
    for rid in ("r1", "r3"):
        assert by[rid].status is Status.CANCELLED and by[rid].error == "stopped by the test"
        assert by[rid].done_s >= 0.9 and len(by[rid].token_times_s) >= 2  # tokens read before the cancel are kept


def test_refused_connection_is_a_record_at_once():
    ep, mux, done = Endpoint("http://127.0.0.1:9"), StreamMux(), []
    t0 = time.monotonic_ns()
    ended = mux.add(_sent(ep, 0, t0), t0, done.append)
    assert ended.is_set() and mux.empty.is_set()
    assert done[0].record.status is Status.ERROR and "refused" in done[0].record.error


def test_requests_leave_no_reference_cycles():
    """During a point the collector's full passes are held off (locust_glue._settle_gc), so a cycle per request
    would pile up until the next point: every request object must be freed by reference counting alone."""
    import gc

    with running(ttft_ms=1, itl_ms=1, fail_every=7) as url:
        ep, mux, done = Endpoint(url), StreamMux(), []
        t0 = time.monotonic_ns()
        for i in range(10):  # warm: imports, pools
            mux.add(_sent(ep, i, t0, tokens=4, api="chat" if i % 2 else "completions"), t0, done.append).wait()
        gc.collect()
        gc.disable()
        try:
            for i in range(100):
                mux.add(_sent(ep, i, t0, tokens=4, api="chat" if i % 2 else "completions"), t0, done.append).wait()
            statuses = {o.record.status for o in done}
            done.clear()
            assert gc.collect() == 0
        finally:
            gc.enable()
        mux.close()
    assert statuses == {Status.OK, Status.ERROR}  # streams and HTTP errors both went through
