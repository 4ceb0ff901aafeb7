"""Drives the pure Scheduler in real time on the asyncio loop: plan a step, build its token frames, sleep until
its end, hand every frame to the kernel in one tight pass, then do the step's bookkeeping.

Timing: step ends are absolute deadlines chained from the previous one (no drift); the loop sleeps to
`spin_s` before a deadline and busy-waits the rest, because timer wake-ups are only ~1 ms precise. Work that
need not happen at a deadline (per-request metrics) is deferred and run in the gaps between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections import deque
from collections.abc import Callable

import numpy as np

from suite.emulator.scheduler import Scheduler, SimRequest, Step

MAX_BACKDATE_S = 10e-3  # an idle engine's step may start this long before now: at the request's arrival
MAX_BEHIND_S = 2e-3  # writes this far behind schedule re-anchor the next step to now (counted as slip)
SLICE_S = 0.5e-3  # deferred work starts only with this much room before the spin phase
MAX_BACKLOG = 16 * 1024 * 1024  # bytes a client may leave unread before its stream is dropped
MAX_DEFERRED = 20_000  # beyond this backlog deferred work runs regardless of deadlines (bounded memory)


class Ring:
    """The last `size` float samples (bounded memory on a long-running server)."""

    def __init__(self, size: int) -> None:
        self.size, self.buf, self.pos = size, array("d"), 0

    def extend(self, x: np.ndarray) -> None:
        room = self.size - len(self.buf)
        self.buf.frombytes(x[:room].tobytes())
        for v in x[room:].tolist():  # full: overwrite the oldest
            self.buf[self.pos] = v
            self.pos = (self.pos + 1) % self.size

    def values(self) -> np.ndarray:
        return np.frombuffer(self.buf, dtype=float)


class EmissionStats:
    """Lateness of token writes (actual - intended, seconds) and, per stream, the ITL error (lateness of a token
    minus that of the stream's previous token: what a client measuring ITL sees). Honesty counters: `queued`
    writes the kernel did not take at once (left in user space: client backpressure) and `slip_s`, how far the
    emulated timeline was pushed back because writes fell behind it."""

    def __init__(self, size: int = 1_000_000) -> None:
        self.size = size
        self.reset()

    def add(self, late: float) -> None:
        self.add_step(np.array([late]))

    def add_step(self, late: np.ndarray) -> None:
        """One step's write lateness in pass order (NaN: a frame that was not written)."""
        late = late[~np.isnan(late)]
        if not late.size:
            return
        self.late.extend(late)
        self.first.extend(late[:1])
        self.max_batch = max(self.max_batch, int(late.size))
        self.pass_s += float(late[-1] - late[0])

    def reset(self) -> None:
        self.late = Ring(self.size)
        self.itl = Ring(self.size)
        self.first = Ring(self.size)  # lateness of each step's first write: wake-up error, without the pass
        self.max_batch = 0
        self.queued = 0
        self.slip_s = 0.0
        self.modelled_s = 0.0  # sum of the cost model's step durations: slip / this = how much the timeline stretched
        self.pass_s = 0.0  # first to last write of each step, summed: the in-situ cost of the writes
        self.pass_cpu_s = 0.0  # CPU time this thread got during those passes
        self.work_s = 0.0  # engine bookkeeping per step (plan, frame building, commit), summed
        self.work_cpu_s = 0.0
        self.steps = 0

    def summary(self) -> dict[str, float]:
        out = {"count": len(self.late.buf), "queued_writes": self.queued, "slip_ms": self.slip_s * 1e3,
               "modelled_ms": self.modelled_s * 1e3, "steps": self.steps, "max_batch": self.max_batch}
        if not self.late.buf:
            return out
        a, f = self.late.values() * 1e3, self.first.values() * 1e3
        out |= {"mean_ms": float(a.mean()), "max_ms": float(a.max()),
                **{f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 90, 99, 99.9)},
                "first_write_p50_ms": float(np.percentile(f, 50)), "first_write_p99_ms": float(np.percentile(f, 99)),
                "write_us": self.pass_s / a.size * 1e6, "write_cpu_us": self.pass_cpu_s / a.size * 1e6,
                "work_us_per_token": self.work_s / a.size * 1e6,
                "work_cpu_us_per_token": self.work_cpu_s / a.size * 1e6}
        if self.itl.buf:
            e = np.abs(self.itl.values()) * 1e3
            out |= {f"itl_err_p{q}_ms": float(np.percentile(e, q)) for q in (50, 99)}
        return out


