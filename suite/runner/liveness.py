"""Fail fast while a point runs: a watchdog thread asks the endpoint's /health and writes a probe file into the
results folder every few seconds. When either has failed without a break for `timeout_s`, it records why and calls
`on_trip` (the runner aborts the load point), so a hung router or a dead disk ends the point within seconds of the
limit instead of after the point's whole `point_timeout_s`. One slow answer is not a failure: only a run of
failures as long as the limit is.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def check_health(url: str, timeout: float) -> str | None:
    """None when `url` answers 2xx within `timeout`, else one line saying what happened."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return None if 200 <= r.status < 300 else f"HTTP {r.status}"
    except Exception as e:  # refused, reset, timed out, garbage: all mean "not answering"
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def check_disk(folder: Path) -> str | None:
    """None when a fresh file can be written, flushed to the device and removed in `folder`."""
    probe = folder / f".liveness-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
        return None
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        return f"{e.strerror or e}"


class Watchdog:
    def __init__(self, health_url: str, disk: Path, timeout_s: float, on_trip: Callable[[str], None],
                 interval_s: float | None = None) -> None:
        self.health_url, self.disk, self.timeout_s, self.on_trip = health_url, disk, timeout_s, on_trip
        self.interval_s = interval_s or max(0.2, min(2.0, timeout_s / 5))
        self.tripped: str | None = None  # the reason, once tripped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pdsuite-liveness", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        failing: dict[str, float] = {}  # check -> when its current run of failures began
        while not self._stop.wait(self.interval_s):
            checks = {"health": lambda: check_health(self.health_url, min(5.0, self.timeout_s)),
                      "disk": lambda: check_disk(self.disk)}
            for what, check in checks.items():
                err = check()
                if err is None:
                    failing.pop(what, None)
                    continue
                since = failing.setdefault(what, time.monotonic())
                if time.monotonic() - since >= self.timeout_s:
                    self.tripped = (f"endpoint {self.health_url} did not answer for {self.timeout_s:g} s ({err})"
                                    if what == "health" else
                                    f"results disk at {self.disk} took no write for {self.timeout_s:g} s ({err})")
                    self.on_trip(self.tripped)
                    return
                if self._stop.is_set():
                    return


def busy_ports(host: str, ports: list[int]) -> list[int]:
    """Ports on `host` where something already accepts connections."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.settimeout(0.3)
            if s.connect_ex((host, port)) == 0:
                busy.append(port)
    return busy
