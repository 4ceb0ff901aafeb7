"""`pdsuite run PLAN`: validate the plan, then run it with a progress bar; `--resume` continues a run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import typer


def latest_run(out_root: Path, plan_name: str) -> Path | None:
    runs = sorted(p for p in (out_root / plan_name).glob("*") if (p / "manifest.json").is_file())
    return runs[-1] if runs else None


def register(app: typer.Typer) -> None:
    register_up_down(app)

    @app.command()
    def run(plan: str = typer.Argument(..., help="Plan file or bundled name (plans/*.yaml)"),
            backend: str = typer.Option("", help="gpu | emu | cpu: run the plan's deployments on this backend"),
            driver: str = typer.Option("compose", help="compose (Docker) | host (local processes, no Docker: "
                                       "engines from PATH or ENGINE_PREFIX)"),
            workers: int = typer.Option(2, min=1, max=64, help="Load-generator worker processes"),
            out: Path = typer.Option(Path("results"), help="Results root"),
            resume: str = typer.Option("", help="Results folder to continue, or 'latest'"),
            env_file: str = typer.Option(".env", help="Settings file"),
            validate_only: bool = typer.Option(False, "--validate", help="Only validate the plan"),
            only: list[str] = typer.Option([], "--deployment", help="Run only these of the plan's deployments "
                                           "(repeatable; names as in the plan or with the backend prefix)"),
            only_points: list[str] = typer.Option([], "--point", help="Run only these load points (repeatable; "
                                                  "their labels)")) -> None:
        """Run an experiment plan: every deployment up -> warm-up -> load points -> down."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from suite.config import load_settings
        from suite.plan import PlanError, apply_overrides, load_plan
        from suite.runner.drivers import DRIVERS
        from suite.runner.run import Interrupted, run_plan

        def fail(msg: str) -> None:
            typer.echo(f"pdsuite: error: {msg}", err=True)
            raise typer.Exit(2)

        if backend not in ("", "gpu", "emu", "cpu"):
            fail(f"unknown backend {backend!r}: gpu, emu or cpu")
        if driver not in DRIVERS:
            fail(f"unknown driver {driver!r}: {', '.join(DRIVERS)}")
        problem = _out_problem(out)  # before the plan is read: its warnings must not precede this error
        if problem:
            fail(f"--out {out}: {problem}")
        settings = load_settings(env_file)
        try:
            p = load_plan(plan, settings, backend or None)
            names = p.resolved_deployments(backend or None)
            gpu = [n for n in names if not n.startswith(("emu-", "cpu-"))]
            if gpu:
                p = load_plan(plan, settings, backend or None, gpus_present=_gpu_count())
            if only or only_points:  # after every reload: the restricted plan is the one that runs
                p = _only(p, only, only_points, backend or None)
            names = p.resolved_deployments(backend or None)
        except PlanError as e:
            fail(str(e))
        if driver != "compose" and any(n.startswith("cpu-") for n in names):
            fail("cpu-* deployments run in the vllm-cpu image: use --driver compose (or --backend gpu/emu)")
        resume_dir = None
        if resume:
            resume_dir = latest_run(out, p.name) if resume == "latest" else Path(resume)
            if resume_dir is None or not (resume_dir / "manifest.json").is_file():
                fail(f"nothing to resume: {resume}")
            problem = _resume_problem(resume_dir, p.name)
            if problem:
                fail(f"--resume {resume_dir}: {problem}")
        try:
            settings = apply_overrides(settings, p.settings)
        except PlanError as e:
            fail(str(e))
        if validate_only:
            typer.echo(f"plan {p.name}: {len(names)} deployments x {len(p.points)} points x {p.repetitions} reps: ok")
            return

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()) as bar:
            task = bar.add_task(p.name, total=len(names) * len(p.points) * p.repetitions)
            t0 = time.monotonic()

            def progress(msg: str, done: int, total: int) -> None:
                bar.update(task, description=f"{p.name} | {msg}", completed=done, total=total)
                if not bar.console.is_terminal:  # CI logs, `| tee`: rich draws nothing there, so one line each
                    typer.echo(f"[{done}/{total} points, {time.monotonic() - t0:.0f} s] {p.name} | {msg}")

            try:
                state = run_plan(p, settings, out, backend=backend or None, driver_kind=driver, workers=workers,
                                 resume=resume_dir, progress=progress)
            except KeyboardInterrupt as e:
                sig = str(e) if isinstance(e, Interrupted) else "SIGINT"
                typer.echo(f"pdsuite: interrupted by {sig}; completed points are kept - continue with "
                           f"--resume latest", err=True)
                raise typer.Exit(128 + getattr(signal, sig, signal.SIGINT)) from None
            except ValueError as e:  # a path that would leave --out (checked before anything starts)
                fail(str(e).splitlines()[0])
            except OSError as e:  # --out cannot be created or written at all
                fail(f"cannot write results under {out}: {e.strerror or e}")
        typer.echo(f"results: {state.out}")
        _print_headline(state.out)
        if state.fatal:
            typer.echo(f"pdsuite: error: {state.fatal}", err=True)
            raise typer.Exit(1)
        if state.failed:
            typer.echo(f"pdsuite: {len(state.failed)} point(s) failed, e.g. {state.failed[0]} "
                       f"(see point.json there)", err=True)
            raise typer.Exit(1)


