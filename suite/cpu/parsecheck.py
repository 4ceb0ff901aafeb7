"""Proof that every engine and router command line is valid, with the engines' own parsers and the real routers.

Each line is rendered exactly as compose runs it (`shlex.split(expand(command(args), settings))`). Engine lines of
one framework are checked in ONE subprocess in that framework's venv (.venvs/<parser_venv>, built by
scripts/setup-engine-venvs.sh), which imports the engine once and runs the framework's `parser_source` on each.
The framework modules hold everything framework-specific (parser source, venv, env, argv adjustments).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from suite.config import Settings, expand
from suite.deploy.catalog import deployments
from suite.deploy.compose import command
from suite.deploy.model import Backend, Role
from suite.frameworks.base import Framework, get

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".venvs"
RUNNER = Path(__file__).with_name("parse_runner.py")
ENGINE_BACKENDS = (Backend.GPU, Backend.CPU)  # emu engines run `pdsuite emulate`, not the engine


@dataclass(frozen=True)
class Line:
    id: str  # "<deployment>/<engine>" or "<deployment>/router"
    framework: str
    argv: tuple[str, ...]


def render(args: list[str], settings: Settings) -> list[str]:
    """The argv a container gets: compose's command string, ${VAR}s resolved, split as compose splits it."""
    return shlex.split(expand(command(args), settings))


def engine_lines(settings: Settings | None = None) -> list[Line]:
    settings = settings or Settings()
    out = []
    for dep in deployments().values():
        if dep.backend not in ENGINE_BACKENDS:
            continue
        fw = get(dep.framework)
        # the KV pool server (disagg-kvpool) is no engine: its line is not an engine parser's to check
        out += [Line(f"{dep.name}/{e.name}", fw.name, tuple(render(fw.engine_args(dep, e), settings)))
                for e in dep.engines if e.role is not Role.KVPOOL]
    return out


def router_lines(settings: Settings | None = None) -> list[Line]:
    settings = settings or Settings()
    return [Line(f"{dep.name}/router", dep.framework, tuple(render(get(dep.framework).router_args(dep), settings)))
            for dep in deployments().values() if dep.router]


def strip_flags(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """Drop flags (and their value, if the next token is not a flag) the parsing build cannot know."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in flags:
            skip = "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(a)
    return out


REQUIRE_ENV = "PDSUITE_REQUIRE_ENGINE_VENVS"  # =1 (CI): a missing engine venv fails its tests instead of skipping


def venv_ready(name: str) -> bool:
    """True when .venvs/<name> was fully built (scripts/setup-engine-venvs.sh writes the stamp last)."""
    return (VENVS / name / ".pdsuite-stamp").exists()


def venv_python(fw: Framework) -> Path:
    py = VENVS / fw.parser_venv / "bin" / "python"
    if not py.exists():
        raise FileNotFoundError(f"{py} missing: run scripts/setup-engine-venvs.sh {fw.parser_venv}")
    return py


@dataclass
class ParseReport:
    version: str
    results: dict[str, dict]  # id -> {"ok": bool, "parsed": {...}} or {"ok": False, "error": str}


def parse_lines(framework: str, cases: Sequence[tuple[str, Sequence[str]]], local_model: str | Path,
                timeout: float = 300) -> ParseReport:
    """Check every (id, argv) with the framework's own parser, in one subprocess of its venv."""
    fw = get(framework)
    py = venv_python(fw)
    job = {"source": fw.parser_source,
           "cases": [{"id": cid, "argv": fw.parser_argv(strip_flags(argv, list(fw.parser_skip_flags)),
                                                        str(local_model))} for cid, argv in cases]}
    env = os.environ | fw.parser_env
    with tempfile.TemporaryDirectory(prefix="pdsuite-parse-") as tmp:
        out = Path(tmp) / "results.json"
        proc = subprocess.run([str(py), str(RUNNER), str(out)], input=json.dumps(job), text=True, env=env,
                              capture_output=True, timeout=timeout, cwd=tmp)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{framework} parser process failed (rc={proc.returncode}): {proc.stderr[-2000:]}")
        data = json.loads(out.read_text())
    return ParseReport(version=data["version"], results={r.pop("id"): r for r in data["results"]})


def router_executable(argv: Sequence[str]) -> list[str]:
    """Resolve a router command line's program in this environment (the routers live next to this Python)."""
    prog, *rest = argv
    if prog in ("python", "python3"):
        return [sys.executable, *rest]
    here = Path(sys.executable).parent / prog
    found = str(here) if here.exists() else shutil.which(prog)
    if not found:
        raise FileNotFoundError(f"{prog} not found: pip install -e '.[routers]'")
    return [found, *rest]
