"""`python -m suite.kvprofile [options]`: the probe with only torch + stdlib needed (for `make kvprobe` inside the
vLLM image, which need not have the suite's own dependencies). Same options as `pdsuite kvprobe`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from suite.kvprofile.probe import ProbeError, ProbeOptions, parse_env, render, run_probe
from suite.kvprofile.sizing import KV_DTYPES, parse_tokens

D = ProbeOptions()


def _tokens(text: str) -> tuple[int, ...]:
    try:
        return parse_tokens(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m suite.kvprofile", description="KV-transfer link probe.")
    ap.add_argument("--model", default=D.model)
    ap.add_argument("--kv-dtype", default=D.kv_dtype, choices=KV_DTYPES)
    ap.add_argument("--tokens", type=_tokens, default=D.tokens)
    ap.add_argument("--patterns", default=",".join(D.patterns))
    ap.add_argument("--block-tokens", type=int, default=D.block_tokens)
    ap.add_argument("--max-ops", type=int, default=D.max_ops)
    ap.add_argument("--iters", type=int, default=D.iters)
    ap.add_argument("--warmup", type=int, default=D.warmup)
    ap.add_argument("--copy-mb", type=_tokens, default=D.copy_mib)
    ap.add_argument("--device", default=D.device, choices=("auto", "cuda", "cpu"))
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--prefill-tokens", type=_tokens, default=D.prefill_tokens)
    ap.add_argument("--no-nixl", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--timeout", type=float, default=D.timeout_s)
    ap.add_argument("--nccl-env", action="append", default=[], metavar="NAME=VALUE",
                    help="NCCL_*/TORCH_NCCL_* variable for the workers (repeatable); recorded in the JSON")
    ap.add_argument("--stream-repeats", type=int, default=D.stream_repeats,
                    help="also K coalesced sends back to back per point (0 = off)")
    ap.add_argument("--copy-methods", default=",".join(D.copy_methods),
                    help="copy baselines: copy_,memcpy_peer_push,memcpy_peer_pull (the fastest is the peak)")
    a = ap.parse_args(argv)
    try:
        r = run_probe(ProbeOptions(model=a.model, kv_dtype=a.kv_dtype, tokens=a.tokens,
                                   patterns=tuple(p for p in a.patterns.split(",") if p), block_tokens=a.block_tokens,
                                   max_ops=a.max_ops, iters=a.iters, warmup=a.warmup, copy_mib=a.copy_mb,
                                   device=a.device, prefill=a.prefill, prefill_tokens=a.prefill_tokens,
                                   nixl=not a.no_nixl, timeout_s=a.timeout, nccl_env=parse_env(a.nccl_env),
                                   stream_repeats=a.stream_repeats,
                                   copy_methods=tuple(m for m in a.copy_methods.split(",") if m)))
    except ProbeError as e:
        print(f"pdsuite: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(r, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text if a.json else render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
