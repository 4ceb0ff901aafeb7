"""`pdsuite kv-size` and `pdsuite kvprobe`. Heavy imports (torch) happen inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def _fail(msg: str) -> None:
    typer.echo(f"pdsuite: error: {msg}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command("kv-size")
    def kv_size_cmd(
        model: str = typer.Argument(..., help="config.json, a model folder holding one, or a bundled name "
                                              "(llama-3.1-8b, llama-3.1-70b, deepseek-v3, tiny-llama)."),
        kv_dtype: str = typer.Option("auto", help="KV-cache dtype: auto (= model dtype), bf16, fp16, fp8."),
        tokens: str = typer.Option("128,512,2048,8192,32768", help="Prompt lengths, comma-separated (2k = 2048)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """KV-cache bytes per token and per request for a model (MHA, GQA, MLA; bf16/fp16/fp8 cache)."""
        from suite.kvprofile.fmt import table
        from suite.kvprofile.sizing import KV_DTYPES, kv_size, parse_tokens
        from suite.modelcfg import ModelConfigError, load

        if kv_dtype not in KV_DTYPES:
            _fail(f"--kv-dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
        try:
            counts = parse_tokens(tokens)
            size = kv_size(load(model), kv_dtype, counts)
        except (ModelConfigError, ValueError) as e:
            _fail(str(e))
        if as_json:
            typer.echo(json.dumps(size.to_dict(), indent=2))
            return
        shape = (f"latent {size.mla_latent_dim}" if size.mla_latent_dim else
                 f"{size.kv_heads} KV heads x {size.head_dim}")
        typer.echo(f"{size.model}: {size.attention}, {size.layers} layers, {shape}, KV dtype {size.kv_dtype} "
                   f"({size.dtype_bytes} B) -> {size.bytes_per_token:,} B/token")
        typer.echo(table(["tokens", "bytes", "MiB"],
                         [[f"{r['tokens']:,}", f"{r['bytes']:,}", f"{r['mib']:,.1f}"] for r in size.rows]))

    @app.command("kvprobe")
    def kvprobe_cmd(
        model: str = typer.Option("llama-3.1-8b", help="Model whose KV is sent (bundled name or config.json)."),
        kv_dtype: str = typer.Option("auto", help="KV-cache dtype: auto, bf16, fp16, fp8."),
        tokens: str = typer.Option("128,256,512,1k,2k,4k,8k,16k,32k", help="Prompt lengths to transfer."),
        patterns: str = typer.Option("coalesced,per_layer,per_block", help="Transfer patterns to run."),
        block_tokens: int = typer.Option(16, min=1, help="Tokens per KV block (per_block pattern)."),
        max_ops: int = typer.Option(4096, min=1, help="Skip a pattern point needing more P2P ops than this."),
        iters: int = typer.Option(30, min=2, help="Timed iterations per point."),
        warmup: int = typer.Option(5, min=0, help="Untimed iterations per point."),
        copy_mb: str = typer.Option("64,256,1024", help="Sizes (MiB) for the GPU-to-GPU copy baseline."),
        device: str = typer.Option("auto", help="auto (cuda if 2 GPUs, else cpu), cuda or cpu."),
        prefill: bool = typer.Option(False, help="Also time pure prefill of the model (GPU; dense models)."),
        prefill_tokens: str = typer.Option("128,256,512,1k,2k,4k,8k,16k,32k", help="Prompt lengths for --prefill."),
        nixl: bool = typer.Option(True, help="Also time NIXL transfers when the nixl package is importable."),
        out: Path | None = typer.Option(None, help="Write the JSON result here."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
        timeout: float = typer.Option(900.0, help="Give up (and stop the workers) after this many seconds."),
        nccl_env: list[str] = typer.Option([], "--nccl-env", metavar="NAME=VALUE",
                                           help="NCCL_*/TORCH_NCCL_* variable for the workers (repeatable)."),
        stream_repeats: int = typer.Option(0, min=0, help="Also K coalesced sends back to back per point (0 = off)."),
        copy_methods: str = typer.Option("copy_", help="Copy baselines: copy_,memcpy_peer_push,memcpy_peer_pull."),
    ) -> None:
        """Measure the KV-transfer link between two GPUs (or two CPU processes with gloo)."""
        from suite.kvprofile.probe import ProbeError, ProbeOptions, parse_env, render, run_probe
        from suite.kvprofile.sizing import KV_DTYPES, parse_tokens

        if kv_dtype not in KV_DTYPES:
            _fail(f"--kv-dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
        try:
            opts = ProbeOptions(model=model, kv_dtype=kv_dtype, tokens=parse_tokens(tokens),
                                patterns=tuple(p.strip() for p in patterns.split(",") if p.strip()),
                                block_tokens=block_tokens, max_ops=max_ops, iters=iters, warmup=warmup,
                                copy_mib=parse_tokens(copy_mb), device=device, prefill=prefill,
                                prefill_tokens=parse_tokens(prefill_tokens), nixl=nixl, timeout_s=timeout,
                                nccl_env=parse_env(nccl_env), stream_repeats=stream_repeats,
                                copy_methods=tuple(m.strip() for m in copy_methods.split(",") if m.strip()))
            result = run_probe(opts)
        except (ProbeError, ValueError) as e:
            _fail(str(e))
        text = json.dumps(result, indent=2)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
        typer.echo(text if as_json else render(result))
        if out and not as_json:
            print(f"wrote {out}", file=sys.stderr)
