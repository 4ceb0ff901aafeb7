"""LoadSpec fitted to a deployment: prompt form from the framework's quirk, tokenizer `auto` from the backend."""

import numpy as np
import pytest

from suite.config import ConfigError, Settings
from suite.cpu.tinymodel import build
from suite.frameworks.base import all_frameworks
from suite.load.prompts import PromptBuilder, make_tokenizer
from suite.load.resolve import hf_snapshot, resolve_spec
from suite.load.spec import load_spec

BASE = {"arrival": {"kind": "poisson", "rate_rps": 1}, "duration_s": 10}


def spec(**kw):
    return load_spec(BASE | kw)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hugging Face cache with the tiny model as org/tiny, two revisions, refs/main naming the older one."""
    cache = tmp_path_factory.mktemp("hf")
    repo = cache / "hub" / "models--org--tiny"
    for rev in ("aaa111", "bbb222"):
        build(repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa111\n")
    return cache


def test_every_framework_declares_the_quirk_and_sglang_gets_text():
    assert {f.name: f.prompt_token_ids for f in all_frameworks()} == {"vllm": True, "sglang": False}
    sg = resolve_spec(spec(), "emu-sglang-disagg")
    assert sg.completions_prompt == "text" and sg.text_prompts and sg.tokenizer == "words"  # emulated: words
    vl = resolve_spec(spec(), "emu-vllm-disagg")
    assert vl.completions_prompt == "token_ids" and not vl.text_prompts and vl.tokenizer == "auto"


def test_explicit_choices_win_and_chat_needs_a_tokenizer():
    assert resolve_spec(spec(completions_prompt="token_ids"), "emu-sglang-disagg").completions_prompt == "token_ids"
    assert resolve_spec(spec(api="chat", tokenizer="words"), "vllm-colocated").tokenizer == "words"
    assert resolve_spec(spec(api="chat"), "emu-vllm-colocated").tokenizer == "words"
    assert resolve_spec(spec()).completions_prompt == "token_ids"  # no deployment: ids
    with pytest.raises(ConfigError, match="needs the deployment"):
        resolve_spec(spec(api="chat"))


def test_gpu_deployment_uses_the_served_models_snapshot(hub):
    settings = Settings(MODEL="org/tiny", MODEL_CACHE_DIR=str(hub))
    s = resolve_spec(spec(), "sglang-disagg", settings)
    folder = hub / "hub" / "models--org--tiny" / "snapshots" / "aaa111"  # refs/main wins over the newer one
    assert s.completions_prompt == "text" and s.tokenizer == f"hf:{folder}"
    tok = make_tokenizer(s.tokenizer)
    builder = PromptBuilder(s.api, s.tokenizer, 0, 0, s.token_id_range, text=s.text_prompts)
    for n in (1, 17, 300):
        text = builder.build(np.random.default_rng(n), n)
        assert isinstance(text, str) and tok.count(text) == n  # exact count in the model's own tokenizer


def test_snapshot_without_refs_picks_one_with_a_tokenizer(hub, tmp_path):
    (tmp_path / "hub" / "models--a--b" / "snapshots" / "empty").mkdir(parents=True)
    with pytest.raises(ConfigError) as e:
        hf_snapshot("a/b", str(tmp_path))
    assert "MODEL=a/b" in str(e.value) and "\n" not in str(e.value)
    assert hf_snapshot(str(hub / "hub" / "models--org--tiny" / "snapshots" / "bbb222"), "/nonexistent").name == \
        "bbb222"  # MODEL given as a folder


def test_missing_tokenizer_fails_before_load_in_the_runner(tmp_path):
    from suite.plan import Plan
    from suite.runner.run import run_plan

    plan = Plan(name="t", deployments=["sglang-colocated"], workload=BASE, points=[{"label": "a"}],
                warmup_requests=0)
    settings = Settings(MODEL="nobody/nothing", MODEL_CACHE_DIR=str(tmp_path / "cache"))
    state = run_plan(plan, settings, tmp_path, backend="gpu", driver_kind="compose")  # never reaches docker
    point = next(state.out.rglob("point.json")).read_text()
    assert "no local tokenizer for MODEL=nobody/nothing" in point and state.failed == ["sglang-colocated/a/rep0"]
