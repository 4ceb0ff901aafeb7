"""Plans: every bundled plan validates; bad plans fail before anything starts, with one line."""

from pathlib import Path

import pytest

from suite.config import Settings
from suite.plan import PLAN_DIR, PlanError, deep_merge, load_plan, point_label

BUNDLED = sorted(PLAN_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
@pytest.mark.parametrize("backend", [None, "emu"])
def test_bundled_plans_validate(path, backend):
    plan = load_plan(path, Settings(), backend)
    assert plan.resolved_deployments(backend)
    assert len({label for label, _ in plan.point_specs()}) == len(plan.points)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(text)
    return p


GOOD = """
name: t
deployments: [vllm-colocated]
workload: {arrival: {kind: poisson, rate_rps: 2}, duration_s: 5}
points: [{arrival: {rate_rps: 1}}, {arrival: {rate_rps: 3}}]
"""


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("vllm-colocated", "vllm-nope"), "unknown deployment 'vllm-nope'"),
    (GOOD + "repetitions: 0\n", "repetitions"),
    (GOOD + "bogus: 1\n", "bogus"),
    ("name: t\ndeployments: [vllm-colocated\n", "not valid YAML"),
    ("- a\n- b\n", "a YAML mapping"),
    (GOOD.replace("points: [{arrival: {rate_rps: 1}}, {arrival: {rate_rps: 3}}]",
                  "points: [{label: a}, {label: a}]"), "share the label"),
    (GOOD.replace("rate_rps: 2}, duration_s: 5", "rate_rps: 2}"), "needs duration_s or num_requests"),
    (GOOD.replace("workload: {", "workload: {mix: {nope: 1}, "), "unknown classes"),
])
def test_bad_plans_fail_with_one_line(tmp_path, text, message):
    with pytest.raises(PlanError) as e:
        load_plan(write(tmp_path, text), Settings())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_lengths_beyond_max_model_len_fail(tmp_path):
    with pytest.raises(PlanError, match="max_model_len 4096"):
        load_plan(write(tmp_path, GOOD), Settings(MAX_MODEL_LEN=4096))  # default classes go to 8192 + 64


def test_cpu_backend_has_the_tiny_models_limit():
    with pytest.raises(PlanError, match="cpu-vllm-colocated"):
        load_plan("exp1-extended", Settings(), "cpu")


def test_more_gpus_than_present(tmp_path):
    with pytest.raises(PlanError, match="needs 2 GPUs, this host has 1"):
        load_plan(write(tmp_path, GOOD.replace("vllm-colocated", "vllm-tp2")), Settings(), gpus_present=1)


def test_unknown_plan_lists_bundled():
    with pytest.raises(PlanError, match="exp3-compare"):
        load_plan("no-such-plan", Settings())


def test_points_merge_over_workload():
    base = {"arrival": {"kind": "poisson", "rate_rps": 2}, "seed": 1}
    assert deep_merge(base, {"arrival": {"rate_rps": 5}}) == {"arrival": {"kind": "poisson", "rate_rps": 5}, "seed": 1}
    assert base["arrival"]["rate_rps"] == 2  # not mutated
    assert point_label({"arrival": {"rate_rps": 5}}) == "arrival.rate_rps=5"
    assert point_label({"label": "x", "seed": 2}) == "x"


def test_xpyd_needs_three_ascending_gpus():
    with pytest.raises(PlanError, match="needs 3 GPUs, this host has 2"):
        load_plan("xpyd", Settings(), gpus_present=2)
    with pytest.raises(PlanError, match="THIRD_GPU"):
        load_plan("xpyd", Settings(PREFILL_GPU=1, DECODE_GPU=2, THIRD_GPU=0))
    assert load_plan("xpyd", Settings(PREFILL_GPU=1, DECODE_GPU=2, THIRD_GPU=0), "emu")  # no GPUs: no pins


def test_plan_settings_override_and_are_validated(tmp_path):
    from suite.plan import apply_overrides

    plan = load_plan(write(tmp_path, GOOD + "settings: {MAX_MODEL_LEN: 20000}\n"), Settings(MAX_MODEL_LEN=4096))
    assert apply_overrides(Settings(), plan.settings).MAX_MODEL_LEN == 20000
    with pytest.raises(PlanError, match="plan settings: MAX_MODEL_LEN"):
        load_plan(write(tmp_path, GOOD + "settings: {MAX_MODEL_LEN: 1}\n"), Settings())
    with pytest.raises(PlanError, match="NOPE"):
        load_plan(write(tmp_path, GOOD + "settings: {NOPE: 1}\n"), Settings())


@pytest.mark.parametrize("extra, message", [
    ("points: []\n", "points"),
    ("points: [{label: ../../../../X}]\n", "must be one folder name"),
    ("points: [{label: /tmp/X}]\n", "must be one folder name"),
    ("warmup_requests: 1000000000000\n", "warmup_requests"),
    ("point_timeout_s: .inf\n", "point_timeout_s: inf is not a finite number"),
    ("settings: {HF_TOKEN: hf_x}\n", "PDSUITE_ALLOW_TOKEN_IN_FILE"),
    ("liveness_timeout_s: 0\n", "liveness_timeout_s"),
])
def test_plans_refused_before_start(tmp_path, extra, message, monkeypatch):
    monkeypatch.delenv("PDSUITE_ALLOW_TOKEN_IN_FILE", raising=False)
    with pytest.raises(PlanError) as e:
        load_plan(write(tmp_path, GOOD + extra), Settings())
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "hf_x" not in str(e.value)


@pytest.mark.parametrize("old, new, message", [
    ("rate_rps: 2}, duration_s: 5", "rate_rps: 1e9}, duration_s: 1e5", "requests (rate x duration"),
    ("rate_rps: 2}, duration_s: 5", "rate_rps: 2}, duration_s: 1e12", "longer than a week"),
    ("rate_rps: 2}, duration_s: 5", "rate_rps: 0.01}, duration_s: 0.001", "has no requests"),
    ("name: t", "name: '..'", "name"),
])
def test_schedules_and_names_refused_before_start(tmp_path, old, new, message):
    text = GOOD.replace("points: [{arrival: {rate_rps: 1}}, {arrival: {rate_rps: 3}}]", "")
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        load_plan(write(tmp_path, text.replace(old, new)), Settings())


def test_auto_labels_are_folder_names():
    assert point_label({"arrival": {"trace": "/data/x y.csv"}}) == "arrival.trace=_data_x_y.csv"
    assert point_label({"label": "rate=2"}) == "rate=2"


def test_secret_in_plan_allowed_by_opt_in_is_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("PDSUITE_ALLOW_TOKEN_IN_FILE", "1")
    plan = load_plan(write(tmp_path, GOOD + "settings: {HF_TOKEN: hf_x}\n"), Settings())
    assert plan.public_dump()["settings"]["HF_TOKEN"] == "***" and plan.settings["HF_TOKEN"] == "hf_x"
