"""Drives the pure Scheduler in real time on the asyncio loop: plan a step, sleep until its end, deliver its
tokens synchronously (so every stream of a step is written back to back), repeat.

Timing: step ends are absolute deadlines chained from the previous one (no drift); the loop sleeps to
`spin_s` before a deadline and busy-waits the rest, because timer wake-ups are only ~1 ms precise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import Callable

from suite.emulator.scheduler import Scheduler, SimRequest, Step

MAX_BEHIND_S = 2e-3


class EmissionStats:
    """Lateness of token writes (actual - intended, seconds), in a bounded ring."""

    def __init__(self, size: int = 1_000_000) -> None:
        self.size = size
        self.buf = array("d")
        self.pos = 0

    def add(self, late: float) -> None:
        if len(self.buf) < self.size:
            self.buf.append(late)
        else:
            self.buf[self.pos] = late
            self.pos = (self.pos + 1) % self.size

    def reset(self) -> None:
        self.buf = array("d")
        self.pos = 0

    def summary(self) -> dict[str, float]:
        import numpy as np

        if not self.buf:
            return {"count": 0}
        a = np.frombuffer(self.buf, dtype=float) * 1e3
        return {"count": int(a.size), "mean_ms": float(a.mean()), "max_ms": float(a.max()),
                **{f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 90, 99, 99.9)}}


class Engine:
    def __init__(self, sched: Scheduler, clock: Callable[[], float] = time.monotonic, spin_s: float = 1.5e-3,
                 on_step: Callable[[Step], None] | None = None) -> None:
        self.sched = sched
        self.clock = clock
        self.spin_s = spin_s
        self.on_step = on_step
        self.emission = EmissionStats()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_end = 0.0
        self._chained = False
        self.busy_s = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="emulator-engine")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, req: SimRequest) -> None:
        self.sched.add(req)
        self._wake.set()

    def abort(self, req: SimRequest) -> None:
        self.sched.abort(req)

    async def _sleep_until(self, t: float) -> None:
        left = t - self.clock()
        if left > self.spin_s:
            await asyncio.sleep(left - self.spin_s)
        while self.clock() < t:  # busy-wait the last stretch for sub-ms precision
            pass

    async def _run(self) -> None:
        while True:
            if not self.sched.has_work():
                self._chained = False
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self.clock()
            # While busy, the next step starts when the previous one ended (the GPU does not wait for our
            # token writes); if writes fell more than MAX_BEHIND_S behind, re-anchor to now.
            start = max(self._last_end, now - MAX_BEHIND_S) if self._chained else now
            step = self.sched.plan(start)
            if step is None:  # only requests whose KV is still in flight
                nxt = self.sched.next_ready()
                self._chained = False
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, nxt - now) if nxt else None)
                continue
            await self._sleep_until(step.end)
            self._last_end = step.end
            self._chained = True
            self.busy_s += step.duration
            self.sched.commit(step)
            if self.on_step is not None:
                self.on_step(step)
            await asyncio.sleep(0)  # let handlers run between steps
