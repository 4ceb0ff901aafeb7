"""A point offers its target rate: over many seeds every arrival kind averages the rate it asks for, and each
repetition of a plan draws its own schedule and prompts (the same on every deployment)."""

import numpy as np
import pytest

from suite.load.schedule import arrival_times, plans, target_rps, window_s
from suite.load.spec import load_spec
from suite.plan import repetition_seed, repetition_spec

SEEDS = range(200)


def offered(spec) -> float:
    return len(arrival_times(spec)) / window_s(spec)  # plans() = these times, each with its drawn class


@pytest.mark.parametrize("arrival, duration", [
    ({"kind": "poisson", "rate_rps": 2}, 300),
    ({"kind": "poisson", "rate_rps": 6}, 100),
    ({"kind": "constant", "rate_rps": 3}, 100),
    ({"kind": "ramp", "rate_rps": 1, "end_rps": 9}, 150),
    ({"kind": "step", "steps": [[60, 2], [60, 10]]}, None),
    ({"kind": "step", "steps": [[60, 2], [60, 10]]}, 90),  # the duration cuts the second step
])
def test_mean_offered_rate_is_the_target_for_every_arrival_kind(arrival, duration):
    base = {"arrival": arrival, "duration_s": duration} | ({} if duration else {"num_requests": 10**6})
    specs = [load_spec(base | {"seed": s}) for s in SEEDS]
    target = target_rps(specs[0])
    rates = np.array([offered(s) for s in specs])
    assert abs(rates.mean() / target - 1) < 0.01, (rates.mean(), target)
    assert len({len(arrival_times(s)) for s in specs[:20]}) > 1 or arrival["kind"] == "constant"  # seeds differ


def test_targets_of_each_kind():
    assert target_rps(load_spec({"arrival": {"kind": "ramp", "rate_rps": 2, "end_rps": 6}, "duration_s": 10})) == 4
    step = load_spec({"arrival": {"kind": "step", "steps": [[10, 2], [30, 6]]}, "duration_s": 20})
    assert window_s(step) == 20 and target_rps(step) == pytest.approx((10 * 2 + 10 * 6) / 20)
    closed = load_spec({"arrival": {"kind": "concurrency", "concurrency": 4}, "duration_s": 30})
    assert target_rps(closed) is None and window_s(closed) == 30


def test_trace_target_is_the_traces_own_rate(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,input_length,output_length\n" + "".join(f"{i * 500},10,5\n" for i in range(21)))
    s = load_spec({"arrival": {"kind": "trace", "trace": str(trace)}})
    assert window_s(s) == 10 and target_rps(s) == pytest.approx(21 / 10)
    fast = load_spec({"arrival": {"kind": "trace", "trace": str(trace), "trace_speedup": 2}})
    assert window_s(fast) == 5 and target_rps(fast) == pytest.approx(21 / 5)
    cut = load_spec({"arrival": {"kind": "trace", "trace": str(trace)}, "duration_s": 4})
    assert len(plans(cut)) == 8 and target_rps(cut) == pytest.approx(2)


def test_repetitions_draw_their_own_requests_the_same_on_every_deployment():
    point = {"arrival": {"kind": "poisson", "rate_rps": 4}, "duration_s": 20, "seed": 1}
    reps = [load_spec(repetition_spec(point, k)) for k in range(3)]
    schedules = [[(p.scheduled_s, p.input_tokens) for p in plans(s)] for s in reps]
    assert schedules[0] != schedules[1] != schedules[2] != schedules[0]
    again = load_spec(repetition_spec(point, 1))  # another deployment, same repetition: the same requests
    assert [(p.scheduled_s, p.input_tokens) for p in plans(again)] == schedules[1]
    assert repetition_seed(1, 1) != repetition_seed(2, 0) != repetition_seed(1, 0)  # not plan seed + rep
    assert all(0 <= repetition_seed(s, k) < 2**63 for s in (0, 1, 2**62) for k in (0, 99))
