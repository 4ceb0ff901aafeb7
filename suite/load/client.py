"""Streaming OpenAI client: one request -> one RequestRecord with true streaming timings.

Blocking-socket code, so it runs as-is in a plain process (`pdsuite ping`) and cooperatively under gevent
(Locust workers monkey-patch `socket`). The request and the response head go through h11, SSE events through
sseclient-py. We own the socket so that every token carries the kernel's arrival timestamp (SO_TIMESTAMPNS): a
token's time is when its packet reached this host, not when a busy Python process got round to reading it.

The chunked body is framed here rather than by h11, which costs about half the client's CPU per token when
fed one chunk at a time; reads are sized for throughput, see _Reader for what that means for token times.
A request is split into prepare (connection, bytes) / send (at the scheduled time) / follow (read the stream), so
a dispatcher can send on time and leave the reading to another greenlet.
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
_READ = 65536


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
    idle: list = field(default_factory=list)  # keep-alive sockets, each between two requests

    def __post_init__(self) -> None:
        u = urlsplit(self.url if "://" in self.url else f"http://{self.url}")
        if u.scheme != "http":
            raise ValueError(f"only http:// endpoints are supported, got {self.url!r}")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.base = u.path.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]

    def connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # no kernel stamps here: user-space times are used
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return sock

    def take(self, timeout: float) -> socket.socket:
        """An idle keep-alive socket the server has not closed, else a new connection."""
        while self.idle:
            sock = self.idle.pop()
            if _alive(sock):
                return sock
            sock.close()
        return self.connect(timeout)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


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


class _Reader:
    """Reads one response off a socket; `last_ns` is the arrival time of the data read last.

    Each read takes what is there (one syscall per wake-up); a token's time is the kernel stamp of the read that
    completed it. A read that finds several tokens at once gives them one time, the last packet's: the kernel has
    then merged their packets in the receive queue and kept only the latest stamp, so smaller reads would not
    recover the earlier ones (the ITL-size error a reader more than one inter-token gap late makes)."""

    def __init__(self, sock, deadline_ns: int | None) -> None:
        self.sock, self.deadline_ns = sock, deadline_ns
        self.last_ns = 0
        self.kernel = False
        self.complete = False  # the body's end was read: the connection can carry another request
        self.buf = b""

    def read(self) -> bytes:
        """Waits for data and returns what is there (b"" once the server closed)."""
        if self.deadline_ns is not None:  # else the caller bounds the whole request (gevent.Timeout)
            left = (self.deadline_ns - time.monotonic_ns()) / 1e9
            if left <= 0:
                raise TimeoutError("request timed out")
            self.sock.settimeout(left)
        data, anc, _, _ = self.sock.recvmsg(_READ, 64)
        ts = None
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = _TS.unpack_from(raw)
                ts = sec * 1_000_000_000 + nsec - _Clock.offset()
        self.kernel = ts is not None
        self.last_ns = ts if ts is not None else time.monotonic_ns()
        return data

    def head(self) -> bytes:
        """The response head, up to and including its blank line; what follows stays in `buf`."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head, self.buf = self.buf[:i + 4], self.buf[i + 4:]
                return head
            data = self.read()
            if not data:
                head, self.buf = self.buf, b""
                return head
            self.buf += data

    def chunks(self):
        """Payloads of a chunked body (HTTP/1.1 framing over `buf`, refilled by `read`)."""
        buf, pos = self.buf, 0
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl >= 0:
                try:
                    size = int(buf[pos:nl].split(b";", 1)[0], 16)
                except ValueError:
                    raise h11.RemoteProtocolError(f"bad chunk size line {buf[pos:nl][:40]!r}") from None
                start = nl + 2
                if size == 0:
                    if buf.find(b"\r\n\r\n", start - 2) >= 0:  # the blank line after the (rare) trailers
                        self.complete, self.buf = True, b""
                        return
                elif len(buf) >= start + size + 2:
                    pos = start + size + 2
                    yield buf[start:start + size]
                    continue
            data = self.read()
            if not data:
                raise ConnectionError("connection closed mid-body")
            buf, pos = buf[pos:] + data, 0


@dataclass
class Pending:
    """A request ready to go: connection taken, bytes built. `send` it at its time, then `follow` it."""

    ep: Endpoint
    api: str
    timeout_s: float
    out: Outcome
    conn: h11.Connection
    wire: bytes = b""
    sock: socket.socket | None = None
    deadline_ns: int = 0
    failed: bool = False


def prepare(ep: Endpoint, api: str, body: bytes, *, request_id: str, request_class: str, input_tokens: int,
            max_tokens: int, scheduled_s: float, timeout_s: float, worker: str = "", reuse: bool = True) -> Pending:
    rec = RequestRecord(request_id=request_id, request_class=request_class, api=api, worker=worker,
                        input_tokens=input_tokens, max_tokens=max_tokens, scheduled_s=scheduled_s)
    conn = h11.Connection(h11.CLIENT)
    p = Pending(ep, api, timeout_s, Outcome(rec), conn)
    target = (ep.base + api_path(api)).encode()
    headers = [("Host", f"{ep.host}:{ep.port}"), ("Content-Type", "application/json"),
               ("Content-Length", str(len(body))), ("Accept", "text/event-stream"), ("X-Request-Id", request_id)]
    p.wire = (conn.send(h11.Request(method="POST", target=target, headers=headers)) + conn.send(h11.Data(body))
              + conn.send(h11.EndOfMessage()))
    try:
        if not reuse:
            ep.close()
        p.sock = ep.take(timeout_s)
    except OSError as e:
        _fail(p, e)
    return p


