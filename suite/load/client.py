"""Streaming OpenAI client: one request -> one RequestRecord with true streaming timings.

Blocking-socket code, so it runs as-is in a plain process (`pdsuite ping`) and cooperatively under gevent
(Locust workers monkey-patch `socket`). HTTP/1.1 framing is h11's, SSE framing is sseclient-py's; we only own
the socket so that every receive carries the kernel's arrival timestamp (SO_TIMESTAMPNS): a token's time is
when its packet reached this host, not when a busy Python process got round to reading it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import orjson
from sseclient import SSEClient

from suite.schema import RequestRecord, Status

# Linux values (x86-64 / arm64); Python's socket module does not export them.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TS = struct.Struct("qq")
EMULATED_HEADER = b"x-pdsuite-emulated"


class _Clock:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in ns (kernel stamps are realtime), re-sampled every second."""

    offset_ns = 0
    sampled_at = -(10**12)

    @classmethod
    def offset(cls) -> int:
        now = time.monotonic_ns()
        if now - cls.sampled_at > 1_000_000_000:
            best = None
            for _ in range(3):
                a = time.monotonic_ns()
                r = time.time_ns()
                b = time.monotonic_ns()
                if best is None or b - a < best[0]:
                    best = (b - a, r - (a + b) // 2)
            cls.offset_ns, cls.sampled_at = best[1], now
        return cls.offset_ns


@dataclass
class Endpoint:
    url: str
    host: str = ""
    port: int = 0
    base: str = ""
    idle: list = field(default_factory=list)  # keep-alive connections: (socket, h11.Connection)

    def __post_init__(self) -> None:
        u = urlsplit(self.url if "://" in self.url else f"http://{self.url}")
        if u.scheme != "http":
            raise ValueError(f"only http:// endpoints are supported, got {self.url!r}")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.base = u.path.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]

    def connect(self, timeout: float):
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # no kernel stamps here: user-space times are used
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return sock, h11.Connection(h11.CLIENT)

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[0].close()


def request_body(api: str, model: str, prompt: list[int] | str, max_tokens: int) -> bytes:
    body: dict = {"model": model, "max_tokens": max_tokens, "stream": True,
                  "stream_options": {"include_usage": True}, "ignore_eos": True, "temperature": 0.0}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return orjson.dumps(body)


