"""Deployments a dead runner left behind. A runner killed with SIGKILL (or a crashed machine) cannot take its
deployment down; the next run must not fail every point with a wrong cause ("prefill died during the point").

- host driver: each started deployment has a state file (suite/runner/hostenv.py) naming the runner's pid and the
  services' process groups. A file whose runner is gone while its groups live is a leftover: it is taken down and
  named. A file whose runner is alive belongs to a run in progress: it is never touched, only named.
- compose: started containers carry the `pdsuite.deployment` label; one holding a port the next deployment needs
  is named (with the command that stops it), since no label says whether a live run still uses it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from suite.config import Settings
from suite.runner import hostenv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runner_alive(pid: int) -> bool:
    """The runner named in a state file still runs (a recycled pid running something else does not count)."""
    if pid == os.getpid():
        return True
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell: assume it is a live run and leave its deployment alone
    return b"suite" in cmdline or b"pdsuite" in cmdline or b"pytest" in cmdline


def _started_after(pid: int, when: float) -> bool:
    """Process `pid` started after `when` (epoch s): then it is not the one the state file recorded."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        start = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        return False
    return start > when + 2


def _live_groups(state: dict) -> dict[str, int]:
    """The state file's process groups that still exist and are the ones it recorded."""
    out = {}
    for name, pgid in (state.get("services") or {}).items():
        try:
            pgid = int(pgid)
        except (TypeError, ValueError):
            continue
        if pgid <= 1 or not hostenv.group_alive(pgid):
            continue
        if _alive(pgid) and _started_after(pgid, float(state.get("started_at") or 0)):
            continue  # the leader's pid was reused by something else
        out[name] = pgid
    return out


def take_down_host_leftovers(settings: Settings) -> list[str]:
    """Stop every host deployment whose runner died; one line per deployment, saying what was found."""
    found = []
    for st in hostenv.read_states(settings):
        name, runner = str(st.get("deployment", "?")), int(st.get("runner_pid") or 0)
        if runner and _runner_alive(runner):
            continue
        groups = _live_groups(st)
        if groups:
            hostenv.stop_groups(groups)
            found.append(f"{name}: left running by pdsuite run pid {runner}, which ended without taking it down "
                         f"({', '.join(sorted(groups))}); stopped it")
        hostenv.clear_state(settings, name)
    return found


def port_owner(settings: Settings, ports: list[int]) -> str | None:
    """Who holds one of `ports`, when it is a pdsuite deployment: a live run's host deployment, or a compose
    deployment's container. None when it is not one of ours (or cannot be told)."""
    from suite.deploy.catalog import deployments
    from suite.runner.drivers import services_of

    catalog = deployments()
    for st in hostenv.read_states(settings):
        name = str(st.get("deployment", ""))
        if name in catalog and _live_groups(st):
            mine = {s.port for s in services_of(catalog[name], settings)}
            if mine & set(ports):
                return (f"deployment {name} of a pdsuite run in progress (pid {st.get('runner_pid')}) holds port "
                        f"{sorted(mine & set(ports))[0]}; wait for it or `pdsuite down {name} --driver host`")
    try:
        r = subprocess.run(["docker", "ps", "--filter", "label=pdsuite.deployment",
                            "--format", '{{.Label "pdsuite.deployment"}}'], capture_output=True, text=True,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for name in sorted(set(r.stdout.split())):
        if name in catalog:
            mine = {s.port for s in services_of(catalog[name], settings)}
            if mine & set(ports):
                return (f"compose deployment {name} (an earlier run's, or `make up-{name}`) holds port "
                        f"{sorted(mine & set(ports))[0]}; stop it with `make down`")
    return None
