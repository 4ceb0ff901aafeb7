"""NIXL/UCX transfer timing, the data path vLLM's NixlConnector uses (D reads P's KV blocks).

Runs only where `nixl` is importable (the vLLM image ships it; the CI box and bare GPU hosts usually do not).
Two agents in one process: D (initiator, buffers on GPU1) READs from P (target, GPU0), one descriptor per op of
each pattern, timed on the host (NIXL completion is polled from the CPU). Any failure is reported, not raised:
the NCCL numbers stand without it.
"""

from __future__ import annotations

import importlib.metadata
import time

from suite.kvprofile.analysis import gbps, op_sizes, timing_stats


def nixl_probe(torch, model, opts, device: str) -> dict:
    try:
        from nixl._api import nixl_agent, nixl_agent_config
    except ImportError as e:
        return {"available": False, "note": f"skipped: nixl not importable ({e.name or e})"}
    try:
        version = importlib.metadata.version("nixl")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    out = {"available": True, "version": version, "results": []}
    try:
        cfg = nixl_agent_config(backends=["UCX"])
        p_agent, d_agent = nixl_agent("P", cfg), nixl_agent("D", cfg)
        max_bytes = max(opts.tokens) * model.kv_bytes_per_token(opts.kv_dtype)
        dev_p, dev_d = ("cuda:0", "cuda:1") if device == "cuda" else ("cpu", "cpu")
        src = torch.full((max_bytes,), 7, dtype=torch.uint8, device=dev_p)
        dst = torch.zeros(max_bytes, dtype=torch.uint8, device=dev_d)
        p_agent.register_memory([src])
        d_agent.register_memory([dst])
        remote = d_agent.add_remote_agent(p_agent.get_agent_metadata())
        for pattern in opts.patterns:
            for tokens in opts.tokens:
                sizes = op_sizes(model, tokens, pattern, opts.block_tokens, opts.kv_dtype)
                row = {"pattern": pattern, "tokens": tokens, "bytes": sum(sizes), "ops": len(sizes)}
                if len(sizes) > opts.max_ops:
                    out["results"].append({**row, "skipped": f"{len(sizes)} descriptors > --max-ops"})
                    continue
                offs, o = [], 0
                for n in sizes:
                    offs.append(o)
                    o += n
                src_descs = p_agent.get_xfer_descs([src[a:a + n] for a, n in zip(offs, sizes, strict=True)])
                dst_descs = d_agent.get_xfer_descs([dst[a:a + n] for a, n in zip(offs, sizes, strict=True)])
                handle = d_agent.initialize_xfer("READ", dst_descs, src_descs, remote, b"kvprobe")
                samples = []
                for i in range(opts.warmup + opts.iters):
                    t0 = time.perf_counter()
                    state = d_agent.transfer(handle)
                    while state not in ("DONE", "ERR"):
                        state = d_agent.check_xfer_state(handle)
                    if state == "ERR":
                        raise RuntimeError(f"NIXL transfer error ({pattern}, {tokens} tokens)")
                    if i >= opts.warmup:
                        samples.append(time.perf_counter() - t0)
                d_agent.release_xfer_handle(handle)
                st = timing_stats(samples)
                out["results"].append({**row, **st, "gbps": gbps(row["bytes"], st["median_ms"])})
        out["note"] = f"nixl {version}, UCX backend, D READs from P, host-timed"
    except Exception as e:  # report, do not fail the probe: NCCL numbers stand on their own
        out["note"] = f"failed: {type(e).__name__}: {e}"
    return out
