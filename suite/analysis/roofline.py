"""First-principles bounds for each request class, and how close the measured times came to them.

- prefill: the forward FLOPs of the prompt (suite/modelcfg ModelSize.prefill_flops: 2 x active params per token +
  causal attention; the LM head only for the last token, as engines compute it) at the GPU's peak dense BF16
  rate (x TP ranks) is the least time the prefill can take;
  achieved fraction = that bound / the measured prefill compute time.
- decode: one step reads the active weights once plus the KV of every sequence in the batch
  (ModelSize.decode_bytes); at peak HBM bandwidth (x TP ranks) that is the least step time; achieved fraction =
  bound / measured inter-token time. The batch is the measured mean number of requests decoding at once (Little's
  law over the client records: summed decode time / load window), each at its mean context (prompt + half the output).
- KV transfer (P/D): the prompt's KV bytes (ModelSize.kv_bytes) at the measured link bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from suite.analysis.gpus import GpuPeak


@dataclass(frozen=True)
class ClassRoofline:
    request_class: str
    prompt_tokens: float
    output_tokens: float
    prefill_flops: float
    prefill_bound_s: float
    prefill_measured_s: float | None
    prefill_fraction: float | None
    decode_batch: float
    decode_step_bytes: float
    decode_bound_s: float
    decode_measured_s: float | None
    decode_fraction: float | None
    kv_bytes: float
    kv_link_bps: float | None
    kv_bound_s: float | None
    kv_measured_s: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _frac(bound: float, measured: float | None) -> float | None:
    return bound / measured if measured and measured > 0 and not math.isnan(measured) else None


def class_roofline(m, gpu: GpuPeak, *, tp: int, request_class: str, prompt_tokens: float, output_tokens: float,
                   prefill_measured_s: float | None, itl_measured_s: float | None, decode_batch: float,
                   link_bps: float | None = None, kv_measured_s: float | None = None,
                   kv_dtype: str = "auto") -> ClassRoofline:
    # engines compute logits for the prompt's last token only: the LM head runs once, not per prompt token
    tokens = round(prompt_tokens)
    flops = m.prefill_flops(tokens) - 2.0 * m.vocab * m.hidden * max(0, tokens - 1)
    pre_bound = flops / (gpu.bf16_flops * tp)
    batch = max(1.0, decode_batch)
    context = prompt_tokens + output_tokens / 2
    step_bytes = m.decode_bytes(round(batch * context), kv_dtype)
    dec_bound = step_bytes / (gpu.hbm_bps * tp)
    kv = float(m.kv_bytes(round(prompt_tokens), kv_dtype))
    kv_bound = kv / link_bps if link_bps else None
    return ClassRoofline(request_class, prompt_tokens, output_tokens, flops, pre_bound, prefill_measured_s,
                         _frac(pre_bound, prefill_measured_s), batch, step_bytes, dec_bound, itl_measured_s,
                         _frac(dec_bound, itl_measured_s), kv, link_bps, kv_bound, kv_measured_s)


def decode_concurrency(decode_s_sum: float, window_s: float) -> float:
    """Mean requests decoding at once (Little's law): their summed decode time over the load window."""
    return decode_s_sum / window_s if window_s > 0 else 1.0
