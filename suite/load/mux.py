"""One reader loop per Locust worker: every open stream's socket in one epoll set, read by one greenlet.

A greenlet per stream pays, per token, a read that fails (EAGAIN), an io watcher start/stop in gevent's loop and
two greenlet switches; measured, that was about half the worker's CPU per token. Here a token costs its share of
one epoll call and one recvmsg, fed to the same push parser as the blocking client (client.Response). The loop
yields to the hub every SLICE reads, so the dispatcher still sends on time and no socket waits long enough for
the kernel to merge two tokens' packets (client.read_stamped). Request timeouts are swept every SWEEP_S.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import time
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.monkey import get_original

from suite.load.client import Outcome, Pending, Response, read_stamped
from suite.schema import Status

log = logging.getLogger("pdsuite.load")
SLICE = 32  # reads per trip through the event loop (~0.5 ms of parsing)
SWEEP_S = 0.05  # how often request deadlines are checked
EPOLLIN = getattr(select, "EPOLLIN", 1)


def available() -> bool:
    """epoll is Linux-only; elsewhere the worker follows each stream in its own greenlet."""
    try:
        get_original("select", "epoll")  # gevent's monkey-patching hides it; it is only ever polled with timeout 0
    except (AttributeError, ImportError):
        return False
    return True


class StreamMux:
    def __init__(self) -> None:
        self.poller = None
        self.watcher = None
        self.streams: dict[int, tuple[Pending, Response, Callable[[Outcome], None], Event]] = {}
        self.deadlines: list = []  # heap of (deadline ns, seq, fd, Response)
        self.seq = itertools.count()
        self.empty = Event()
        self.empty.set()
        self.reader: gevent.Greenlet | None = None
        self.sweeper: gevent.Greenlet | None = None

    def add(self, p: Pending, t0_ns: int, done: Callable[[Outcome], None]) -> Event:
        """Follow a sent request; `done(outcome)` is called once with the final record (never dropped). The
        returned event is set after that (a closed-loop stream waits on it)."""
        ended = Event()
        resp = Response(p, t0_ns)
        if resp.finished:  # failed before it was sent (connect refused...)
            done(p.out)
            ended.set()
            return ended
        if self.poller is None:
            self.poller = get_original("select", "epoll")()
            self.watcher = get_hub().loop.io(self.poller.fileno(), 1)
        fd = p.sock.fileno()
        p.sock.settimeout(0.0)
        self.streams[fd] = (p, resp, done, ended)
        self.poller.register(fd, EPOLLIN)
        heapq.heappush(self.deadlines, (p.deadline_ns, next(self.seq), fd, resp))
        self.empty.clear()
        if self.reader is None or self.reader.dead:
            self.reader = gevent.spawn(self._read_loop)
        if self.sweeper is None or self.sweeper.dead:
            self.sweeper = gevent.spawn(self._sweep)
        return ended

    def cancel_all(self, reason: str) -> None:
        """Every stream still open ends now as a `cancelled` record."""
        for fd in list(self.streams):
            self.streams[fd][1].fail(Status.CANCELLED, reason)
            self._end(fd)

    def close(self) -> None:
        self.cancel_all("worker stopped")
        for g in (self.reader, self.sweeper):
            if g is not None:
                g.kill(block=False)
        if self.poller is not None:
            self.watcher.close()
            self.poller.close()
            self.poller = self.watcher = None

    # --- loops ---------------------------------------------------------------------------------------
    def read_ready(self, limit: int = SLICE) -> int:
        """Read up to `limit` sockets that have data, without waiting; how many were ready. The reader loop calls
        it once per trip through gevent's loop; a dispatcher busy-waiting for a send time may call it too."""
        if self.poller is None:
            return 0
        streams = self.streams
        ready = self.poller.poll(0, limit)
        for fd, _ in ready:
            entry = streams.get(fd)
            if entry is None:
                continue
            p, resp = entry[0], entry[1]
            try:
                data, ts, kernel = read_stamped(p.sock)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                resp.fail(Status.ERROR, f"{type(e).__name__}: {e}")
            else:
                try:
                    resp.feed(data, ts, kernel)
                except Exception as e:  # a parser bug fails this request, not every stream of the worker
                    log.exception("pdsuite load: reading %s", p.out.record.request_id)
                    resp.fail(Status.ERROR, f"client error: {type(e).__name__}: {e}")
            if resp.finished:
                self._end(fd)
        return len(ready)

    def _read_loop(self) -> None:
        """SLICE ready sockets per trip through gevent's loop. Waiting on the (level-triggered) epoll fd between
        slices, rather than gevent.sleep(0), lets the loop run its timers: sleep(0) only queues a callback, and a
        callback queue that never empties starves every timer - the dispatcher's wake-up among them (measured:
        send lag p99 5-30 ms at 120 req/s)."""
        hub = get_hub()
        while self.streams:
            hub.wait(self.watcher)
            self.read_ready()

    def _sweep(self) -> None:
        while self.streams:
            gevent.sleep(SWEEP_S)
            now = time.monotonic_ns()
            dl = self.deadlines
            while dl and (dl[0][3].finished or dl[0][0] <= now):
                _, _, fd, resp = heapq.heappop(dl)
                if not resp.finished:
                    resp.timeout()
                    self._end(fd)

    def _end(self, fd: int) -> None:
        p, resp, done, ended = self.streams.pop(fd)
        self.poller.unregister(fd)  # before the socket is closed or pooled
        resp.release()
        if not self.streams:
            self.empty.set()
        done(p.out)
        ended.set()
