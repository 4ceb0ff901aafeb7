"""Execute a plan: for each deployment up -> warm-up -> points (scrape, load, scrape) -> logs -> down.

Guarantees:
- a point's folder appears only when the point is finished (written as `<rep>.partial`, then renamed), so a
  crash or Ctrl-C never leaves a half point that looks complete; `--resume` skips finished points;
- a dead engine or router fails the point with its last log lines, the deployment's remaining points are
  recorded as failed, and the plan continues or stops per `on_failure`; `down` always runs;
- time outside load generation is measured per phase (manifest.json `timings`; definitions in
  suite/runner/timing.py) so the overhead budget can be checked; the report shows it;
- SIGTERM and SIGHUP end a run like Ctrl-C: the running point is dropped (it re-runs on resume), the deployment is
  taken down, and the manifest says `interrupted` with the signal (never left `running`);
- a point whose endpoint stops answering /health, or whose results disk stops taking writes, for
  `liveness_timeout_s` fails then (not after `point_timeout_s`), and the deployment's remaining points are
  skipped with that reason (suite/runner/liveness.py);
- nothing is written outside the run's folder: plan, deployment and point names are checked folder names and
  every derived path is checked to stay inside it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from suite import __version__
from suite.config import Settings
from suite.deploy.catalog import get as get_deployment
from suite.plan import Plan
from suite.runner.drivers import ComposeDriver, DeployError, Driver, ProcessDriver, make_driver
from suite.runner.liveness import Watchdog, busy_ports
from suite.runner.timing import Timings, load_window, split_call
from suite.schema import PointResult, RunManifest, Workload

LOG_TAIL = 40


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, data: dict) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


@dataclass
class RunState:
    out: Path
    done: int = 0
    failed: list[str] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    fatal: str | None = None  # why the plan stopped early (e.g. the results volume is full)
    telemetry: object = None  # the deployment's RunTelemetry (suite/telemetry): spans and GPU samples per point
    interrupted: str | None = None  # the signal that ended the run (SIGINT, SIGTERM, SIGHUP)
    leftovers: list[str] = field(default_factory=list)  # deployments a dead runner left, found and stopped
    current: str | None = None  # the point running now (named in the manifest when a signal ends the run)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C (every `finally` takes its part down)."""


