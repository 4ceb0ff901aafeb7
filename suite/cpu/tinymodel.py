"""A tiny Llama the project builds itself, so real vLLM can run on CPU with nothing downloaded.

config.json (LlamaForCausalLM, 2 layers, hidden 256) + a byte-level BPE tokenizer trained here in about a second +
a Llama-3-style chat template. Without weights it is served with `--load-format dummy` (timing only: dummy weights
make every logprob equal). With `random_weights=True` it gets small deterministic random safetensors, so greedy
output depends on the prompt's KV - what the P/D correctness tests need.

Imports only stdlib, numpy, tokenizers and safetensors, so images/vllm-cpu can run it as
`python -m suite.cpu.tinymodel OUT_DIR` with the vLLM venv alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB_SIZE = 1024
HIDDEN = 256
INTERMEDIATE = 512
LAYERS = 2
HEADS = 4
KV_HEADS = 2
MAX_POSITIONS = 2048
BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIAL = [BOS, EOS, EOT, "<|start_header_id|>", "<|end_header_id|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Training text: fixed, so the tokenizer (and every token count in tests) is the same on every machine.
_TEXT = ("the prefill decode engine sends key value cache blocks to a router that streams tokens back while "
         "users ask questions about latency throughput memory bandwidth attention layers batches requests "
         "models servers transfer disaggregation colocated replicas tensor parallel pipelines numbers "
         "zero one two three four five six seven eight nine ten hundred thousand time first token")
_WORDS = _TEXT.split(" ")


def corpus() -> list[str]:
    lines = []
    for i in range(400):  # deterministic word salad plus digits and punctuation: covers what tests send
        words = [_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(12 + i % 9)]
        lines.append(f"{' '.join(words).capitalize()}, {i} {i * 37 % 1000}. Why? {words[0]}: {words[-1]}!")
    return lines


def config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": VOCAB_SIZE, "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS, "max_position_embeddings": MAX_POSITIONS, "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "initializer_range": 0.02,
        # float32 weights; vLLM's dtype "auto" serves fp32 checkpoints in bf16 on CPU (so the KV files are bf16).
        "torch_dtype": "float32",
        "bos_token_id": SPECIAL.index(BOS), "eos_token_id": [SPECIAL.index(EOS), SPECIAL.index(EOT)],
    }


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos)])
    return tok


def weights(seed: int) -> dict:
    """Deterministic random weights, scaled so activations stay O(1) and logits spread widely (no greedy ties)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def lin(out_dim: int, in_dim: int, gain: float = 1.0):
        return (rng.standard_normal((out_dim, in_dim)) * gain / np.sqrt(in_dim)).astype(np.float32)

    hd = HIDDEN // HEADS
    t = {"model.embed_tokens.weight": rng.standard_normal((VOCAB_SIZE, HIDDEN)).astype(np.float32),
         "model.norm.weight": np.ones(HIDDEN, np.float32),
         "lm_head.weight": lin(VOCAB_SIZE, HIDDEN, gain=4.0)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t |= {p + "self_attn.q_proj.weight": lin(HEADS * hd, HIDDEN, gain=2.0),
              p + "self_attn.k_proj.weight": lin(KV_HEADS * hd, HIDDEN, gain=2.0),
              p + "self_attn.v_proj.weight": lin(KV_HEADS * hd, HIDDEN),
              p + "self_attn.o_proj.weight": lin(HIDDEN, HEADS * hd),
              p + "mlp.gate_proj.weight": lin(INTERMEDIATE, HIDDEN),
              p + "mlp.up_proj.weight": lin(INTERMEDIATE, HIDDEN),
              p + "mlp.down_proj.weight": lin(HIDDEN, INTERMEDIATE),
              p + "input_layernorm.weight": np.ones(HIDDEN, np.float32),
              p + "post_attention_layernorm.weight": np.ones(HIDDEN, np.float32)}
    return t


def build(out_dir: str | Path, random_weights: bool = False, seed: int = 0) -> Path:
    """Write the model folder; returns it. Re-running overwrites the same files with the same bytes."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    cfg = config()
    tok = build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "do_sample": False}) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOT, "pad_token": EOS,
        "model_max_length": MAX_POSITIONS, "add_bos_token": False, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOT, "pad_token": EOS}, indent=2) + "\n")
    st = out / "model.safetensors"
    if random_weights:
        from safetensors.numpy import save_file

        save_file(weights(seed), str(st), metadata={"format": "pt"})  # one key: byte-identical builds
    elif st.exists():
        st.unlink()  # a dummy-weights folder must not silently carry old weights
    return out


if __name__ == "__main__":  # used by images/vllm-cpu (no typer there)
    import argparse

    ap = argparse.ArgumentParser(prog="python -m suite.cpu.tinymodel")
    ap.add_argument("out_dir")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build(a.out_dir, a.random_weights, a.seed), file=sys.stderr)
