"""A persistent Locust cluster (master + N worker processes, loopback) fed one load point after another.

    with LoadCluster(endpoint, model, workers=2) as lc:      # lazy: processes start on the first run
        summary = lc.run(spec, out_dir, timeout_s)           # -> LoadSummary; requests.parquet in out_dir

Starting Locust costs seconds per process; a plan's points reuse one cluster instead. The master runs with its
web UI on a private loopback port and is driven through pdsuite's control routes (POST /pdsuite/run,
/pdsuite/abort; GET /pdsuite), never through a Locust swarm, so per-point state lives in the pdsuite glue.
Guarantees per point, as with a fresh cluster: every record of every worker lands in that point's parquet
(records carry the run id, late ones from an earlier point are dropped by the master), errors and timeouts are
records; a worker or master that dies, or a point that overruns its limit, fails the point with one line (in-flight
requests of live workers are cancelled and recorded) and the cluster is restarted for the next point.
While a cluster is open (`with`), `run_load` calls with the same endpoint, model and workers use it.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "locustfiles" / "pd_mix.py"
START_TIMEOUT_S = 90  # workers connect to the master (a loaded 2-core box needs seconds per process)


class ClusterError(RuntimeError):
    pass


class LoadCluster:
    _open: ClassVar[list[LoadCluster]] = []  # clusters inside their `with`, newest last
    _parked: ClassVar[dict[int, LoadCluster]] = {}  # keep=True clusters between `with` blocks, by worker count

    def __init__(self, endpoint: str, model: str, workers: int = 2, log_dir: Path | None = None,
                 keep: bool = False, master_cpus: set[int] | None = None, worker_cpus: set[int] | None = None) -> None:
        """keep=True: on leaving `with`, park the live processes for the next keep=True cluster of the same size
        (a plan's next deployment) instead of stopping them; parked ones stop at interpreter exit.
        master_cpus / worker_cpus: CPU affinity (e.g. keep the master's record handling off the workers' cores)."""
        self.endpoint, self.model, self.workers, self.keep = endpoint, model, workers, keep
        self.master_cpus, self.worker_cpus = master_cpus, worker_cpus
        self._tmp = None if log_dir else tempfile.TemporaryDirectory(prefix="pdsuite-locust-")
        self.log_path = Path(log_dir or self._tmp.name) / "locust-cluster.log"
        self.procs: list[subprocess.Popen] = []
        self.web = ""
        self.run_id = 0
        self.starts = 0  # how many times processes were started (tests check reuse)
        self._log_at = 0
        parked = LoadCluster._parked.pop(workers, None) if keep else None
        if parked is not None and parked.procs and not parked.dead():
            self.procs, self.web, self.run_id, self.starts = parked.procs, parked.web, parked.run_id, parked.starts
            self.log_path, self._log_at, self._tmp = parked.log_path, parked._log_at, parked._tmp

    # --- lifetime -------------------------------------------------------------------------------------
    def __enter__(self) -> LoadCluster:
        LoadCluster._open.append(self)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self in LoadCluster._open:
            LoadCluster._open.remove(self)
        if self.keep and exc_type is None and self.procs and not self.dead():
            old = LoadCluster._parked.pop(self.workers, None)
            if old is not None:
                old.close()
            LoadCluster._parked[self.workers] = self
            return
        self.close()
        if self._tmp:
            self._tmp.cleanup()

    @classmethod
    def close_parked(cls) -> None:
        while cls._parked:
            _, c = cls._parked.popitem()
            c.close()
            if c._tmp:
                c._tmp.cleanup()

    @classmethod
    def active(cls, endpoint: str, model: str, workers: int) -> LoadCluster | None:
        for c in reversed(cls._open):
            if (c.endpoint, c.model, c.workers) == (endpoint, model, workers):
                return c
        return None

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the processes without waiting for the workers to connect (the runner does this while a deployment
        loads); wait_ready() waits. start() = spawn() + wait_ready()."""
        from suite.load.testserver import free_port

        self.close()
        port, web = free_port(), free_port()
        base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--skip-log-setup", "--loglevel", "WARNING"]
        master = [*base, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                  "--web-host", "127.0.0.1", "--web-port", str(web), "--host", self.endpoint]
        worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            kw = {"stdout": log, "stderr": subprocess.STDOUT}
            self.procs = [subprocess.Popen(master, preexec_fn=_child(self.master_cpus), **kw)]
            self.procs += [subprocess.Popen(worker, preexec_fn=_child(self.worker_cpus), **kw)
                           for _ in range(self.workers)]
        self.web = f"http://127.0.0.1:{web}"
        self.starts += 1

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            dead = self.dead()
            if dead:
                raise ClusterError(f"load cluster did not start: {dead} ({self._log_tail()})")
            st = self._get("/pdsuite")
            if st and st.get("workers_connected", 0) >= self.workers:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"load cluster: {self.workers} workers did not connect within {START_TIMEOUT_S} s")
            time.sleep(0.1)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = []

    def dead(self) -> str | None:
        """One line naming the first cluster process that exited, else None."""
        for k, p in enumerate(self.procs):
            if p.poll() is not None:
                who = "master" if k == 0 else f"worker process {k} of {len(self.procs) - 1}"
                return f"load {who} (pid {p.pid}) exited with code {p.returncode}"
        return None

    # --- one point ------------------------------------------------------------------------------------
    def run(self, spec, out_dir: Path, timeout_s: float | None = None, itl_events: bool = False):
        """One point; returns a LoadSummary (failure set when the point failed). Bad input raises ConfigError."""
        from suite.load.run import LoadSummary, budget, finish_summary, preflight

        spec = preflight(spec)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "loadspec.json").write_text(spec.model_dump_json(indent=1))
        parquet = out_dir / "requests.parquet"
        parquet.unlink(missing_ok=True)
        (out_dir / "load.json").unlink(missing_ok=True)
        t_start = time.monotonic()
        limit = timeout_s or budget(spec)
        failure = None
        try:
            if not self.procs or self.dead():
                self.start()
            failure = self._point(spec, out_dir, limit, itl_events)
        except ClusterError as e:
            failure = str(e)
        finally:
            self._copy_log(out_dir / "locust.log")
        if failure and self.procs:
            self.close()  # restart for the next point: a dead or stuck process must not poison it
        wall = time.monotonic() - t_start
        if not parquet.is_file():
            return LoadSummary(wall_s=wall, failure=failure or f"no records written ({self._log_tail()})")
        return finish_summary(parquet, spec, out_dir, wall, failure)

    def _point(self, spec, out_dir: Path, limit: float, itl_events: bool) -> str | None:
        self.run_id += 1
        req = {"run": self.run_id, "spec": spec.model_dump(mode="json"), "model": self.model, "host": self.endpoint,
               "out": str(out_dir.resolve()), "itl_events": itl_events}
        got = self._post("/pdsuite/run", req)
        if not got or got.get("run") != self.run_id:
            raise ClusterError(f"load master refused the point: {got}")
        deadline = time.monotonic() + limit
        failure = None
        while True:
            st = self._get("/pdsuite")
            if st and st.get("run") == self.run_id and st.get("finished"):
                return failure or st.get("failure")
            dead = self.dead()
            if dead and failure is None:
                failure = f"{dead} during the point"  # its requests' records: not_sent, by the master
                if dead.startswith("load master"):
                    return failure
                self._post("/pdsuite/abort", {"run": self.run_id, "reason": failure})
                deadline = min(deadline, time.monotonic() + 20)
            elif time.monotonic() > deadline:
                if failure is None:
                    failure = f"load did not finish within {limit:.0f} s"
                    self._post("/pdsuite/abort", {"run": self.run_id, "reason": failure})
                    deadline = time.monotonic() + 20  # let live workers send their cancelled records
                else:
                    return failure + " (the master did not finish the records)"
            time.sleep(0.05)

    # --- plumbing -------------------------------------------------------------------------------------
    def _get(self, path: str) -> dict | None:
        return self._http(urllib.request.Request(self.web + path))

    def _post(self, path: str, data: dict) -> dict | None:
        return self._http(urllib.request.Request(self.web + path, data=json.dumps(data).encode(), method="POST",
                                                 headers={"Content-Type": "application/json"}))

    def _http(self, req) -> dict | None:
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                return json.loads(e.read())
            except ValueError:
                return {"error": f"HTTP {e.code}"}
        except (OSError, ValueError):
            return None

    def _copy_log(self, dest: Path) -> None:
        """This point's slice of the cluster log (start-up lines go to the first point)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_at)
                data = f.read()
            self._log_at += len(data)
            dest.write_bytes(data)
        except OSError:
            pass

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return ("locust: " + lines[-1][:200]) if lines else "no output"


def _child(cpus: set[int] | None):
    def setup() -> None:
        """Linux: the kernel sends SIGTERM to a cluster process when the runner dies, even by SIGKILL."""
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


atexit.register(LoadCluster.close_parked)