class _Signals:
    """While a plan runs, SIGTERM and SIGHUP raise Interrupted in the main thread, like SIGINT raises
    KeyboardInterrupt. Only the first signal does: one that arrives during the clean-up it started is noted and
    otherwise ignored, so `down` is not cut short (that would leave the deployment running)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, state: RunState) -> None:
        self.state, self.old = state, {}

    def _handle(self, signum, _frame) -> None:
        if self.state.interrupted:
            return
        self.state.interrupted = signal.Signals(signum).name
        raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(self.state.interrupted)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def quiet(self) -> None:
        """From here on (the final bookkeeping) every signal is ignored."""
        if self.old:
            for s in self.SIGNALS:
                signal.signal(s, signal.SIG_IGN)

    def __exit__(self, *exc) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _secrets_out_of_environ():
    """While a plan runs, the runner's own environment holds no secret: every child it starts (Locust, emulated
    engines, routers) inherits that environment, and only services whose definition names a secret (real engines:
    HF_TOKEN) get it, from the settings. The caller's environment is restored afterwards."""
    from suite.config import SECRET_SETTINGS

    saved = {k: os.environ.pop(k) for k in SECRET_SETTINGS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def inside(root: Path, *parts: str) -> Path:
    """root/parts..., refused when it would resolve outside root (a label like ../x or /x)."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()) or any(p in ("", ".", "..") or "/" in p for p in parts):
        raise ValueError(f"{'/'.join(parts)!r} would be written outside {root}")
    return path


def run_plan(plan: Plan, settings: Settings, out_root: Path, *, backend: str | None = None,
             driver_kind: str = "compose", workers: int = 2, resume: Path | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> RunState:
    """Run every point of every deployment; returns where results went and what failed."""
    from suite.scrape import snapshot

    t_plan = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    names = plan.resolved_deployments(backend)
    points = plan.point_specs()
    out = resume or inside(out_root, plan.name, stamp)
    for name in names:  # checked before anything is written
        for label, _ in points:
            inside(out, name, label)
    out.mkdir(parents=True, exist_ok=True)
    state = RunState(out=out)
    manifest = RunManifest(plan=plan.name, stamp=out.name, suite_version=__version__, settings=settings.public(),
                           emulated=any(get_deployment(n).emulated for n in names))
    if not (out / "manifest.json").is_file():
        write_json(out / "manifest.json", manifest.model_dump() | {"plan_spec": plan.public_dump(),
                                                                   "status": "running"})
    write_json(out / "plan.json", plan.public_dump())

    total = len(names) * len(points) * plan.repetitions
    with _Signals(state) as signals, _secrets_out_of_environ():
        try:
            if driver_kind in ("host", "process"):  # what a runner that died left running holds our ports
                from suite.runner.stale import take_down_host_leftovers

                state.leftovers = take_down_host_leftovers(settings)
                for line in state.leftovers:
                    progress and progress(f"leftover {line}", state.done, total)
            for name in names:
                todo = [(label, spec, rep) for label, spec in points for rep in range(plan.repetitions)
                        if not (out / name / label / f"rep{rep}").is_dir()]
                state.done += len(points) * plan.repetitions - len(todo)
                if not todo:
                    continue
                stop = _run_deployment(plan, settings, name, todo, out, driver_kind, workers, state, snapshot,
                                       lambda msg: progress and progress(msg, state.done, total))
                if stop:
                    break
        except OSError as e:
            for partial in out.rglob("*.partial"):  # the unfinished point: free its space, it re-runs on resume
                shutil.rmtree(partial, ignore_errors=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                state.fatal = (f"results volume full at {out} ({e.strerror}); finished points are kept: free space "
                               f"and continue with --resume {out}")
            elif e.filename and Path(str(e.filename)).resolve().is_relative_to(out.resolve()):
                # unwritable, read-only, I/O error: the same promise, one line with the path
                state.fatal = (f"cannot write results at {e.filename} ({e.strerror or e}); finished points are "
                               f"kept: fix it and continue with --resume {out}")
            else:
                state.fatal = (f"{type(e).__name__}: {e}".splitlines()[0] +
                               f"; finished points are kept: continue with --resume {out}")
        except KeyboardInterrupt:
            # the cut point re-runs on resume; its folder goes now that every process that wrote into it is down
            for partial in out.rglob("*.partial"):
                shutil.rmtree(partial, ignore_errors=True)
            state.interrupted = state.interrupted or "SIGINT"
            state.fatal = (f"interrupted by {state.interrupted}" + (f" during {state.current}" if state.current
                                                                    else "") +
                           f"; finished points are kept: continue with --resume {out}")
            raise
        finally:
            signals.quiet()
            _finish_manifest(out, state, total, time.monotonic() - t_plan)
    return state


def _finish_manifest(out: Path, state: RunState, total: int, wall_s: float) -> None:
    state.timings.wall_s = wall_s
    ok = state.done - len(state.failed)
    status = "complete" if ok == total else ("partial" if ok else "failed")
    if state.interrupted:
        status = "interrupted"
    try:
        data = json.loads((out / "manifest.json").read_text())
        prev = data.get("timings", {})
        # a resumed run adds to what earlier attempts measured
        t = (Timings.merged(prev, state.timings) if prev else state.timings).as_dict()
        write_json(out / "manifest.json", data | {"status": status, "ended_at": now(), "timings": t,
                                                  "failed_points": state.failed, "fatal": state.fatal,
                                                  "interrupted": state.interrupted,
                                                  "leftovers": data.get("leftovers", []) + state.leftovers})
    except (OSError, ValueError):  # a full or broken volume: the previous manifest stays; state.fatal tells why
        (out / "manifest.json.tmp").unlink(missing_ok=True)


def _run_deployment(plan: Plan, settings: Settings, name: str, todo: list, out: Path, driver_kind: str,
                    workers: int, state: RunState, snapshot, progress) -> bool:
    """Returns True when the plan must stop."""
    dep_dir = out / name
    dep_dir.mkdir(parents=True, exist_ok=True)
    from suite.config import ConfigError
    from suite.load.cluster import ClusterError, LoadCluster
    from suite.load.resolve import resolve_spec
    from suite.load.spec import LoadSpec
    from suite.telemetry import RunTelemetry

    state.telemetry = RunTelemetry(get_deployment(name), settings, dep_dir)
    driver = make_driver(driver_kind, name, state.telemetry.engine_settings(), dep_dir / "logs")
    tm = state.timings
    t0 = time.monotonic()
    # One Locust master + workers for the warm-up and every point, kept for the plan's next deployment. When none
    # is parked yet, its processes start while the deployment loads; only the wait after `up` is overhead.
    cluster = LoadCluster(driver.endpoint, settings.MODEL, workers, log_dir=dep_dir / "logs", keep=True)
    try:
        with cluster:
            progress(f"{name}: starting")
            try:
                for _label, spec, _rep in todo:  # prompt form and tokenizer fit the deployment, or fail before up
                    resolve_spec(LoadSpec(**spec), name, settings)
            except (ConfigError, ValueError) as e:
                why = f"load spec does not fit {name}: {str(e).splitlines()[0]}"
                for label, _spec, rep in todo:
                    _write_failed(plan, settings, name, label, rep, out, why, {})
                    state.failed.append(f"{name}/{label}/rep{rep}")
                    state.done += 1
                return plan.on_failure == "stop"
            driver.down()  # a leftover stack from a crashed run would hold the ports
            local = isinstance(driver, ComposeDriver | ProcessDriver)  # drivers whose services bind these ports
            busy = busy_ports(settings.BIND_ADDRESS, [s.port for s in driver.services]) if local else []
            if busy:  # someone else's process: say so, instead of failing every point with a wrong cause
                from suite.runner.stale import port_owner

                owner = port_owner(settings, busy)
                why = (f"deployment did not start: port {busy[0]} on {settings.BIND_ADDRESS} is already in use: "
                       + (owner or "by a process this run did not start (stop it, or set other ports in .env)"))
                for label, _spec, rep in todo:
                    _write_failed(plan, settings, name, label, rep, out, why, {})
                    state.failed.append(f"{name}/{label}/rep{rep}")
                    state.done += 1
                return plan.on_failure == "stop"
            tm.cleanup_s += time.monotonic() - t0
            t_up = time.monotonic()
            if not cluster.procs:  # no cluster parked yet: its processes start while the deployment loads
                cluster.spawn()
            try:
                driver.up(plan.up_timeout_s)
            except DeployError as e:
                for label, _spec, rep in todo:
                    _write_failed(plan, settings, name, label, rep, out, f"deployment did not start: {e}", {})
                    state.failed.append(f"{name}/{label}/rep{rep}")
                    state.done += 1
                return plan.on_failure == "stop"
            finally:
                tm.up_s += time.monotonic() - t_up
            driver.versions = driver.engine_versions()  # what actually runs, asked of the engines
            t_ready = time.monotonic()
            if cluster.procs:  # what Locust's start takes beyond the deployment's start is overhead
                try:
                    cluster.wait_ready()
                except ClusterError:
                    cluster.close()  # the first load starts it again and fails that point with the reason
            tm.cluster_start_s += time.monotonic() - t_ready

            t1 = time.monotonic()
            if plan.warmup_requests:
                progress(f"{name}: warm-up")
                _warmup(plan, settings, driver, todo[0][1], dep_dir, workers)
            tm.warmup_s += time.monotonic() - t1

            broken = None
            for label, spec, rep in todo:
                progress(f"{name}: {label} rep{rep}")
                if broken:
                    _write_failed(plan, settings, name, label, rep, out, broken, {})
                    state.failed.append(f"{name}/{label}/rep{rep}")
                    state.done += 1
                    continue
                state.current = f"{name}/{label}/rep{rep}"
                watchdog = Watchdog(driver.endpoint + "/health", out / name, plan.liveness_timeout_s,
                                    lambda why: _abort_load(driver.endpoint, settings.MODEL, workers, why))
                with watchdog:
                    ok, failure = _run_point(plan, settings, driver, name, label, spec, rep, out, workers, state,
                                             snapshot, watchdog)
                state.current = None
                state.done += 1
                if not ok:
                    state.failed.append(f"{name}/{label}/rep{rep}")
                    if driver.dead() or watchdog.tripped:
                        broken = f"skipped: the deployment broke at {label} rep{rep} ({failure})"
                    if plan.on_failure == "stop":
                        return True
        return False
    finally:
        t2 = time.monotonic()
        _save_logs(driver, dep_dir / "logs")
        driver.down()
        state.telemetry.close()
        tm.down_s += time.monotonic() - t2


def _point_result(plan: Plan, settings: Settings, name: str, label: str, rep: int, spec: dict,
                  driver: Driver | None) -> PointResult:
    from suite.load.spec import LoadSpec
    from suite.plan import repetition_spec

    dep = get_deployment(name)
    try:
        workload = LoadSpec(**repetition_spec(spec, rep, label)).to_workload()  # the seed this repetition ran with
        workload.plan_seed = int(spec.get("seed", 0))
    except Exception:
        workload = Workload(arrival=str(spec.get("arrival", {}).get("kind", "?")))
    services = {s.name: s.role for s in driver.services} if driver else {}
    return PointResult(deployment=name, framework=dep.framework, topology=dep.topology.value,
                       backend=dep.backend.value, emulated=dep.emulated, point=label, repetition=rep,
                       workload=workload, started_at=now(), services=services, caveat=dep.caveat,
                       engine_versions=getattr(driver, "versions", {}) if driver else {},
                       driver=driver.kind if driver else None)


def _abort_load(endpoint: str, model: str, workers: int, why: str) -> None:
    """Ask the running load point to end now (the watchdog saw the endpoint or the disk fail): in-flight requests
    end as cancelled records with the reason, unsent ones are recorded as not sent."""
    import urllib.request

    from suite.load.cluster import LoadCluster

    cluster = LoadCluster.active(endpoint, model, workers)
    if cluster is None or not cluster.web:
        return
    body = json.dumps({"run": cluster.run_id, "reason": why}).encode()
    req = urllib.request.Request(cluster.web + "/pdsuite/abort", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with contextlib.suppress(OSError):  # if it fails, the point's own limit still ends it
        urllib.request.urlopen(req, timeout=10).close()


def _run_point(plan: Plan, settings: Settings, driver: Driver, name: str, label: str, spec: dict, rep: int,
               out: Path, workers: int, state: RunState, snapshot,
               watchdog: Watchdog | None = None) -> tuple[bool, str | None]:
    from suite.load import run_load
    from suite.load.resolve import resolve_spec
    from suite.load.spec import LoadSpec

    t_point = time.monotonic()
    final = out / name / label / f"rep{rep}"
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    result = _point_result(plan, settings, name, label, rep, spec, driver)
    urls = {s.name: s.metrics_url for s in driver.services if s.metrics_url}
    failure, summary, tel = None, None, state.telemetry
    pt = {"scrape_before_s": 0.0, "lead_s": 0.0, "first_arrival_s": 0.0, "load_window_s": 0.0, "tail_s": 0.0,
          "scrape_after_s": 0.0}
    try:
        t = time.monotonic()
        snapshot(urls, tmp / "metrics" / "before")
        pt["scrape_before_s"] = time.monotonic() - t
        from suite.plan import repetition_spec

        # framework's prompt form, tokenizer; this repetition's own arrivals and prompts, the same on every deployment
        load_spec = resolve_spec(LoadSpec(**repetition_spec(spec, rep, label)), name, settings)
        if tel:
            tel.point_start(tmp)
        t, t_wall = time.monotonic(), time.time()
        try:
            summary = run_load(driver.endpoint, settings.MODEL, load_spec, tmp, workers=workers,
                               timeout_s=plan.point_timeout_s)
        finally:  # the load window comes from the records: first send -> last response (see timing.py)
            call_s = time.monotonic() - t
            pt["lead_s"], pt["first_arrival_s"], pt["load_window_s"], pt["tail_s"] = split_call(
                t_wall, call_s, load_window(tmp))
            pt["load_call_s"] = call_s
            result.load_wall_s = (pt["first_arrival_s"] + pt["load_window_s"]) or call_s
        result.native["load_summary"] = _as_dict(summary) | {"records": "requests.parquet"}  # relative: dir moves
        if getattr(summary, "failure", None):
            raise RuntimeError(summary.failure)
        if summary.sent and not summary.ok:  # records are kept; a point where nothing succeeded is no result
            raise RuntimeError(f"all {summary.sent} requests failed ({summary.errors} errors, "
                               f"{summary.timeouts} timeouts): see requests.parquet")
        t = time.monotonic()
        snapshot(urls, tmp / "metrics" / "after")
        pt["scrape_after_s"] = time.monotonic() - t
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)  # an interrupted point is re-run on resume
        raise
    except Exception as e:  # load or scrape broke: record it, keep going
        failure = f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        tm = state.timings
        tm.scrape_s += pt["scrape_before_s"] + pt["scrape_after_s"]
        tm.point_lead_s += pt["lead_s"]
        # the arrival process runs from t0: its first gap is load time like every later gap
        tm.load_s += pt["first_arrival_s"] + pt["load_window_s"]
        tm.point_tail_s += pt["tail_s"]
    if watchdog is not None and watchdog.tripped:  # the true cause comes first
        failure = watchdog.tripped + (f" ({failure})" if failure and watchdog.tripped not in failure else "")
    if tel:  # GPU samples stop; the point's spans still queued in the engines arrive
        result.native["telemetry"] = tel.point_end(tmp, tel.spans_per_request() * (getattr(summary, "ok", 0) or 0))
    dead = driver.dead()
    if dead:
        failure = f"{dead[0]} died during the point" + (f" ({failure})" if failure else "")
        result.native["last_logs"] = {d: driver.logs(d, LOG_TAIL) for d in dead}
        _save_logs(driver, tmp / "logs", only=dead)
    result.status = "failed" if failure else "ok"
    result.failure = failure
    result.ended_at = now()
    result.native["timings"] = {k: round(v, 4) for k, v in pt.items()}
    write_json(tmp / "point.json", result.model_dump(mode="json"))
    os.replace(tmp, final)
    # everything of the point that was neither scrape nor load call: spec, liveness check, point.json, rename
    state.timings.check_s += (time.monotonic() - t_point - pt["scrape_before_s"] - pt["scrape_after_s"]
                              - pt.get("load_call_s", 0.0))
    state.timings.points += 1
    return failure is None, failure


def _write_failed(plan, settings, name, label, rep, out: Path, why: str, spec: dict) -> None:
    final = out / name / label / f"rep{rep}"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    specs = dict(plan.point_specs())
    result = _point_result(plan, settings, name, label, rep, specs.get(label, spec), None)
    result.status, result.failure, result.ended_at = "failed", why.splitlines()[0][:500], now()
    write_json(tmp / "point.json", result.model_dump(mode="json"))
    os.replace(tmp, final)


def _warmup(plan: Plan, settings: Settings, driver: Driver, spec: dict, dep_dir: Path, workers: int) -> None:
    """A few requests of every class before measuring (includes the first NIXL handshake); kept, not reported."""
    from suite.load import run_load
    from suite.load.resolve import resolve_spec
    from suite.load.spec import LoadSpec

    # Short outputs and (up to 8) requests at once: the warm-up is for first-request costs (connections, NIXL
    # handshake, graphs), and long decodes or requests queued behind each other would only add overhead.
    classes = {k: c | {"output": {"min": min(c["output"]["min"], 8), "max": min(c["output"]["max"], 8)}}
               for k, c in LoadSpec(**spec).model_dump(mode="json")["classes"].items()}
    from suite.plan import warmup_seed

    warm = spec | {"arrival": {"kind": "concurrency", "concurrency": min(plan.warmup_requests, 8)},
                   "seed": warmup_seed(spec),  # prompts no measured request repeats (no prefix-cache head start)
                   "num_requests": plan.warmup_requests, "duration_s": None, "classes": classes}
    wdir = dep_dir / "warmup"
    wdir.mkdir(exist_ok=True)
    try:
        warm_spec = resolve_spec(LoadSpec(**warm), driver.dep.name, settings)
        # same workers as the points: the warm-up runs on (and starts) the deployment's load cluster
        run_load(driver.endpoint, settings.MODEL, warm_spec, wdir, workers=workers, timeout_s=plan.point_timeout_s)
    except Exception as e:  # a failed warm-up shows up again in the first point; note it and go on
        (wdir / "error.txt").write_text(f"{type(e).__name__}: {e}\n")


def _save_logs(driver: Driver, where: Path, only: list[str] | None = None) -> None:
    """Best effort: logs must never be the reason a run fails (e.g. on a full volume)."""
    try:
        where.mkdir(parents=True, exist_ok=True)
        for s in driver.services:
            if only is None or s.name in only:
                text = driver.logs(s.name, 100_000)
                if text:
                    (where / f"{s.name}.log").write_text(text)
    except OSError:
        pass


def _as_dict(obj) -> dict:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__dict__"):
        return dict(obj.__dict__)
    return {"value": str(obj)}
