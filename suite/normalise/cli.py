"""`pdsuite metrics`: the normalised view of one /metrics page (a file or a URL)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer


def _fail(msg: str) -> None:
    typer.echo(f"pdsuite: error: {msg}", err=True)
    raise typer.Exit(2)


def _clean(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def _fmt(v, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "s":
        return f"{v * 1e3:.3f} ms"
    if unit == "B":
        return f"{v / 1e6:.3f} MB"
    if unit == "B/s":
        return f"{v / 1e9:.3f} GB/s"
    return f"{v:g}"


def _unit(name: str) -> str:
    return "s" if name.endswith("_s") else "B/s" if name.endswith("_Bps") else "B" if name.endswith("_bytes") else ""


def read_source(source: str, timeout: float = 5.0) -> str:
    """The text of a /metrics page from a file or a URL, at most scrape.MAX_BYTES (real pages are < 1 MB)."""
    from suite.scrape import MAX_BYTES, ScrapeError, fetch_text

    if source.startswith(("http://", "https://")):
        try:
            return fetch_text(source, timeout)
        except ScrapeError as e:
            _fail(f"cannot fetch {source}: {e}")
    path = Path(source)
    if not path.is_file():
        _fail(f"no such file: {source}" if not path.exists() else f"{source}: not a file")
    try:
        with path.open("rb") as f:
            body = f.read(MAX_BYTES + 1)
    except OSError as e:
        _fail(f"cannot read {source}: {e.strerror}")
    if len(body) > MAX_BYTES:
        _fail(f"{source}: larger than {MAX_BYTES >> 20} MiB; not a /metrics page")
    return body.decode("utf-8", errors="replace")


def register(app: typer.Typer) -> None:
    @app.command()
    def metrics(
        source: str = typer.Argument(..., help="A .prom/.txt exposition file or an http(s) /metrics URL."),
        framework: str = typer.Option("", help="vllm or sglang; detected from the metric names if empty."),
        role: str = typer.Option("", help="Role for series the page does not tag (prefill|decode|colocated)."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Print the normalised view of one /metrics page: totals, and count/sum/mean for histograms."""
        from suite.deploy.model import Role
        from suite.frameworks.base import all_frameworks
        from suite.normalise import MetricsError, normalise_text

        roles = [r.value for r in Role]
        if role and role not in roles:
            _fail(f"--role {role!r}: one of {', '.join(roles)}")
        names = [f.name for f in all_frameworks()]
        if framework and framework not in names:
            _fail(f"--framework {framework!r}: one of {', '.join(names)}")
        text = read_source(source)
        try:
            snap = normalise_text(text, framework or None, role or None)
        except (MetricsError, ValueError) as e:
            _fail(f"{source}: {e}")
        if as_json:
            rows = [{k: _clean(v) for k, v in r.items()} for r in snap.rows()]
            typer.echo(json.dumps({"framework": snap.framework, "page": snap.page, "series": rows,
                                   "missing": snap.missing, "unknown": snap.unknown,
                                   "warnings": snap.warnings}, indent=1))
            return
        typer.echo(f"framework: {snap.framework}   page: {snap.page}")
        typer.echo(f"{'metric':30} {'role':10} {'kind':9} {'total / count':>14} {'sum':>14} {'mean':>14}")
        for s in snap.series.values():
            u = _unit(s.name)
            if s.kind == "histogram":
                typer.echo(f"{s.name:30} {s.role:10} {s.kind:9} {s.count:>14g} {_fmt(s.sum, u):>14} "
                           f"{_fmt(s.mean, u):>14}")
            else:
                typer.echo(f"{s.name:30} {s.role:10} {s.kind:9} {_fmt(s.value, u):>14}")
        if snap.missing:
            typer.echo(f"not on this page: {', '.join(snap.missing)}")
        if snap.unknown:
            typer.echo(f"unmapped {snap.framework} families ({len(snap.unknown)}): {', '.join(snap.unknown)}")
        for w in snap.warnings:
            typer.echo(f"warning: {w}", err=True)