def api_path(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


@dataclass
class Outcome:
    record: RequestRecord
    emulated: bool = False
    kernel_clock: bool = False


class _Stream:
    """Yields response body bytes; `last_ns` is the monotonic arrival time of the latest receive."""

    def __init__(self, sock, conn: h11.Connection, deadline_ns: int) -> None:
        self.sock, self.conn, self.deadline_ns = sock, conn, deadline_ns
        self.last_ns = 0
        self.kernel = False

    def _recv(self) -> None:
        left = (self.deadline_ns - time.monotonic_ns()) / 1e9
        if left <= 0:
            raise TimeoutError("request timed out")
        self.sock.settimeout(left)
        # Small reads: TCP reports the stamp of the last segment a read consumed, so when this process reads late
        # a big read would give earlier tokens a later token's arrival time.
        data, anc, _, _ = self.sock.recvmsg(1024, 64)
        ts = None
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = _TS.unpack_from(raw)
                ts = sec * 1_000_000_000 + nsec - _Clock.offset()
        self.kernel = ts is not None
        self.last_ns = ts if ts is not None else time.monotonic_ns()
        self.conn.receive_data(data)

    def event(self):
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self._recv()
                continue
            return ev

    def __iter__(self):
        while True:
            ev = self.event()
            if isinstance(ev, h11.Data):
                yield bytes(ev.data)
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    def close(self) -> None:
        pass


def stream_request(ep: Endpoint, api: str, body: bytes, *, request_id: str, request_class: str, input_tokens: int,
                   max_tokens: int, scheduled_s: float, t0_ns: int, timeout_s: float, worker: str = "",
                   reuse: bool = True) -> Outcome:
    """Send one streaming request now and follow it to the end. Never raises for server/network trouble."""
    rec = RequestRecord(request_id=request_id, request_class=request_class, api=api, worker=worker,
                        input_tokens=input_tokens, max_tokens=max_tokens, scheduled_s=scheduled_s)
    out = Outcome(rec)
    sec = 1e-9
    start_ns = time.monotonic_ns()
    deadline_ns = start_ns + int(timeout_s * 1e9)
    sock = conn = None
    ok_to_reuse = False
    try:
        while ep.idle and reuse and sock is None:
            sock, conn = ep.idle.pop()
            if not _alive(sock):
                sock.close()
                sock = None
        if sock is None:
            sock, conn = ep.connect(timeout_s)
        sock.settimeout(timeout_s)
        target = (ep.base + api_path(api)).encode()
        headers = [("Host", f"{ep.host}:{ep.port}"), ("Content-Type", "application/json"),
                   ("Content-Length", str(len(body))), ("Accept", "text/event-stream"), ("X-Request-Id", request_id)]
        wire = conn.send(h11.Request(method="POST", target=target, headers=headers)) + conn.send(h11.Data(body))
        wire += conn.send(h11.EndOfMessage())
        # Stamp before the write: the response's kernel rx stamp can precede a stamp taken after sendall returns
        # (the process may be descheduled in between), which would shrink TTFT; this way it errs by microseconds.
        rec.sent_s = (time.monotonic_ns() - t0_ns) * sec
        sock.sendall(wire)
        st = _Stream(sock, conn, deadline_ns)
        resp = st.event()
        if not isinstance(resp, h11.Response):
            raise ConnectionError(f"no HTTP response ({type(resp).__name__})")
        rec.http_status = resp.status_code
        out.emulated = any(k.lower() == EMULATED_HEADER and v.strip().lower() == b"true" for k, v in resp.headers)
        if resp.status_code >= 400:
            text = b"".join(st)
            rec.status, rec.error = Status.ERROR, f"HTTP {resp.status_code}: {_error_text(text)}"
            rec.done_s = (st.last_ns - t0_ns) * sec
            ok_to_reuse = conn.our_state is h11.DONE and conn.their_state is h11.DONE
            return out
        times = rec.token_times_s
        saw_done = False
        for ev in SSEClient(st).events():
            ts = st.last_ns
            data = ev.data
            if data == "[DONE]":
                saw_done = True
                rec.done_s = (ts - t0_ns) * sec
                continue
            obj = orjson.loads(data)
            if obj.get("error"):
                rec.status, rec.error = Status.ERROR, f"stream error: {_error_text(orjson.dumps(obj['error']))}"
                continue
            for c in obj.get("choices") or ():
                d = c.get("delta")
                text = c.get("text") if d is None else (d.get("content") or d.get("reasoning_content"))
                if text:
                    times.append((ts - t0_ns) * sec)
                    break
            usage = obj.get("usage")
            if usage:
                rec.prompt_tokens = usage.get("prompt_tokens")
                rec.completion_tokens = usage.get("completion_tokens")
        out.kernel_clock = st.kernel
        if rec.done_s is None:
            rec.done_s = (st.last_ns - t0_ns) * sec
        if times:
            rec.first_token_s = times[0]
        if rec.status is Status.OK and not saw_done:
            rec.status, rec.error = Status.ERROR, "stream ended without [DONE]"
        ok_to_reuse = conn.our_state is h11.DONE and conn.their_state is h11.DONE
    except TimeoutError:
        rec.status, rec.error = Status.TIMEOUT, f"no complete response within {timeout_s:g} s"
    except ConnectionRefusedError:
        rec.status, rec.error = Status.ERROR, f"connection refused by {ep.host}:{ep.port} (is the endpoint up?)"
    except (OSError, h11.ProtocolError, orjson.JSONDecodeError, ConnectionError) as e:
        rec.status, rec.error = Status.ERROR, f"{type(e).__name__}: {e}"
    finally:
        if rec.status is not Status.OK and rec.done_s is None:
            rec.done_s = (time.monotonic_ns() - t0_ns) * sec
        if sock is not None:
            if ok_to_reuse and reuse:
                conn.start_next_cycle()
                ep.idle.append((sock, conn))
            else:
                sock.close()
    return out


def _alive(sock) -> bool:
    """An idle keep-alive socket the server has not closed (closed: readable with EOF)."""
    try:
        sock.setblocking(False)  # a socket with a timeout would wait in recv
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _error_text(raw: bytes) -> str:
    try:
        obj = orjson.loads(raw)
        if isinstance(obj, dict):
            obj = obj.get("error", obj)
            if isinstance(obj, dict):
                obj = obj.get("message", obj)
        text = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace")
    return " ".join(text.split())[:300]
