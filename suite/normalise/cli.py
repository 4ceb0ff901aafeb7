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
    if source.startswith(("http://", "https://")):
        from suite.scrape import fetch_text

        try:
            return fetch_text(source, timeout)
        except OSError as e:
            _fail(f"cannot fetch {source}: {e}")
    path = Path(source)
    if not path.is_file():
        _fail(f"no such file: {source}")
    return path.read_text(errors="replace")


def register(app: typer.Typer) -> None:
    @app.command()
    def metrics(
        source: str = typer.Argument(..., help="A .prom/.txt exposition file or an http(s) /metrics URL."),
        framework: str = typer.Option("", help="vllm or sglang; detected from the metric names if empty."),
        role: str = typer.Option("", help="Role for series the page does not tag (prefill|decode|colocated)."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Print the normalised view of one /metrics page: totals, and count/sum/mean for histograms."""
        from suite.normalise import MetricsError, normalise_text

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
