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


def check_cmdlines(
    framework: str = typer.Option("", help="vllm or sglang; empty = both."),
    env_file: Path = typer.Option(Path(".env"), help="Settings file (the environment overrides it)."),
) -> None:
    """Parse every GPU/CPU engine command line, rendered with YOUR settings (e.g. *_EXTRA_ARGS), with the engines'
    own parsers (.venvs from scripts/setup-engine-venvs.sh). One line per command line; exit 1 if any fails."""
    import tempfile
    from collections import defaultdict

    from suite.config import load_settings
    from suite.cpu.parsecheck import engine_lines, parse_lines
    from suite.cpu.tinymodel import build

    settings = load_settings(env_file)
    by_fw: dict[str, list] = defaultdict(list)
    for line in engine_lines(settings):
        if not framework or line.framework == framework:
            by_fw[line.framework].append(line)
    if not by_fw:
        typer.echo(f"pdsuite: error: no engine command lines for framework {framework!r}", err=True)
        raise typer.Exit(2)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="pdsuite-tiny-") as tmp:
        model = build(tmp)
        for fw, lines in by_fw.items():
            try:
                report = parse_lines(fw, [(ln.id, ln.argv) for ln in lines], model)
            except (FileNotFoundError, RuntimeError) as e:
                typer.echo(f"pdsuite: error: {e}", err=True)
                raise typer.Exit(2) from None
            for ln in lines:
                res = report.results[ln.id]
                failed += not res["ok"]
                verdict = "ok" if res["ok"] else "FAIL " + res["error"].splitlines()[0]
                typer.echo(f"{fw} {report.version:8} {ln.id:32} {verdict}")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("tiny-model")(tiny_model)
    app.command("check-cmdlines")(check_cmdlines)