def send(p: Pending, t0_ns: int) -> None:
    """Writes the request now. Stamped before the write: the response's kernel rx stamp can precede a stamp taken
    after sendall returns (the process may be descheduled in between), which would shrink TTFT."""
    rec = p.out.record
    now = time.monotonic_ns()
    rec.sent_s = (now - t0_ns) * 1e-9
    p.deadline_ns = now + int(p.timeout_s * 1e9)
    if p.failed:
        return
    try:
        p.sock.settimeout(p.timeout_s)
        p.sock.sendall(p.wire)
    except OSError as e:
        _fail(p, e)


def follow(p: Pending, t0_ns: int, reuse: bool = True, deadline: bool = True) -> Outcome:
    """Reads the response to the end. Never raises for server/network trouble: it becomes the record's error.
    deadline=False: the caller bounds the request as a whole (a gevent.Timeout raising TimeoutError), which spares
    gevent a timer per socket wait."""
    out, rec, sec = p.out, p.out.record, 1e-9
    rd = None
    try:
        if p.failed:
            return out
        if not deadline:
            p.sock.settimeout(None)
        rd, conn = _Reader(p.sock, p.deadline_ns if deadline else None), p.conn
        head = rd.head()
        conn.receive_data(head)
        if not head.endswith(b"\r\n\r\n"):
            conn.receive_data(b"")
        resp = conn.next_event()
        if not isinstance(resp, h11.Response):
            raise ConnectionError(f"no HTTP response ({type(resp).__name__})")
        rec.http_status = resp.status_code
        headers = {k.lower(): v.strip().lower() for k, v in resp.headers}
        out.emulated = headers.get(EMULATED_HEADER) == b"true"
        chunked = headers.get(b"transfer-encoding") == b"chunked"
        if resp.status_code >= 400 or not chunked:
            text = _rest(rd, conn)
            if resp.status_code >= 400:
                rec.status, rec.error = Status.ERROR, f"HTTP {resp.status_code}: {_error_text(text)}"
            else:
                rec.status, rec.error = Status.ERROR, "response is not a chunked event stream"
            rec.done_s = (rd.last_ns - t0_ns) * sec
            return out
        _events(rd, rec, t0_ns)
        out.kernel_clock = rd.kernel
        rd.complete = rd.complete and conn.their_http_version == b"1.1" and headers.get(b"connection") != b"close"
    except TimeoutError:
        rec.status, rec.error = Status.TIMEOUT, f"no complete response within {p.timeout_s:g} s"
    except (OSError, h11.ProtocolError, orjson.JSONDecodeError, ConnectionError) as e:
        rec.status, rec.error = Status.ERROR, f"{type(e).__name__}: {e}"
    finally:
        if rec.status is not Status.OK and rec.done_s is None:
            rec.done_s = (time.monotonic_ns() - t0_ns) * sec
        if p.sock is not None:
            if rd is not None and rd.complete and reuse:
                p.ep.idle.append(p.sock)
            else:
                p.sock.close()
            p.sock = None
    return out


def _events(rd: _Reader, rec: RequestRecord, t0_ns: int) -> None:
    sec = 1e-9
    times = rec.token_times_s
    saw_done = False
    for ev in SSEClient(rd.chunks()).events():
        ts = rd.last_ns
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
    if rec.done_s is None:
        rec.done_s = (rd.last_ns - t0_ns) * sec
    if times:
        rec.first_token_s = times[0]
    if rec.status is Status.OK and not saw_done:
        rec.status, rec.error = Status.ERROR, "stream ended without [DONE]"


def _rest(rd: _Reader, conn: h11.Connection) -> bytes:
    """The rest of a non-streamed body (error JSON), framed by h11."""
    parts = []
    conn.receive_data(rd.buf)
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(rd.read())
            continue
        if isinstance(ev, h11.Data):
            parts.append(bytes(ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            rd.complete = conn.their_state is h11.DONE and conn.our_state is h11.DONE
            return b"".join(parts)
        elif isinstance(ev, h11.ConnectionClosed):
            return b"".join(parts)


def stream_request(ep: Endpoint, api: str, body: bytes, *, request_id: str, request_class: str, input_tokens: int,
                   max_tokens: int, scheduled_s: float, t0_ns: int, timeout_s: float, worker: str = "",
                   reuse: bool = True) -> Outcome:
    """Send one streaming request now and follow it to the end. Never raises for server/network trouble."""
    p = prepare(ep, api, body, request_id=request_id, request_class=request_class, input_tokens=input_tokens,
                max_tokens=max_tokens, scheduled_s=scheduled_s, timeout_s=timeout_s, worker=worker, reuse=reuse)
    send(p, t0_ns)
    return follow(p, t0_ns, reuse=reuse)


def _fail(p: Pending, e: OSError) -> None:
    rec = p.out.record
    p.failed = True
    if isinstance(e, TimeoutError):
        rec.status, rec.error = Status.TIMEOUT, f"no complete response within {p.timeout_s:g} s"
    elif isinstance(e, ConnectionRefusedError):
        rec.status, rec.error = Status.ERROR, f"connection refused by {p.ep.host}:{p.ep.port} (is the endpoint up?)"
    else:
        rec.status, rec.error = Status.ERROR, f"{type(e).__name__}: {e}"
    if p.sock is not None:
        p.sock.close()
        p.sock = None


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
