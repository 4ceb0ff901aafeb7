"""The emulator's cost model and pure scheduler, in virtual time (no sleeping)."""

import itertools

import pytest

from suite.emulator.costmodel import CostModel
from suite.emulator.hardware import PROFILES
from suite.emulator.scheduler import Scheduler, SimRequest
from suite.modelcfg import load

LLAMA = load("llama-3.1-8b")


def cost(tp=1):
    return CostModel(LLAMA, PROFILES["h100"], tp=tp)


def max_gap(times):
    return max(b - a for a, b in itertools.pairwise(times))


def test_prefill_calibration_matches_reference_h100():
    # reference-numbers.md: 2048 -> 62 ms, 4096 -> 123 ms, 8192 -> 261 ms; <= 1k tokens overhead-bound ~32 ms
    c = cost()
    for tokens, ms in ((2048, 62), (4096, 123), (8192, 261)):
        assert c.prefill_s(tokens) * 1e3 == pytest.approx(ms, rel=0.06)
    assert c.prefill_s(512) == pytest.approx(0.032)
    assert c.prefill_s(1) < 0.001  # a one-token chunk is not charged the short-prompt floor


def test_batched_short_prefills_pay_the_floor_once_per_step():
    # 128 prompts of 64 tokens in one step are one forward pass of 8192 tokens, not 128 x the short-prompt floor
    c = cost()
    batched = c.step_s([(64, 0)] * 128, 0, 0)
    assert 0.5 * c.step_s([(8192, 0)], 0, 0) < batched < c.step_s([(8192, 0)], 0, 0)
    assert c.step_s([(64, 0)] * 2, 0, 0) == pytest.approx(c.step_s([(128, 0)], 0, 0), rel=0.01)


def test_decode_step_is_memory_bound_and_grows_with_batch_kv():
    c = cost()
    one = c.step_s([], 1, 1000)
    assert 0.005 < one < 0.010  # ~16 GB of weights at ~2.8 TB/s + overhead
    assert c.step_s([], 64, 64 * 4000) > one + 64 * 4000 * LLAMA.kv_bytes_per_token() / PROFILES["h100"].mem_bw * 0.99


def test_tp2_speeds_up_prefill_but_pays_allreduce():
    c1, c2 = cost(1), cost(2)
    assert c2.prefill_s(8192) < 0.6 * c1.prefill_s(8192)
    assert c2.allreduce_s(8192) > 0 and c1.allreduce_s(8192) == 0


def test_transfer_cost_matches_reference_nccl_table():
    # 64 per-layer K/V ops batched: 128 tok 1.14 ms, 8192 tok 3.90 ms, 32768 tok 13.0 ms (reference-numbers.md)
    c = cost()
    for tokens, ms in ((128, 1.14), (8192, 3.90), (32768, 13.0)):
        assert c.transfer_s(tokens) * 1e3 == pytest.approx(ms, rel=0.15)


def _decode_itl_with_long_prefill(colocated: bool) -> tuple[float, float]:
    """A decoding stream; at t=0.1 a 16k-token prompt arrives (colocated) or not (a D engine never prefills)."""
    s = Scheduler(cost())
    a = SimRequest("a", prompt=200, max_tokens=80, arrival=0.0)
    s.add(a)
    s.run(until=0.1)
    if colocated:
        s.add(SimRequest("b", prompt=16000, max_tokens=4, arrival=0.1))
    s.run(start=0.1)
    gaps = [b - x for x, b in itertools.pairwise(a.token_times)]
    return sorted(gaps)[len(gaps) // 2], max(gaps)


def test_long_prefill_stalls_colocated_decode_but_not_decode_only():
    med_c, max_c = _decode_itl_with_long_prefill(colocated=True)
    med_d, max_d = _decode_itl_with_long_prefill(colocated=False)
    assert max_c > 0.2  # an 8192-token chunk (~265 ms) shared the step with the decode
    assert max_c > 20 * med_c
    assert max_d < 1.5 * med_d  # decode-only: every step is a plain decode step


def test_chunked_prefill_respects_token_budget():
    s = Scheduler(cost(), token_budget=4096)
    r = SimRequest("r", prompt=10000, max_tokens=1, arrival=0.0)
    s.add(r)
    steps = []
    now = 0.0
    while s.has_work():
        step = s.plan(now)
        steps.append(step.tokens)
        s.commit(step)
        now = step.end
    assert steps == [4096, 4096, 1808]
    assert r.first_token_at == pytest.approx(now)


def test_ttft_pd_is_prefill_plus_transfer_plus_first_decode_step():
    c = cost()
    prompt = 3000
    p = Scheduler(c)
    pr = SimRequest("p", prompt=prompt, max_tokens=1, arrival=0.0)
    p.add(pr)
    p.run()
    prefill = c.step_s([(prompt, 0)], 0, 0)
    assert pr.first_token_at == pytest.approx(prefill)
    # D receives the request when P answered, the KV lands after the modelled transfer
    d = Scheduler(c)
    xfer = c.transfer_s(prompt)
    dr = SimRequest("d", prompt=prompt, max_tokens=5, arrival=pr.finished_at, ready_at=pr.finished_at + xfer,
                    remote_kv=prompt)
    d.add(dr)
    d.run(start=pr.finished_at)
    first_decode = c.step_s([], 1, prompt)
    assert dr.first_token_at == pytest.approx(prefill + xfer + first_decode)
    assert dr.generated == 5


def test_kv_in_flight_does_not_block_ready_requests():
    s = Scheduler(cost())
    late = SimRequest("late", prompt=100, max_tokens=1, arrival=0.0, ready_at=1.0, remote_kv=100)
    ready = SimRequest("ready", prompt=100, max_tokens=1, arrival=0.0)
    s.add(late)
    s.add(ready)
    s.run()
    assert ready.first_token_at < 0.1 < 1.0 < late.first_token_at


def test_max_num_seqs_queues_the_rest():
    s = Scheduler(cost(), max_num_seqs=2)
    reqs = [SimRequest(str(i), prompt=10, max_tokens=3, arrival=0.0) for i in range(3)]
    for r in reqs:
        s.add(r)
    s.plan(0.0)
    assert len(s.running) == 2 and len(s.waiting) == 1
    s.run()
    assert reqs[2].scheduled_at >= reqs[0].finished_at


def test_prompt_larger_than_kv_cache_is_rejected():
    s = Scheduler(cost(), kv_capacity=1000)
    with pytest.raises(ValueError, match="does not fit"):
        s.add(SimRequest("x", prompt=1000, max_tokens=1, arrival=0.0))
