"""`pdsuite tiny-model`: the CPU backend's commands (heavy imports stay inside the functions)."""

from __future__ import annotations

from pathlib import Path

import typer


def tiny_model(
    out_dir: Path = typer.Argument(..., help="Folder to write (created; files inside are overwritten)."),
    random_weights: bool = typer.Option(False, help="Write deterministic random safetensors (correctness tests); "
                                                    "without it serve with --load-format dummy."),
    seed: int = typer.Option(0, min=0, help="Seed of the random weights."),
) -> None:
    """Build the tiny Llama (config, BPE tokenizer, chat template) that real vLLM serves on CPU."""
    from suite.cpu.tinymodel import build

    try:
        out = build(out_dir, random_weights=random_weights, seed=seed)
    except (ValueError, OSError) as e:
        typer.echo(f"pdsuite: error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    app.command("tiny-model")(tiny_model)
