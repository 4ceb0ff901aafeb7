"""`pdsuite report`: results trees (and `vllm bench serve` JSON) -> reports/<name>/."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer


def _fail(msg: str) -> None:
    typer.echo(f"pdsuite: error: {msg}", err=True)
    raise typer.Exit(2)


def parse_slo(items: list[str]) -> dict[str, dict]:
    """CLASS:TTFT_MS:TPOT_MS, e.g. long_prefill:2000:100."""
    out = {}
    for it in items:
        parts = it.split(":")
        try:
            cls, ttft, tpot = parts
            slo = {"ttft_s": float(ttft) / 1e3, "tpot_s": float(tpot) / 1e3}
        except ValueError:
            _fail(f"--slo {it!r}: expected CLASS:TTFT_MS:TPOT_MS")
        if not cls or not all(math.isfinite(v) and v > 0 for v in slo.values()):
            _fail(f"--slo {it!r}: the class must be named and both limits finite and > 0 ms")
        out[cls] = slo
    return out


def _check_slos(slos: dict, where: str) -> dict[str, dict]:
    """SLOs read from a plan or workload: finite and > 0 seconds, else one line naming them."""
    for cls, slo in slos.items():
        vals = [slo.get(k) for k in ("ttft_s", "tpot_s")] if isinstance(slo, dict) else [None]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                   for v in vals):
            _fail(f"{where}: SLO of class {cls!r} is {slo!r}; ttft_s and tpot_s must be finite numbers > 0")
    return slos


def plan_slos(ds) -> dict[str, dict]:
    """SLOs the plan or the workload classes declare (`slo: {ttft_s, tpot_s}` per class), if any."""
    out: dict[str, dict] = {}
    for classes in ds.points.get("classes", []):
        for cls, spec in (json.loads(classes) if isinstance(classes, str) else {}).items():
            if isinstance(spec, dict) and isinstance(spec.get("slo"), dict):
                out.setdefault(cls, spec["slo"])
    for m in ds.manifests:
        for cls, slo in ((m.get("plan_spec") or {}).get("slos") or {}).items():
            out.setdefault(cls, slo)
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        inputs: list[str] = typer.Argument(..., help="results/<plan>/<stamp> dirs and/or vllm bench serve JSON."),
        name: str = typer.Option(..., "--name", help="Report name: written to <out>/<name>/."),
        out: str = typer.Option("reports", "--out", help="Parent folder of the report."),
        slo: list[str] = typer.Option([], "--slo", help="Per-class SLO CLASS:TTFT_MS:TPOT_MS (repeatable)."),
        bootstrap: int = typer.Option(1000, min=10, max=1_000_000, help="Bootstrap replicates for CIs."),
    ) -> None:
        """Build index.html (self-contained), report.md and CSVs comparing deployments."""
        from suite.report.load import ReportInputError, load
        from suite.report.render import write
        from suite.report.tables import build
        from suite.stats import DEFAULT_SLO

        if not name or "/" in name or name.startswith("."):
            _fail(f"--name {name!r}: use a plain folder name")
        try:
            ds = load(inputs)
        except ReportInputError as e:
            _fail(str(e))
        slos = _check_slos(plan_slos(ds), "results") | parse_slo(slo)
        for cls in ds.requests["cls"].cat.categories if len(ds.requests) else []:
            slos.setdefault(str(cls), DEFAULT_SLO)
        for parent in (Path(out), *Path(out).parents):  # checked before minutes of statistics
            if parent.exists():
                if not parent.is_dir():
                    _fail(f"--out {out}: {parent} is not a folder")
                break
        try:
            path = write(ds, build(ds, slos, bootstrap), name, out)
        except OSError as e:
            _fail(f"cannot write the report under {out}: {e.strerror or e} ({e.filename or out})")
        for level, msg in ds.messages:
            if level != "info":
                typer.echo(f"pdsuite: {level}: {msg}", err=True)
        if ds.emulated:
            typer.echo("pdsuite: warning: EMULATED inputs" + (" MIXED with real runs" if ds.mixed else ""), err=True)
        typer.echo(f"wrote {Path(path) / 'index.html'} ({len(ds.requests)} requests, {len(ds.points)} repetitions)")
