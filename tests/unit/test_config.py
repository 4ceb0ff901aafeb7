"""suite/config.py: bad settings are one clear line; secrets never leak into compose or recorded settings."""

from __future__ import annotations

import pytest

from suite.config import ConfigError, Settings, env_example, expand, load_settings
from suite.deploy.compose import render


def load(tmp_path, text: str, environ: dict[str, str] | None = None) -> Settings:
    env = tmp_path / ".env"
    env.write_text(text)
    return load_settings(env, environ=environ or {})


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_defaults_load_without_env_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default .env may be absent
    s = load_settings(environ={})
    assert s == Settings() == load_settings(None, environ={})
    assert (s.PREFILL_GPU, s.DECODE_GPU, s.BIND_ADDRESS) == (0, 1, "127.0.0.1")


def test_environment_overrides_env_file(tmp_path):
    s = load(tmp_path, "ENDPOINT_PORT=9000\nMODEL=a/b\n", environ={"ENDPOINT_PORT": "9100", "UNRELATED": "x"})
    assert (s.ENDPOINT_PORT, s.MODEL) == (9100, "a/b")


@pytest.mark.parametrize(("text", "words"), [
    ("ENDPOINT_PORT=http\n", "ENDPOINT_PORT"),
    ("ENDPOINT_PORT=70000\n", "ENDPOINT_PORT"),
    ("BIND_ADDRESS=localhost:8000\n", "BIND_ADDRESS"),
    ("GPU_MEMORY_FRACTION=1.5\n", "GPU_MEMORY_FRACTION"),
    ("LOAD_FORMAT=pt\n", "LOAD_FORMAT"),
    ("SGLANG_TRANSFER_BACKEND=nccl\n", "SGLANG_TRANSFER_BACKEND"),
    ("VLLM_EXTRA_ARGS=--max-num-seqs 8 --disable-log-stats\n", "--disable-log-stats"),
    ("ENGINE_A_PORT=8000\n", "8000"),  # clashes with ENDPOINT_PORT
])
def test_bad_values_are_one_line_config_errors(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert words in one_line(e)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, "MODEL=a/b\nPREFIL_GPU=0\n")
    assert "PREFIL_GPU" in one_line(e)


@pytest.mark.parametrize(("p", "d"), [("1", "0"), ("1", "1"), ("3", "2")])
def test_prefill_gpu_must_be_below_decode_gpu(tmp_path, p, d):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"PREFILL_GPU={p}\nDECODE_GPU={d}\n")
    assert "PREFILL_GPU" in one_line(e)


def test_other_gpu_pairs_accepted(tmp_path):
    s = load(tmp_path, "PREFILL_GPU=2\nDECODE_GPU=5\n")
    assert (s.PREFILL_GPU, s.DECODE_GPU) == (2, 5)


def test_hf_token_masked_and_never_written(tmp_path):
    secret = "hf_SECRETsecret123"
    s = load(tmp_path, "", environ={"HF_TOKEN": secret})
    assert secret == s.HF_TOKEN  # usable by the process that needs it
    pub = s.public()
    assert pub["HF_TOKEN"] == "***" and secret not in repr(pub)
    assert Settings().public()["HF_TOKEN"] == ""  # unset stays visibly unset
    text = render(s)
    assert secret not in text
    assert "${HF_TOKEN:-}" in text  # compose passes it through from the environment at run time
    assert "HF_TOKEN=\n" in env_example()


def test_expand_resolves_compose_references():
    s = Settings(ENDPOINT_PORT=8123)
    assert expand("http://${BIND_ADDRESS}:${ENDPOINT_PORT:-8000}/v1", s) == "http://127.0.0.1:8123/v1"


def test_env_example_lists_every_setting_with_its_default():
    lines = [ln for ln in env_example().splitlines() if ln and not ln.startswith("#")]
    keys = dict(ln.split("=", 1) for ln in lines)
    assert set(keys) == set(Settings.model_fields)
    assert keys["VLLM_ROUTER_VERSION"] == "0.1.17" and keys["SGLANG_ROUTER_VERSION"] == "0.3.2"


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.env", "no such file"),
    (lambda d: d, "not a file"),
    (lambda d: (d / "bin.env").write_bytes(b"\xff\xfe\x00A=1") and d / "bin.env", "not a text file"),
])
def test_a_named_env_file_must_be_a_readable_text_file(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(make(tmp_path), environ={})


def test_a_token_in_env_file_is_refused_unless_allowed(tmp_path):
    env = tmp_path / "t.env"
    env.write_text("HF_TOKEN=hf_canary123\n")
    with pytest.raises(ConfigError) as e:
        load_settings(env, environ={})
    assert "PDSUITE_ALLOW_TOKEN_IN_FILE" in str(e.value) and "hf_canary123" not in str(e.value)
    assert load_settings(env, environ={"PDSUITE_ALLOW_TOKEN_IN_FILE": "1"}).HF_TOKEN == "hf_canary123"
    assert load_settings(env, environ={"PDSUITE_ALLOW_TOKEN_IN_FILE": "1"}).public()["HF_TOKEN"] == "***"
