"""`pdsuite ping` and `pdsuite load`: the load stage's commands (heavy imports stay inside the functions)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"pdsuite: error: {msg}", err=True)
    raise typer.Exit(code)


def ping(
    url: str = typer.Option("http://127.0.0.1:8000", help="OpenAI-compatible endpoint (base URL)."),
    model: str = typer.Option(..., help="Model name the endpoint serves."),
    input_tokens: int = typer.Option(128, min=1, help="Exact prompt length in tokens."),
    output_tokens: int = typer.Option(16, min=1, help="Exact output length (max_tokens + ignore_eos)."),
    n: int = typer.Option(1, "-n", min=1, help="Number of requests, sent one after another."),
    api: str = typer.Option("completions", help="completions (token-id prompt) or chat (text)."),
    tokenizer: str = typer.Option("words", help="text prompts: 'words' or 'hf:<local folder>'."),
    text: bool = typer.Option(False, help="completions: send text of the exact count instead of token ids "
                                          "(what sglang-router needs)."),
    seed: int = typer.Option(0, help="Seed of the random prompts."),
    timeout: float = typer.Option(60.0, min=0.1, help="Per-request timeout (s)."),
) -> None:
    """Send K streaming requests through the load client; print one JSON line each (ttft_ms, itl_ms, e2e_ms...)."""
    import time

    import numpy as np

    from suite.config import ConfigError
    from suite.load.client import Endpoint, request_body, stream_request
    from suite.load.prompts import PromptBuilder
    from suite.schema import Status

    if api not in ("completions", "chat"):
        _fail(f"--api must be completions or chat, not {api!r}")
    try:
        ep = Endpoint(url)
        builder = PromptBuilder(api, tokenizer, seed, 0, (100, 1000), text=text or api == "chat")
    except (ValueError, ConfigError) as e:
        _fail(str(e))
    t0 = time.monotonic_ns()
    failed = 0
    for i in range(n):
        prompt = builder.build(np.random.default_rng([seed, i]), input_tokens)
        body = request_body(api, model, prompt, output_tokens)
        now = (time.monotonic_ns() - t0) / 1e9
        out = stream_request(ep, api, body, request_id=f"ping-{i}", request_class="ping", input_tokens=input_tokens,
                             max_tokens=output_tokens, scheduled_s=now, t0_ns=t0, timeout_s=timeout)
        r = out.record
        if r.status is Status.ERROR and r.error and r.error.startswith("connection refused"):
            _fail(f"endpoint {url} is down: {r.error}", 1)
        typer.echo(json.dumps({
            "request": i, "status": r.status.value, "ttft_ms": ms(r.ttft_s), "itl_ms": [ms(x) for x in r.itl_s],
            "tpot_ms": ms(r.tpot_s), "e2e_ms": ms(r.e2e_s), "tokens": r.completion_tokens,
            "chunks": len(r.token_times_s), "prompt_tokens": r.prompt_tokens, "http_status": r.http_status,
            "error": r.error, "emulated": out.emulated,
            "clock": "kernel" if out.kernel_clock else "user"}))
        failed += r.status is not Status.OK
    ep.close()
    if failed:
        raise typer.Exit(1)


def load(
    spec: Path = typer.Option(..., exists=False, help="LoadSpec YAML/JSON file."),
    url: str = typer.Option("http://127.0.0.1:8000", help="OpenAI-compatible endpoint."),
    model: str = typer.Option(..., help="Model name the endpoint serves."),
    out: Path = typer.Option(Path("results/load"), help="Folder for requests.parquet and summary.json."),
    workers: int = typer.Option(2, min=1, help="Locust worker processes."),
    timeout: float = typer.Option(0.0, help="Hard limit for the whole run (s); 0 = derived from the spec."),
    deployment: str = typer.Option("", help="Catalog name of what serves URL (e.g. emu-sglang-disagg): picks the "
                                            "prompt form and resolves tokenizer: auto."),
) -> None:
    """Run one load point headless (Locust master + workers) and write requests.parquet."""
    from suite.load.resolve import resolve_spec
    from suite.load.run import run_load
    from suite.load.spec import load_spec

    s = resolve_spec(load_spec(spec), deployment or None)
    summary = run_load(url, model, s, out, workers=workers, timeout_s=timeout or None)
    typer.echo(summary.model_dump_json())
    if summary.failure:
        _fail(summary.failure, 1)


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


def register(app: typer.Typer) -> None:
    app.command()(ping)
    app.command()(load)
