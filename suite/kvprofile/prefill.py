"""Pure prefill time of a dense (MHA/GQA) model shaped from config.json, with random weights (needs torch).

Eager PyTorch: fused QKV and gate/up matmuls, RMSNorm, RoPE, causal SDPA with GQA, SwiGLU, LM head on the last
token only (as serving engines do). Batch 1, no CUDA graphs: an upper bound for an engine's pure prefill; it
calibrates the emulator's cost model and the crossover analysis.
"""

from __future__ import annotations

import time

from suite.kvprofile.analysis import timing_stats
from suite.modelcfg import ModelSize


def time_prefill(torch, m: ModelSize, tokens: tuple[int, ...], device: str, iters: int = 5, warmup: int = 2) -> dict:
    moe = m.params_total - m.params_active > m.vocab * m.hidden * 1.001  # dense: they differ by the embedding
    if m.mla_latent_dim is not None or moe or not m.intermediate:
        raise ValueError(f"{m.name}: prefill timing supports dense MHA/GQA models only")
    import torch.nn.functional as F

    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    H, KV, D, E, I = m.heads, m.kv_heads, m.head_dim, m.hidden, m.intermediate  # noqa: E741

    def w(*shape):
        return torch.empty(*shape, device=dev, dtype=dtype).normal_(0, 0.02)

    layers = [{"qkv": w(E, (H + 2 * KV) * D), "o": w(H * D, E), "gu": w(E, 2 * I), "d": w(I, E),
               "n1": torch.ones(E, device=dev, dtype=dtype), "n2": torch.ones(E, device=dev, dtype=dtype)}
              for _ in range(m.layers)]
    embed, head = w(m.vocab, E), w(E, m.vocab)

    def rms(x, g):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype) * g

    def rope(x, cos, sin):  # x: (T, heads, D)
        a, b = x[..., : D // 2], x[..., D // 2:]
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)

    def forward(ids):
        T = ids.shape[0]
        pos = torch.arange(T, device=dev, dtype=torch.float32)
        freq = 1.0 / (500000.0 ** (torch.arange(0, D // 2, device=dev, dtype=torch.float32) / (D // 2)))
        ang = torch.outer(pos, freq)
        cos, sin = ang.cos().to(dtype)[:, None, :], ang.sin().to(dtype)[:, None, :]
        h = embed[ids]
        for ly in layers:
            qkv = rms(h, ly["n1"]) @ ly["qkv"]
            q, k, v = qkv.split((H * D, KV * D, KV * D), dim=-1)
            q, k = rope(q.view(T, H, D), cos, sin), rope(k.view(T, KV, D), cos, sin)
            a = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                               v.view(T, KV, D).transpose(0, 1)[None], is_causal=True,
                                               enable_gqa=KV != H)
            h = h + a[0].transpose(0, 1).reshape(T, H * D) @ ly["o"]
            g, u = (rms(h, ly["n2"]) @ ly["gu"]).chunk(2, dim=-1)
            h = h + (F.silu(g) * u) @ ly["d"]
        return rms(h[-1:], layers[-1]["n2"]) @ head

    points = []
    with torch.inference_mode():
        for t in tokens:
            ids = torch.randint(0, m.vocab, (t,), device=dev)
            samples = []
            for i in range(warmup + iters):
                if device == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    forward(ids)
                    end.record()
                    end.synchronize()
                    s = start.elapsed_time(end) / 1e3
                else:
                    t0 = time.perf_counter()
                    forward(ids)
                    s = time.perf_counter() - t0
                if i >= warmup:
                    samples.append(s)
            st = timing_stats(samples)
            flops = m.prefill_flops(t)
            points.append({"tokens": t, **st, "flops": flops, "tflops": flops / (st["median_ms"] / 1e3) / 1e12})
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return {"model": m.name, "device": gpu, "dtype": str(dtype).removeprefix("torch."), "batch": 1,
            "method": "eager torch, random weights, fused QKV/gate-up, SDPA causal, LM head on last token",
            "points": points}