def _out_problem(out: Path) -> str | None:
    """Why results cannot go under `out`, checked before anything starts."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is not a folder"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{parent} is not writable"
            return None
    return None


def _resume_problem(run_dir: Path, plan_name: str) -> str | None:
    try:
        data = json.loads((run_dir / "manifest.json").read_bytes()[:10_000_000])
    except (OSError, ValueError) as e:
        return f"manifest.json is unreadable ({type(e).__name__})"
    if not isinstance(data, dict):
        return "manifest.json is not a JSON object"
    if data.get("plan") != plan_name:
        return f"that run is of plan {data.get('plan')!r}, not {plan_name!r}"
    return None


def _print_headline(results: Path) -> None:
    """The report's headline on the console; never the reason a finished run fails."""
    from suite.report.headline import for_run

    try:
        typer.echo("\n".join(for_run(results)))
    except Exception as e:  # the run's data is complete: a report problem must not turn it into a failure
        typer.echo(f"pdsuite: warning: no headline ({type(e).__name__}: {e}); try `pdsuite report {results}`",
                   err=True)


def _only(p, only: list[str], only_points: list[str], backend: str | None):
    """The plan restricted to the named deployments (a plan's name or the resolved one) and point labels."""
    from suite.plan import PlanError, point_label

    resolved = p.resolved_deployments(backend)
    unknown = sorted(set(only) - set(p.deployments) - set(resolved))
    if unknown:
        raise PlanError(f"--deployment {unknown[0]!r} is not in plan {p.name} ({', '.join(p.deployments)})")
    labels = [point_label(x) for x in p.points]
    missing = sorted(set(only_points) - set(labels))
    if missing:
        raise PlanError(f"--point {missing[0]!r} is not a load point of plan {p.name} ({', '.join(labels)})")
    keep = [d for d, r in zip(p.deployments, resolved, strict=True) if not only or {d, r} & set(only)]
    points = [x for x, label in zip(p.points, labels, strict=True) if not only_points or label in only_points]
    return p.model_copy(update={"deployments": keep, "points": points})


def register_up_down(app: typer.Typer) -> None:
    @app.command()
    def up(deployment: str = typer.Argument(..., help="Deployment (`pdsuite deployments`)"),
           driver: str = typer.Option("host", help="host (local processes) | compose (Docker)"),
           timeout: float = typer.Option(1800, min=1, help="Seconds to wait until every service is healthy"),
           env_file: str = typer.Option(".env", help="Settings file"),
           dry_run: bool = typer.Option(False, "--dry-run", help="Print each service's command line, start nothing")):
        """Start one deployment and return when it is healthy (it keeps running; `pdsuite down` stops it)."""
        from suite.config import load_settings
        from suite.runner import hostenv
        from suite.runner.drivers import DRIVERS, DeployError, make_driver

        if driver not in DRIVERS:
            _fail(f"unknown driver {driver!r}: {', '.join(DRIVERS)}")
        settings = load_settings(env_file)
        try:
            d = make_driver(driver, deployment, settings, hostenv.state_dir(settings) / deployment / "logs")
        except ValueError as e:
            _fail(str(e))
        if dry_run:
            if not hasattr(d, "services_argv"):
                _fail("--dry-run shows the host driver's command lines; compose: `docker compose config`")
            for name, (argv, env, _role) in d.services_argv().items():
                gpus = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if "CUDA_VISIBLE_DEVICES" in env else ""
                typer.echo(f"{name}: {gpus}{' '.join(argv)}")
            return
        try:
            d.up(timeout)
        except DeployError as e:
            d.down()
            _fail(f"{deployment} did not start: {e}", 1)
        typer.echo(f"{deployment}: healthy at {d.endpoint} (logs: {d.log_dir}); stop with `pdsuite down "
                   f"{deployment} --driver {driver}`")

    @app.command()
    def down(deployment: str = typer.Argument("", help="Deployment; empty = every one this driver started"),
             driver: str = typer.Option("host", help="host | compose"),
             env_file: str = typer.Option(".env", help="Settings file")):
        """Stop deployments: host: the process groups named in the state files; compose: `docker compose down`."""
        import subprocess

        from suite.config import load_settings
        from suite.runner import hostenv

        settings = load_settings(env_file)
        if driver == "compose":
            from suite.runner.drivers import ROOT

            profile = deployment or "*"
            subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", profile,
                            "down", "--remove-orphans", "--timeout", "30"], check=False)
            return
        done = hostenv.down_stale(settings, deployment or None)
        typer.echo(f"stopped: {', '.join(done)}" if done else "nothing running (host driver)")


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"pdsuite: error: {msg}", err=True)
    raise typer.Exit(code)


def _gpu_count() -> int:
    from suite.doctor import Probe, parse_gpus

    rc, out = Probe().run("nvidia-smi", "--query-gpu=index,name,memory.total,memory.used",
                          "--format=csv,noheader,nounits")
    return len(parse_gpus(out)) if rc == 0 else 0
