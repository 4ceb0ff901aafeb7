"""KV size model and `pdsuite kv-size`: known models, dtypes, and one clear error for bad input."""

import json

import pytest
import typer
from typer.testing import CliRunner

from suite.kvprofile.cli import register
from suite.kvprofile.sizing import attention_kind, kv_size, parse_tokens
from suite.modelcfg import ModelConfigError, load, size_model


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep sub-command names on a one-command app
        pass

    return app


@pytest.mark.parametrize(("name", "dtype", "per_token", "kind"), [
    ("llama-3.1-8b", "auto", 131_072, "GQA"),
    ("llama-3.1-8b", "fp8", 65_536, "GQA"),
    ("llama-3.1-70b", "auto", 327_680, "GQA"),
    ("llama-3.1-70b", "fp16", 327_680, "GQA"),
    ("deepseek-v3", "bf16", 70_272, "MLA"),  # 61 layers x (512 latent + 64 rope) x 2 B
    ("deepseek-v3", "fp8", 35_136, "MLA"),
    ("tiny-llama", "auto", 2 * 2 * 2 * 64 * 4, "GQA"),  # float32 model: auto = 4 B
])
def test_known_models(name, dtype, per_token, kind):
    size = kv_size(load(name), dtype, (128, 2048))
    assert size.bytes_per_token == per_token
    assert size.attention == kind
    assert [r["bytes"] for r in size.rows] == [128 * per_token, 2048 * per_token]


def test_mha_and_mqa_are_named():
    base = {"hidden_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 100,
            "intermediate_size": 1024}
    assert attention_kind(size_model(base)) == "MHA"
    assert size_model(base).kv_bytes_per_token("bf16") == 2 * 2 * 8 * 64 * 2
    assert attention_kind(size_model({**base, "num_key_value_heads": 1})) == "MQA"


@pytest.mark.parametrize("bad", [{"num_key_value_heads": 3}, {"num_key_value_heads": -8}, {"head_dim": "x"},
                                 {"hidden_size": 0}])
def test_bad_configs_raise(bad):
    cfg = {"hidden_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 100,
           "intermediate_size": 1024, **bad}
    with pytest.raises(ModelConfigError):
        size_model(cfg)


def test_parse_tokens():
    assert parse_tokens("128, 2k,32768") == (128, 2048, 32768)
    for bad in ("0", "-5", "x", "1.5k", ""):
        with pytest.raises(ValueError):
            parse_tokens(bad)


def test_cli_table_and_json(tmp_path):
    r = CliRunner().invoke(_app(), ["kv-size", "llama-3.1-8b", "--tokens", "2k"])
    assert r.exit_code == 0, r.output
    assert "131,072 B/token" in r.output and "268,435,456" in r.output
    cfg_dir = tmp_path / "m"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps(json.loads(load_text("llama-3.1-70b"))))
    r = CliRunner().invoke(_app(), ["kv-size", str(cfg_dir), "--kv-dtype", "fp8", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["bytes_per_token"] == 163_840


def load_text(name: str) -> str:
    from suite.modelcfg import CONFIG_DIR
    return (CONFIG_DIR / f"{name}.json").read_text()


@pytest.mark.parametrize(("args", "needle"), [
    (["kv-size", "no-such-model"], "no model config"),
    (["kv-size", "llama-3.1-8b", "--kv-dtype", "int4"], "--kv-dtype"),
    (["kv-size", "llama-3.1-8b", "--tokens", "abc"], "token counts"),
])
def test_cli_errors_are_one_line(args, needle):
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pdsuite: error:") and needle in lines[0]


def test_cli_broken_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    r = CliRunner().invoke(_app(), ["kv-size", str(p)])
    assert r.exit_code == 2 and "not valid JSON" in r.output
    p.write_text(json.dumps({"hidden_size": 4096}))
    r = CliRunner().invoke(_app(), ["kv-size", str(p)])
    assert r.exit_code == 2 and "num_hidden_layers" in r.output
