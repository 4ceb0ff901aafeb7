"""Property-based fuzz of every parser and loader of user input: whatever bytes or structures come in, each either
returns a value or raises its own one-line error type, never anything else (no traceback reaches a user).

The budget is fixed so CI time is bounded (~60 s in all on a slow box): a fixed example count per parser, no
deadline (a loaded CI machine must not turn slowness into failures), derandomized so a failure reproduces."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suite.config import ConfigError, Settings, load_settings
from suite.emulator.hardware import HardwareError, load_hardware
from suite.modelcfg import ModelConfigError, size_model
from suite.modelcfg import load as load_model
from suite.normalise import MetricsError, normalise_text
from suite.plan import PlanError, load_plan
from suite.report.load import check_table

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ONE_LINE = (PlanError, ConfigError, MetricsError, ModelConfigError, HardwareError)

# JSON-like values: what YAML and JSON parsers hand the loaders
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
PLAN_KEYS = ["name", "deployments", "workload", "points", "repetitions", "warmup_requests", "on_failure",
             "point_timeout_s", "up_timeout_s", "liveness_timeout_s", "settings", "backend"]
WORKLOAD_KEYS = ["arrival", "duration_s", "num_requests", "classes", "mix", "api", "seed", "tokenizer"]


def one_line(e: BaseException) -> None:
    assert isinstance(e, ONE_LINE), f"{type(e).__name__}: {e}"
    assert "\n" not in str(e)


@st.composite
def plans(draw) -> dict:
    """Plans near the valid ones (most fields right, some wrong), plus arbitrary structures."""
    base = {"name": "f", "deployments": ["vllm-colocated"],
            "workload": {"arrival": {"kind": "poisson", "rate_rps": 2}, "duration_s": 2,
                         "classes": {"c": {"input": {"min": 8, "max": 16}, "output": {"min": 4, "max": 8}}},
                         "mix": {"c": 1}}}
    for key in draw(st.lists(st.sampled_from(PLAN_KEYS), max_size=3)):
        base[key] = draw(values)
    for key in draw(st.lists(st.sampled_from(WORKLOAD_KEYS), max_size=3)):
        if isinstance(base.get("workload"), dict):
            base["workload"][key] = draw(values)
    return base


@FUZZ
@given(data=st.one_of(plans(), values))
def test_plan_loader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("p") / "plan.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        load_plan(path, Settings(), "emu")
    except Exception as e:
        one_line(e)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_plan_loader_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("p") / "plan.yaml"
    path.write_bytes(raw)
    try:
        load_plan(path, Settings(), "emu")
    except Exception as e:
        one_line(e)


@FUZZ
@given(body=st.one_of(st.binary(max_size=200),
                      st.lists(st.tuples(st.sampled_from([*Settings.model_fields, "NOPE"]),
                                         st.text(string.printable, max_size=12)), max_size=5)))
def test_env_file(tmp_path_factory, body):
    path = tmp_path_factory.mktemp("e") / "x.env"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text("".join(f"{k}={v}\n" for k, v in body))
    try:
        load_settings(path, environ={})
    except Exception as e:
        one_line(e)


@FUZZ
@given(rows=st.one_of(st.binary(max_size=200), st.lists(st.dictionaries(
    st.sampled_from(["timestamp", "input_length", "output_length", "TIMESTAMP", "x"]), scalars, max_size=4),
    max_size=4)), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_trace_files(tmp_path_factory, rows, suffix):
    d = tmp_path_factory.mktemp("t")
    trace = d / f"t{suffix}"
    if isinstance(rows, bytes):
        trace.write_bytes(rows)
    elif suffix == ".jsonl":
        trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        cols = sorted({k for r in rows for k in r}) or ["timestamp"]
        trace.write_text(",".join(cols) + "\n" + "".join(",".join(str(r.get(c, "")) for c in cols) + "\n"
                                                          for r in rows))
    plan = {"name": "f", "deployments": ["vllm-colocated"], "workload": {
        "arrival": {"kind": "trace", "trace": str(trace)},
        "classes": {"c": {"input": {"min": 1, "max": 64}, "output": {"min": 1, "max": 8}}}, "mix": {"c": 1}}}
    (d / "plan.yaml").write_text(yaml.safe_dump(plan))
    try:
        load_plan(d / "plan.yaml", Settings(), "emu")
    except Exception as e:
        one_line(e)


# exposition lines: real-looking names, odd values, broken syntax
metric_names = st.sampled_from(["vllm:prompt_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                                "vllm:time_to_first_token_seconds_count", "vllm:num_requests_running",
                                "sglang:prompt_tokens_total", "x"])
sample_values = st.one_of(st.sampled_from(["NaN", "+Inf", "-Inf", "-1", "0", "1e308", "abc", ""]),
                          st.floats(allow_nan=False).map(repr))
lines = st.one_of(
    st.tuples(metric_names, st.sampled_from(["", '{le="0.1"}', '{le="+Inf"}', '{le="x"}', "{", '{a="b"']),
              sample_values).map(lambda t: f"{t[0]}{t[1]} {t[2]}"),
    st.sampled_from(["# TYPE vllm:prompt_tokens counter", "# TYPE vllm:time_to_first_token_seconds histogram",
                     "# HELP x y", "# TYPE x bogus"]),
    st.text(max_size=30))


@FUZZ
@given(page=st.lists(lines, max_size=12), framework=st.sampled_from([None, "vllm", "sglang"]))
def test_metrics_pages(page, framework):
    try:
        normalise_text("\n".join(page) + "\n", framework)
    except Exception as e:
        one_line(e)


MODEL_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "vocab_size", "intermediate_size", "torch_dtype", "kv_lora_rank", "qk_rope_head_dim",
              "n_routed_experts", "num_experts_per_tok", "first_k_dense_replace", "text_config", "q_lora_rank"]


@FUZZ
@given(cfg=st.dictionaries(st.sampled_from(MODEL_KEYS), st.one_of(scalars, st.integers(0, 4096)), max_size=10))
def test_model_configs(cfg):
    base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
            "intermediate_size": 128}
    try:
        size = size_model(base | cfg)
        assert size.kv_bytes_per_token() > 0
    except Exception as e:
        one_line(e)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=100), values.map(lambda v: json.dumps(v).encode())))
def test_model_config_and_hardware_files(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("m") / "config.json"
    path.write_bytes(raw)
    for loader in (load_model, load_hardware):
        try:
            loader(str(path))
        except Exception as e:
            one_line(e)


NUMERIC = ["input_tokens", "sent_s", "first_token_s", "done_s"]


@FUZZ
@given(cols=st.dictionaries(st.sampled_from([*NUMERIC, "status", "request_class"]),
                            st.lists(st.one_of(st.floats(), st.integers(-5, 5), st.text(max_size=3), st.none()),
                                     min_size=3, max_size=3), max_size=5))
def test_requests_tables(cols):
    try:
        table = pa.table({k: pa.array(v) for k, v in cols.items()})
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return  # pyarrow itself refuses mixed columns; a parquet file cannot hold them
    problem = check_table(table)
    assert problem is None or (isinstance(problem, str) and "\n" not in problem)


def test_fuzz_covers_every_loader():
    """A new loader of user input should get a fuzz test here too (see docs/reliability.md)."""
    tested = {name for name in globals() if name.startswith("test_")}
    assert len(tested) >= 9
    assert Path(__file__).name == "test_fuzz_parsers.py"


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch):
    monkeypatch.delenv("PDSUITE_ALLOW_TOKEN_IN_FILE", raising=False)
