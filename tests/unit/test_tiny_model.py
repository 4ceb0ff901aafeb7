"""The tiny Llama builder: a loadable config, a working tokenizer and chat template, deterministic weights."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from suite.cpu import tinymodel
from suite.cpu.tinymodel import build


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny"), random_weights=True, seed=0)


def test_config_is_a_small_llama(model):
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0  # GQA groups
    assert cfg["head_dim"] * cfg["num_attention_heads"] == cfg["hidden_size"]


def test_tokenizer_round_trips_and_fits_the_vocab(model):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    cfg = json.loads((model / "config.json").read_text())
    assert tok.get_vocab_size() <= cfg["vocab_size"]
    text = "Prefill sends 1234 KV blocks to decode! Ünïcode too."
    enc = tok.encode(text)
    assert enc.ids[0] == cfg["bos_token_id"]
    assert tok.decode(enc.ids, skip_special_tokens=True) == text  # byte-level: nothing is lost
    assert len(enc.ids) < len(text.encode())  # the BPE actually merged something
    for special in tinymodel.SPECIAL:
        assert tok.token_to_id(special) is not None
        assert len(tok.encode(special, add_special_tokens=False).ids) == 1


def test_chat_template_renders_llama3_style(model):
    import jinja2

    cfg = json.loads((model / "tokenizer_config.json").read_text())
    out = jinja2.Template(cfg["chat_template"]).render(
        messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True, bos_token=cfg["bos_token"])
    assert out == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert cfg["eos_token"] == "<|eot_id|>"


def test_random_weights_match_the_config(model):
    from safetensors.numpy import load_file

    cfg = json.loads((model / "config.json").read_text())
    w = load_file(str(model / "model.safetensors"))
    h, v, kv = cfg["hidden_size"], cfg["vocab_size"], cfg["num_key_value_heads"] * cfg["head_dim"]
    assert w["model.embed_tokens.weight"].shape == (v, h)
    assert w["lm_head.weight"].shape == (v, h)
    for i in range(cfg["num_hidden_layers"]):
        assert w[f"model.layers.{i}.self_attn.k_proj.weight"].shape == (kv, h)
        assert w[f"model.layers.{i}.mlp.down_proj.weight"].shape == (h, cfg["intermediate_size"])
    assert not any(k.startswith(f"model.layers.{cfg['num_hidden_layers']}.") for k in w)


def test_builds_are_deterministic_and_seeded(model, tmp_path):
    again = build(tmp_path / "again", random_weights=True, seed=0)
    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        assert (again / name).read_bytes() == (model / name).read_bytes(), name
    other = build(tmp_path / "other", random_weights=True, seed=1)
    assert (other / "model.safetensors").read_bytes() != (model / "model.safetensors").read_bytes()


def test_dummy_build_drops_stale_weights(tmp_path):
    build(tmp_path, random_weights=True)
    build(tmp_path)  # served with --load-format dummy: old weights must not linger
    assert not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "tokenizer.json").exists()


def test_cli(tmp_path):
    import suite.cli

    res = CliRunner().invoke(suite.cli.app, ["tiny-model", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "config.json").exists()
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(suite.cli.app, ["tiny-model", str(tmp_path / "file")])
    assert res.exit_code == 2
    assert "pdsuite: error:" in res.output and "not a folder" in res.output
