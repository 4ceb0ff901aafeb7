import numpy as np
import pytest

from suite.config import ConfigError
from suite.load.prompts import PromptBuilder
from suite.load.schedule import arrival_times, draw, plans, read_trace
from suite.load.spec import LoadSpec, load_spec


def spec(**kw) -> LoadSpec:
    base = {"duration_s": 200, "arrival": {"kind": "poisson", "rate_rps": 10}}
    base.update(kw)
    return load_spec(base)


def test_defaults_and_workload():
    s = spec()
    assert s.classes["long_prefill"].input.min == 2048 and s.classes["short_decode"].output.max == 512
    w = s.to_workload()
    assert w.arrival == "poisson" and w.rate_rps == 10 and w.mix == {"long_prefill": 0.5, "short_decode": 0.5}


@pytest.mark.parametrize("bad, words", [
    ({"mix": {"nope": 1}}, "unknown classes"),
    ({"mix": {"long_prefill": 0, "short_decode": 0}}, "impossible mix"),
    ({"mix": {"long_prefill": -1, "short_decode": 2}}, "impossible mix"),
    ({"classes": {"a": {"input": {"min": 10, "max": 5}, "output": {"min": 1, "max": 1}}}, "mix": {"a": 1}}, "min 10"),
    ({"max_model_len": 4096}, "max_model_len"),
    ({"tokenizer": "gpt9"}, "unknown tokenizer"),
    ({"tokenizer": "hf:/no/such/dir"}, "not found"),
    ({"arrival": {"kind": "poisson"}}, "needs rate_rps"),
    ({"duration_s": None}, "needs duration_s"),
])
def test_bad_specs_fail_with_one_line(bad, words):
    with pytest.raises(ConfigError) as e:
        spec(**bad)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_poisson_rate_and_determinism():
    s = spec()
    t = arrival_times(s)
    assert abs(len(t) / 200 - 10) < 0.6  # 2000 expected, sd ~45
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - 1) < 0.1  # exponential: cv 1
    assert np.array_equal(t, arrival_times(spec()))
    assert not np.array_equal(t, arrival_times(spec(seed=1)))


def test_workers_split_the_schedule_exactly():
    s = spec()
    whole = plans(s)
    parts = [plans(s, w, 3) for w in range(3)]
    merged = sorted((p for part in parts for p in part), key=lambda p: p.index)
    assert [(p.index, p.scheduled_s, p.input_tokens) for p in merged] == \
           [(p.index, p.scheduled_s, p.input_tokens) for p in whole]


def test_mix_and_lengths_follow_spec():
    s = spec(mix={"long_prefill": 1, "short_decode": 3})
    draws = [draw(s, i) for i in range(2000)]
    share = sum(d[0] == "short_decode" for d in draws) / len(draws)
    assert 0.72 < share < 0.78
    for name, n_in, n_out in draws:
        c = s.classes[name]
        assert c.input.min <= n_in <= c.input.max and c.output.min <= n_out <= c.output.max


def test_ramp_and_step_shapes():
    ramp = arrival_times(spec(arrival={"kind": "ramp", "rate_rps": 1, "end_rps": 20}, duration_s=100))
    assert (ramp < 50).sum() < (ramp >= 50).sum() / 2
    step = arrival_times(spec(arrival={"kind": "step", "steps": [[50, 2], [50, 20]]}, duration_s=None,
                              num_requests=100000))
    assert abs((step < 50).sum() - 100) < 40 and abs((step >= 50).sum() - 1000) < 120 and step.max() < 100


def test_traces(tmp_path):
    moon = tmp_path / "m.jsonl"
    moon.write_text('{"timestamp": 1000, "input_length": 3000, "output_length": 20, "hash_ids": [1]}\n'
                    '{"timestamp": 500, "input_length": 100, "output_length": 200}\n')
    assert read_trace(moon) == [(0.0, 100, 200), (0.5, 3000, 20)]
    azure = tmp_path / "a.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                     "2023-11-16 18:15:50.1805900,396,0\n")
    rows = read_trace(azure)
    assert rows[1][0] == pytest.approx(3.5) and rows[1][2] == 1
    s = spec(arrival={"kind": "trace", "trace": str(moon)}, duration_s=None)
    assert [(p.request_class, p.scheduled_s) for p in plans(s)] == [("short_decode", 0.0), ("long_prefill", 0.5)]


@pytest.mark.parametrize("text, name, words", [
    ("timestamp,input_length\n1,2\n", "t.csv", "needs columns"),
    ("timestamp,input_length,output_length\n1,x,3\n", "t.csv", "row 1 is malformed"),
    ("timestamp,input_length,output_length\n1,2\n", "t.csv", "wrong number of fields"),
    ('{"timestamp": 1}\nnot json\n', "t.jsonl", "line 2 is not JSON"),
    ("timestamp,input_length,output_length\n1,0,3\n", "t.csv", "input length"),
])
def test_malformed_traces(tmp_path, text, name, words):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=words):
        read_trace(p)


def test_prompts_exact_and_prefix():
    b = PromptBuilder("completions", "words", 0, 0, (100, 1000))
    ids = b.build(np.random.default_rng(1), 300)
    assert len(ids) == 300 and all(100 <= i < 1000 for i in ids)
    assert ids != b.build(np.random.default_rng(2), 300)
    shared = PromptBuilder("completions", "words", 0, 64, (100, 1000))
    a, c = shared.build(np.random.default_rng(1), 100), shared.build(np.random.default_rng(2), 100)
    assert a[:64] == c[:64] and a[64:] != c[64:] and len(a) == 100
    chat = PromptBuilder("chat", "words", 0, 0, (100, 1000))
    text = chat.build(np.random.default_rng(1), 77)
    assert isinstance(text, str) and len(text.split()) == 77
