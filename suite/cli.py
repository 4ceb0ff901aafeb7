"""`pdsuite` command line. Each command imports its stage lazily so `pdsuite --help` stays fast.

Errors a user can fix (bad settings, bad plan, bad input) are printed as one line with a non-zero exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

ROOT = Path(__file__).resolve().parent.parent


def fail(msg: str, code: int = 2) -> None:
    typer.echo(f"pdsuite: error: {msg}", err=True)
    raise typer.Exit(code)


@app.command()
def gen(check: bool = typer.Option(False, help="Only check the committed files are up to date.")) -> None:
    """Write docker-compose.yml, .env.example and docs/configuration.md from the catalog and settings."""
    from suite.config import configuration_md, env_example
    from suite.deploy.compose import render

    stale = []
    for path, text in ((ROOT / "docker-compose.yml", render()), (ROOT / ".env.example", env_example()),
                       (ROOT / "docs" / "configuration.md", configuration_md())):
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            typer.echo(f"wrote {path.relative_to(ROOT)}")
    if stale:
        fail(f"{', '.join(stale)} out of date: run `pdsuite gen`", 1)


@app.command()
def deployments(backend: str = typer.Option("", help="gpu, emu or cpu; empty = all")) -> None:
    """List deployments (compose profiles): engines, roles, GPUs, router."""
    from suite.deploy.catalog import deployments as catalog

    for name, d in catalog().items():
        if backend and d.backend.value != backend:
            continue
        engines = ", ".join(f"{e.name}({e.role.value}, tp{e.tp})" for e in d.engines)
        typer.echo(f"{name:28} {engines}{' + router' if d.router else ''}")


def _register_stage_commands() -> None:
    """Commands owned by the stage packages (one line each)."""
    import importlib

    for module in ("suite.doctor", "suite.cpu.cli", "suite.emulator.cli", "suite.load.cli", "suite.normalise.cli",
                   "suite.report.cli", "suite.runner.cli", "suite.kvprofile.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if not (module == e.name or module.startswith(f"{e.name}.")):  # a missing dependency, not a stage
                raise
            continue
        mod.register(app)


_register_stage_commands()


def main() -> None:
    from suite.config import ConfigError

    if len(sys.argv) < 2:  # no command: the help text
        app()
    try:
        code = app(standalone_mode=False)
    except ConfigError as e:
        typer.echo(f"pdsuite: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C outside a run
        sys.exit(130)
    except typer.TyperException as e:  # a bad option value or a missing argument: one line, like any input error
        if not hasattr(e, "format_message"):
            raise
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.info_name}: " if ctx is not None and ctx.info_name else ""
        typer.echo(f"pdsuite: error: {where}{e.format_message()}".replace("\n", " "), err=True)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