class Engine:
    def __init__(self, sched: Scheduler, clock: Callable[[], float] = time.monotonic, spin_s: float = 1.5e-3,
                 on_step: Callable[[Step], None] | None = None) -> None:
        self.sched = sched
        self.clock = clock
        self.spin_s = spin_s
        self.on_step = on_step
        self.emission = EmissionStats()
        self.deferred: deque[Callable[[], None]] = deque()
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
        self.drain()

    def add(self, req: SimRequest) -> None:
        self.sched.add(req)
        self._wake.set()

    def abort(self, req: SimRequest) -> None:
        self.sched.abort(req)

    def defer(self, fn: Callable[[], None]) -> None:
        """Run `fn` in a gap between steps (or at once when idle, or on drain())."""
        self.deferred.append(fn)
        if len(self.deferred) > MAX_DEFERRED:
            self.deferred.popleft()()

    def drain(self) -> None:
        while self.deferred:
            self.deferred.popleft()()

    async def _sleep_until(self, t: float) -> None:
        clock, d = self.clock, self.deferred
        while d and clock() < t - self.spin_s - SLICE_S:
            d.popleft()()
        left = t - clock()
        if left > self.spin_s:
            await asyncio.sleep(left - self.spin_s)
        while clock() < t:  # busy-wait the last stretch for sub-ms precision
            pass

    def _frames(self, step: Step) -> list[tuple[SimRequest, Callable[[bytes], None], bytes]]:
        """Every streamed token of the step, built before its end so the deadline pass only writes."""
        out = []
        for r in step.emitting():
            s = r.sink
            if s is None:
                continue
            if s.closing():
                s.fail(ConnectionResetError("client connection closed"))
                continue
            out.append((r, s.write, s.frame(r.generated)))
        return out

    def _emit(self, frames: list) -> tuple[array, list]:
        """The deadline pass: write each frame (transport.write never awaits; the kernel takes it at once unless
        the client stopped reading), stamp it, nothing else."""
        clock = self.clock
        stamps = array("d")
        stamp = stamps.append
        failed = []
        nan = float("nan")
        cpu0 = time.thread_time()  # CPU time vs wall time of the pass: how much of it other processes took
        for r, write, data in frames:
            if r.aborted:
                stamp(nan)
                continue
            try:
                write(data)
            except Exception as e:  # any transport error means the client is gone
                failed.append((r, e))
                stamp(nan)
                continue
            stamp(clock())
        self.emission.pass_cpu_s += time.thread_time() - cpu0
        return stamps, failed

    def _after_emit(self, frames: list, stamps: array, failed: list, intended: float) -> None:
        late = np.frombuffer(stamps, dtype=float) - intended
        self.emission.add_step(late)
        for r, e in failed:
            r.sink.fail(e)
        # Bytes still in user space right after the pass were not handed to the kernel at their stamp: count
        # them (client backpressure; 0 in the benchmark) and drop clients that stopped reading.
        queued = 0
        itl = []
        for (r, _, _), x in zip(frames, late.tolist(), strict=True):
            if r.aborted or x != x:  # NaN: not written
                continue
            if r.last_late is not None:
                itl.append(x - r.last_late)
            r.last_late = x
            if b := r.sink.buffered():
                queued += 1
                if b > MAX_BACKLOG:
                    r.sink.fail(ConnectionResetError(f"client left {b} bytes unread"))
        self.emission.queued += queued
        if itl:
            self.emission.itl.extend(np.array(itl))

    async def _run(self) -> None:
        while True:
            if not self.sched.has_work():
                self._chained = False
                self.drain()
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self.clock()
            # While busy, the next step starts when the previous one ended (the GPU does not wait for our
            # token writes); if writes fell more than MAX_BEHIND_S behind, re-anchor to now and count the slip.
            start = now
            if not self._chained and self.sched.waiting:
                # Idle engine: the step starts when the request arrived, not when this process had read, parsed and
                # hashed its body (a real engine's own request path is inside the fitted step costs; ours would
                # come on top, ~1-6 ms for 128-8192 token-id prompts on a busy box). Bounded, never before the
                # previous step's end.
                first = min(min(r.ready_at for r in self.sched.waiting), now)
                start = max(self._last_end, first, now - MAX_BACKDATE_S)
            if self._chained:
                start = max(self._last_end, now - MAX_BEHIND_S)
                self.emission.slip_s += start - self._last_end
            t0, c0 = self.clock(), time.thread_time()
            step = self.sched.plan(start)
            if step is None:  # only requests whose KV is still in flight
                nxt = self.sched.next_ready()
                self._chained = False
                self.drain()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, nxt - now) if nxt else None)
                continue
            frames = self._frames(step)
            work, work_cpu = self.clock() - t0, time.thread_time() - c0
            await self._sleep_until(step.end)
            stamps, failed = self._emit(frames)
            t0, c0 = self.clock(), time.thread_time()
            self._after_emit(frames, stamps, failed, step.end)
            self._last_end = step.end
            self._chained = True
            self.busy_s += step.duration
            self.sched.commit(step)
            if self.on_step is not None:
                self.on_step(step)
            self.emission.steps += 1
            self.emission.modelled_s += step.duration
            self.emission.work_s += work + self.clock() - t0
            self.emission.work_cpu_s += work_cpu + time.thread_time() - c0
            await asyncio.sleep(0)  # let handlers run between steps
