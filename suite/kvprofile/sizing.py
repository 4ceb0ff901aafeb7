"""KV bytes for a model and a set of prompt lengths (the data behind `pdsuite kv-size`)."""

from __future__ import annotations

from dataclasses import dataclass

from suite.modelcfg import ModelSize

KV_DTYPES = ("auto", "bf16", "fp16", "fp8")
DEFAULT_TOKENS = (128, 512, 2048, 8192, 32768)


def attention_kind(m: ModelSize) -> str:
    if m.mla_latent_dim is not None:
        return "MLA"
    if m.kv_heads == m.heads:
        return "MHA"
    return "MQA" if m.kv_heads == 1 else "GQA"


def kv_segments(m: ModelSize) -> int:
    """Separate KV tensors per layer in a paged cache: K and V, or one latent for MLA."""
    return 1 if m.mla_latent_dim is not None else 2


@dataclass(frozen=True)
class KVSize:
    model: str
    attention: str
    layers: int
    kv_heads: int
    head_dim: int
    mla_latent_dim: int | None
    kv_dtype: str
    dtype_bytes: int
    bytes_per_token: int
    rows: list[dict]  # {"tokens", "bytes", "mib"}

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def kv_size(m: ModelSize, kv_dtype: str = "auto", tokens: tuple[int, ...] = DEFAULT_TOKENS) -> KVSize:
    per_token = m.kv_bytes_per_token(kv_dtype)
    dtype_bytes = m._dtype_bytes(kv_dtype)
    rows = [{"tokens": t, "bytes": t * per_token, "mib": t * per_token / 2**20} for t in tokens]
    return KVSize(model=m.name, attention=attention_kind(m), layers=m.layers, kv_heads=m.kv_heads,
                  head_dim=m.head_dim, mla_latent_dim=m.mla_latent_dim, kv_dtype=kv_dtype, dtype_bytes=dtype_bytes,
                  bytes_per_token=per_token, rows=rows)


def parse_tokens(text: str) -> tuple[int, ...]:
    """'128,2k,32768' -> (128, 2048, 32768); ValueError with a readable message otherwise."""
    out = []
    for part in text.split(","):
        s = part.strip().lower()
        mult = 1024 if s.endswith("k") else 1
        s = s.removesuffix("k")
        if not s.isdigit() or int(s) <= 0:
            raise ValueError(f"token counts must be positive integers (e.g. 128,2k,32768), got {part.strip()!r}")
        out.append(int(s) * mult)
    return tuple(out)
