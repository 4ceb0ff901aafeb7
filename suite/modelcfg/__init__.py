"""Size a model from its Hugging Face config.json: KV bytes per token, parameters, FLOPs per token.

Used by `pdsuite kv-size`, the KV-transfer profiler and the emulator's cost model, so all three agree.
Handles dense MHA/GQA (Llama, Qwen, Mistral), MLA (DeepSeek-V2/V3: one compressed latent per token and layer)
and MoE (active vs total parameters).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
               "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "float8": 1, "auto": None}


class ModelConfigError(ValueError):
    """A config.json the suite cannot size (missing fields, bad values)."""


@dataclass(frozen=True)
class ModelSize:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    mla_latent_dim: int | None  # kv_lora_rank + qk_rope_head_dim for MLA, else None
    params_total: float
    params_active: float  # per token (MoE: shared + top-k experts)
    weight_dtype_bytes: int
    intermediate: int | None = None  # dense MLP width (prefill timing builds the layers from it)

    def kv_bytes_per_token(self, kv_dtype: str = "auto") -> int:
        b = self._dtype_bytes(kv_dtype)
        if self.mla_latent_dim is not None:  # one latent vector per layer, no separate K and V
            return self.layers * self.mla_latent_dim * b
        return 2 * self.layers * self.kv_heads * self.head_dim * b

    def kv_bytes(self, tokens: int, kv_dtype: str = "auto") -> int:
        return tokens * self.kv_bytes_per_token(kv_dtype)

    @property
    def weight_bytes(self) -> float:
        return self.params_total * self.weight_dtype_bytes

    def prefill_flops(self, tokens: int, context: int = 0) -> float:
        """Forward FLOPs to prefill `tokens` new tokens after `context` cached ones (causal attention)."""
        linear = 2.0 * self.params_active * tokens
        # QK^T and AV: 2 matmuls x 2 FLOP/MAC, each new token attends to context + its causal prefix
        attended = tokens * context + tokens * (tokens + 1) / 2
        attn = 4.0 * self.layers * self.heads * self.head_dim * attended
        return linear + attn

    def decode_bytes(self, context_tokens: int, kv_dtype: str = "auto") -> float:
        """HBM bytes one decode step reads: active weights once, plus the KV cache of every sequence in the
        batch (`context_tokens` = their summed lengths)."""
        return self.params_active * self.weight_dtype_bytes + context_tokens * self.kv_bytes_per_token(kv_dtype)

    def _dtype_bytes(self, kv_dtype: str) -> int:
        if kv_dtype not in DTYPE_BYTES:
            raise ModelConfigError(f"unknown KV dtype {kv_dtype!r}; known: {', '.join(DTYPE_BYTES)}")
        return DTYPE_BYTES[kv_dtype] or self.weight_dtype_bytes


MAX_CONFIG_BYTES = 4 * 1024 * 1024  # real config.json files are a few KB
MAX_DIM = 1 << 24  # no model dimension (layers, hidden, heads, vocab, experts) is larger


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a layer count


def _req(cfg: dict, key: str, where: str) -> int:
    v = cfg.get(key)
    if not _is_int(v) or not 0 < v <= MAX_DIM:
        raise ModelConfigError(f"{where}: config.json needs a positive integer {key!r} (got {v!r})")
    return v


def _opt(cfg: dict, key: str, where: str, default: int | None = None, zero_ok: bool = False) -> int | None:
    """An optional integer field: absent (or null) gives `default`; present, it must be a positive integer."""
    v = cfg.get(key)
    if v is None:
        return default
    if not _is_int(v) or not (0 if zero_ok else 1) <= v <= MAX_DIM:
        raise ModelConfigError(f"{where}: config.json {key!r} must be a {'non-negative' if zero_ok else 'positive'} "
                               f"integer (got {v!r})")
    return v


def size_model(cfg: dict, name: str = "model") -> ModelSize:
    if "text_config" in cfg:  # multimodal wrappers keep the LM config here
        cfg = cfg["text_config"]
        if not isinstance(cfg, dict):
            raise ModelConfigError(f"{name}: config.json 'text_config' must be a JSON object")
    hidden = _req(cfg, "hidden_size", name)
    layers = _req(cfg, "num_hidden_layers", name)
    heads = _req(cfg, "num_attention_heads", name)
    kv_heads = _opt(cfg, "num_key_value_heads", name, heads)
    if heads % kv_heads:
        raise ModelConfigError(f"{name}: num_attention_heads {heads} is not a multiple of "
                               f"num_key_value_heads {kv_heads}")
    head_dim = _opt(cfg, "head_dim", name, hidden // heads)
    if head_dim <= 0:
        raise ModelConfigError(f"{name}: head_dim must be a positive integer (hidden_size {hidden} / "
                               f"num_attention_heads {heads} = 0)")
    vocab = _req(cfg, "vocab_size", name)
    inter = _req(cfg, "intermediate_size", name)
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    if not isinstance(dtype, str) or (DTYPE_BYTES.get(dtype.removeprefix("torch.")) is None and dtype != "auto"):
        known = ", ".join(k for k, v in DTYPE_BYTES.items() if v)
        raise ModelConfigError(f"{name}: config.json dtype {dtype!r} is not one of {known}")
    wbytes = DTYPE_BYTES.get(dtype.removeprefix("torch.")) or 2

    mla = None
    if cfg.get("kv_lora_rank"):
        rope = _req(cfg, "qk_rope_head_dim", name)
        lora = _req(cfg, "kv_lora_rank", name)
        mla = lora + rope
        nope = _opt(cfg, "qk_nope_head_dim", name, head_dim, zero_ok=True)
        v_dim = _opt(cfg, "v_head_dim", name, head_dim)
        q_rank = _opt(cfg, "q_lora_rank", name)
        q = (hidden * q_rank + q_rank * heads * (nope + rope)) if q_rank else hidden * heads * (nope + rope)
        kv = hidden * (cfg["kv_lora_rank"] + rope) + cfg["kv_lora_rank"] * heads * (nope + v_dim)
        attn = q + kv + heads * v_dim * hidden
        head_dim = nope + rope  # for attention FLOPs
    else:
        attn = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden

    dense_mlp = 3 * hidden * inter
    experts = _opt(cfg, "n_routed_experts", name, zero_ok=True) or _opt(cfg, "num_local_experts", name,
                                                                           zero_ok=True) or 0
    if experts:
        moe_inter = _opt(cfg, "moe_intermediate_size", name, inter)
        top_k = _req(cfg, "num_experts_per_tok", name)
        shared = _opt(cfg, "n_shared_experts", name, 0, zero_ok=True)
        dense_layers = _opt(cfg, "first_k_dense_replace", name, 0, zero_ok=True)
        if dense_layers > layers or top_k > experts:
            raise ModelConfigError(f"{name}: first_k_dense_replace {dense_layers} > layers {layers} or "
                                   f"num_experts_per_tok {top_k} > experts {experts}")
        moe_layers = layers - dense_layers
        expert_mlp = 3 * hidden * moe_inter
        mlp_total = dense_layers * dense_mlp + moe_layers * (experts + shared) * expert_mlp
        mlp_active = dense_layers * dense_mlp + moe_layers * (top_k + shared) * expert_mlp
    else:
        mlp_total = mlp_active = layers * dense_mlp

    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    total = layers * attn + mlp_total + embed
    active = layers * attn + mlp_active + vocab * hidden  # the LM head is used per token, the embedding is a lookup
    return ModelSize(name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                     vocab=vocab, mla_latent_dim=mla, params_total=float(total), params_active=float(active),
                     weight_dtype_bytes=wbytes, intermediate=inter)


def bundled() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load(ref: str | Path) -> ModelSize:
    """A bundled name (llama-3.1-8b), a config.json path, or a model folder holding config.json."""
    p = Path(ref)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        p = CONFIG_DIR / f"{ref}.json"
    if not p.is_file():
        raise ModelConfigError(f"no model config {str(ref)!r}: give a config.json, a model folder, "
                               f"or one of {', '.join(bundled())}")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelConfigError(f"{p}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config.json")
        cfg = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelConfigError(f"{p}: not a text file (not UTF-8)") from None
    except OSError as e:
        raise ModelConfigError(f"{p}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ModelConfigError(f"{p}: JSON nested too deeply") from None
    if not isinstance(cfg, dict):
        raise ModelConfigError(f"{p}: config.json must hold a JSON object")
    return size_model(cfg, name=p.stem if p.parent == CONFIG_DIR else str(ref))
