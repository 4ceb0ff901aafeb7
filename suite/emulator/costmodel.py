"""Seconds for one engine step and one KV transfer, from a model config and a hardware profile.

step = overhead + allreduce(TP) + [prefill chunks: max(floor, sum of FLOPs / (flops*tp_eff)), floor once per step]
                                + [decodes: (active weights + KV of the batch) / (mem_bw*tp_eff)]
A mixed step pays both terms, so a long prefill stalls the decodes sharing its step (co-located), and a
decode-only engine (P/D) never pays it. Formulas and calibration: docs/emulator.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from suite.emulator.hardware import Hardware
from suite.modelcfg import ModelSize

FLOOR_TOKENS = 128


@dataclass(frozen=True)
class CostModel:
    model: ModelSize
    hw: Hardware
    tp: int = 1

    @property
    def _speedup(self) -> float:
        return 1 + (self.tp - 1) * self.hw.tp_efficiency

    def prefill_s(self, tokens: int, context: int = 0) -> float:
        """Compute time of a prefill chunk of `tokens` new tokens after `context` cached ones."""
        return self.prefill_batch_s([(tokens, context)])

    def prefill_batch_s(self, chunks: list[tuple[int, int]]) -> float:
        """Compute time of one step's prefill chunks [(new_tokens, context)]: they run in one forward pass, so the
        overhead floor is paid once per step, not once per chunk (128 short prompts batched together cost about
        what one prompt of their total length does)."""
        tokens = sum(t for t, _ in chunks)
        if tokens <= 0:
            return 0.0
        # The floor was measured for 128..1024-token prompts; below 128 tokens scale it down (a 1-token
        # "prefill", e.g. vLLM D recomputing the last prompt token, costs about a decode token).
        scale = min(1.0, tokens / FLOOR_TOKENS)
        flops = sum(self.model.prefill_flops(t, c) for t, c in chunks if t > 0)
        return self.hw.prefill_fixed_s * scale + max(self.hw.prefill_floor_s * scale,
                                                     flops / (self.hw.flops * self._speedup))

    def decode_s(self, batch: int, context_tokens: int) -> float:
        """Memory time of one decode step for `batch` sequences holding `context_tokens` tokens in total."""
        if batch <= 0:
            return 0.0
        return self.model.decode_bytes(context_tokens) / (self.hw.mem_bw * self._speedup)

    def allreduce_s(self, step_tokens: int) -> float:
        """TP all-reduce: 2 per layer (attention out, MLP out), ring over tp ranks on the link."""
        if self.tp <= 1 or step_tokens <= 0:
            return 0.0
        nbytes = step_tokens * self.model.hidden * self.model.weight_dtype_bytes
        one = self.hw.allreduce_latency_s + 2 * (self.tp - 1) / self.tp * nbytes / self.hw.link_bw
        return 2 * self.model.layers * one

    def step_s(self, prefill: list[tuple[int, int]], decode_batch: int, decode_context: int) -> float:
        """One engine step: prefill chunks [(new_tokens, context)], plus `decode_batch` decodes over
        `decode_context` cached tokens in total."""
        if not prefill and decode_batch <= 0:
            return 0.0
        tokens = sum(t for t, _ in prefill) + decode_batch
        return (self.hw.step_overhead_s + self.allreduce_s(tokens)
                + self.prefill_batch_s(prefill) + self.decode_s(decode_batch, decode_context))

    def transfer_bytes(self, tokens: int) -> int:
        return self.model.kv_bytes(tokens)

    def transfer_s(self, tokens: int) -> float:
        """KV transfer of one request's prompt: bytes / link + fixed latency + per-layer overhead."""
        return (self.hw.xfer_latency_s + self.model.layers * self.hw.xfer_per_layer_s
                + self.transfer_bytes(tokens) / self.hw.link_bw)

    def pool_load_s(self, tokens: int) -> float:
        """Loading `tokens` prompt tokens' KV from the shared CPU pool: fixed cost + bytes / pool bandwidth."""
        return self.hw.xfer_latency_s + self.transfer_bytes(tokens) / self.hw.pool_bw if tokens > 0 else 0.0

    def kv_capacity_tokens(self) -> int:
        """Tokens the KV cache holds: memory left after weights (per GPU, TP shards both)."""
        free = self.hw.mem_bytes * self.hw.mem_fraction * self.tp - self.model.weight_bytes
        return max(0, math.floor(free / self.model.kv_bytes_per_token()))
