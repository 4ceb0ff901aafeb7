"""Small process helpers for the CPU proofs: free ports, waiting for HTTP, killing whole process groups."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

from suite.netutil import free_ports  # noqa: F401  (re-exported for tests)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, want: int = 200) -> bool:
    """Poll until GET url returns `want`; False on timeout or if proc exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if http_status(url) == want:
            return True
        time.sleep(0.25)
    return False


def spawn(argv: list[str], log_path: str | os.PathLike, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start argv in its own process group (so kill_group reaches every child), output to log_path."""
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process; closed in kill_group
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    proc._pdsuite_log = log  # type: ignore[attr-defined]
    return proc


def kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children (engine cores) may outlive the leader
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    log = getattr(proc, "_pdsuite_log", None)
    if log is not None:
        log.close()
