"""Streaming OpenAI client: one request -> one RequestRecord with true streaming timings.

Blocking-socket code, so it runs as-is in a plain process (`pdsuite ping`) and cooperatively under gevent
(Locust workers monkey-patch `socket`). The request and the response head go through h11, SSE events through
sseclient-py. We own the socket so that every token carries the kernel's arrival timestamp (SO_TIMESTAMPNS): a
token's time is when its packet reached this host, not when a busy Python process got round to reading it.

The chunked body is framed here rather than by h11, which costs about half the client's CPU per token when
fed one chunk at a time; reads take what is there, see read_stamped for what that means for token times.
A request is split into prepare (connection, bytes) / send (at the scheduled time) / read the stream, so a
dispatcher can send on time and leave the reading to others: `follow` (blocking reads) or suite.load.mux (one
loop over all of a worker's streams), both feeding the same push parser, `Response`.
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
CONNECT_TIMEOUT_S = 10.0  # the kernel completes a handshake at once when the server listens; longer: it does not


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
    addr: tuple | None = None  # (family, type, proto, sockaddr), resolved on the first connect

    def __post_init__(self) -> None:
        u = urlsplit(self.url if "://" in self.url else f"http://{self.url}")
        if u.scheme != "http":
            raise ValueError(f"only http:// endpoints are supported, got {self.url!r}")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.base = u.path.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]

    def connect(self, timeout: float) -> socket.socket:
        """A new connection. The address is resolved once per endpoint (a lookup per request costs a gevent
        thread-pool round trip) and again after a failed connect (a restarted container may have a new IP)."""
        if self.addr is None:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
            self.addr = (family, kind, proto, sockaddr)
        family, kind, proto, sockaddr = self.addr
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except OSError:
            sock.close()
            self.addr = None
            raise
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


def read_stamped(sock) -> tuple[bytes, int, bool]:
    """One read of what is there: (data, arrival ns on the monotonic clock, whether the kernel stamped it).

    A token's time is the stamp of the read that completed it. A read that finds several tokens at once gives them
    one time, the last packet's: the kernel has then merged their packets in the receive queue and kept only the
    latest stamp, so smaller reads would not recover the earlier ones (the ITL-size error a reader more than one
    inter-token gap late makes)."""
    data, anc, _, _ = sock.recvmsg(_READ, 64)
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = _TS.unpack_from(raw)
            return data, sec * 1_000_000_000 + nsec - _Clock.offset(), True
    return data, time.monotonic_ns(), False


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
            max_tokens: int, scheduled_s: float, timeout_s: float, worker: str = "", reuse: bool = True,
            connect: bool = True) -> Pending:
    """The request's bytes, its record and (connect=True) a connection. connect=False: `send` takes one, the way
    a closed-loop stream builds its next request while the current one is still streaming."""
    rec = RequestRecord(request_id=request_id, request_class=request_class, api=api, worker=worker,
                        input_tokens=input_tokens, max_tokens=max_tokens, scheduled_s=scheduled_s)
    conn = h11.Connection(h11.CLIENT)
    p = Pending(ep, api, timeout_s, Outcome(rec), conn)
    target = (ep.base + api_path(api)).encode()
    headers = [("Host", f"{ep.host}:{ep.port}"), ("Content-Type", "application/json"),
               ("Content-Length", str(len(body))), ("Accept", "text/event-stream"), ("X-Request-Id", request_id)]
    p.wire = (conn.send(h11.Request(method="POST", target=target, headers=headers)) + conn.send(h11.Data(body))
              + conn.send(h11.EndOfMessage()))
    if not reuse:
        ep.close()
    if connect:
        _take(p)
    return p


def _take(p: Pending) -> None:
    limit = min(p.timeout_s, CONNECT_TIMEOUT_S)
    try:
        p.sock = p.ep.take(limit)
    except TimeoutError:
        p.failed = True
        p.out.record.status = Status.TIMEOUT
        p.out.record.error = f"no connection to {p.ep.host}:{p.ep.port} within {limit:g} s (does it accept?)"
    except OSError as e:
        _fail(p, e)


def send(p: Pending, t0_ns: int) -> None:
    """Writes the request now. Stamped before the write: the response's kernel rx stamp can precede a stamp taken
    after sendall returns (the process may be descheduled in between), which would shrink TTFT."""
    rec = p.out.record
    if p.sock is None and not p.failed:
        _take(p)
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


class _Events:
    """sseclient-py's event source: the complete events of the current read."""

    data = b""

    def __iter__(self):
        yield self.data


class Response:
    """Push parser of one streamed response: `feed(data, arrival_ns, kernel)` with each read until it returns True.

    Used by the blocking `follow` (one request per process or greenlet) and by suite.load.mux (all of a worker's
    streams read by one loop). Never raises for server/network trouble: it becomes the record's error. The head
    and non-streamed bodies (errors) go through h11; a chunked body is framed here and its complete SSE events are
    handed to sseclient-py, all events of one read carrying that read's arrival time."""

    def __init__(self, p: Pending, t0_ns: int) -> None:
        self.p, self.rec, self.t0_ns = p, p.out.record, t0_ns
        self.buf = b""  # unframed bytes: the head, then chunk framing
        self.sse = b""  # framed SSE text not yet ending on an event boundary
        self.complete_events = _Events()  # what sseclient-py parses next: whole events only
        self.sse_client = SSEClient(self.complete_events)  # one per response (its constructor takes a lock)
        self.step = Response._head  # what the next read feeds: _head -> _events (SSE) or _plain (an error)
        # (plain functions, not bound methods: a bound method kept on self is a cycle, left to the collector)
        self.parts: list[bytes] = []  # a non-streamed body
        self.last_ns = 0
        self.saw_done = False
        self.keep_alive = False
        self.reusable = False  # the whole response was read: the connection can carry another request
        self.finished = p.failed

    def feed(self, data: bytes, arrival_ns: int, kernel: bool) -> bool:
        """One read's bytes (b"" = the server closed). True once the record is final."""
        self.last_ns = arrival_ns
        self.p.out.kernel_clock = kernel
        try:
            self.step(self, data)
        except (h11.ProtocolError, orjson.JSONDecodeError, ConnectionError, ValueError, UnicodeDecodeError) as e:
            self.fail(Status.ERROR, f"{type(e).__name__}: {e}")
        return self.finished

    def fail(self, status: Status, error: str, now_ns: int | None = None) -> None:
        rec = self.rec
        if not self.finished:
            rec.status, rec.error = status, error
            rec.done_s = ((now_ns or time.monotonic_ns()) - self.t0_ns) * 1e-9
            self.finished, self.reusable = True, False

    def timeout(self) -> None:
        self.fail(Status.TIMEOUT, f"no complete response within {self.p.timeout_s:g} s")

    def _head(self, data: bytes) -> None:
        self.buf += data
        i = self.buf.find(b"\r\n\r\n")
        if i < 0 and data:
            return
        conn = self.p.conn
        head, self.buf = (self.buf[:i + 4], self.buf[i + 4:]) if i >= 0 else (self.buf, b"")
        conn.receive_data(head)
        if i < 0:
            conn.receive_data(b"")
        resp = conn.next_event()
        if not isinstance(resp, h11.Response):
            raise ConnectionError(f"no HTTP response ({type(resp).__name__})")
        rec = self.rec
        rec.http_status = resp.status_code
        headers = {k.lower(): v.strip().lower() for k, v in resp.headers}
        self.p.out.emulated = headers.get(EMULATED_HEADER) == b"true"
        self.keep_alive = conn.their_http_version == b"1.1" and headers.get(b"connection") != b"close"
        rest, self.buf = self.buf, b""
        if resp.status_code < 400 and headers.get(b"transfer-encoding") == b"chunked":
            self.step = Response._events
            self._frame(rest)
        else:
            self.step = Response._plain
            if rest:
                conn.receive_data(rest)
            self._pump()

    def _events(self, data: bytes) -> None:
        if not data:
            raise ConnectionError("connection closed mid-body")
        self._frame(data)

    def _frame(self, data: bytes) -> None:
        """HTTP/1.1 chunk framing, then the complete SSE events."""
        buf, pos, payload, end = self.buf + data, 0, [], False
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            try:
                size = int(buf[pos:nl].split(b";", 1)[0], 16)
            except ValueError:
                raise h11.RemoteProtocolError(f"bad chunk size line {buf[pos:nl][:40]!r}") from None
            start = nl + 2
            if size == 0:
                if buf.find(b"\r\n\r\n", start - 2) >= 0:  # the blank line after the (rare) trailers
                    end = True
                break
            if len(buf) < start + size + 2:
                break
            payload.append(buf[start:start + size])
            pos = start + size + 2
        self.buf = buf[pos:]
        if payload:
            text = self.sse + b"".join(payload)
            cut = max(text.rfind(b"\n\n") + 2, text.rfind(b"\r\r") + 2, text.rfind(b"\r\n\r\n") + 4, 0)
            self.sse = text[cut:]
            if cut:
                self.complete_events.data = text[:cut]
                for ev in self.sse_client.events():
                    self._event(ev.data)
        if end:
            self._end()

    def _event(self, data: str) -> None:
        rec, ts = self.rec, self.last_ns
        if data == "[DONE]":
            self.saw_done = True
            rec.done_s = (ts - self.t0_ns) * 1e-9
            return
        obj = orjson.loads(data)
        if rec.response_id is None:  # the engine's id for the request: joins the record to the engine's spans
            rec.response_id = obj.get("id")
        if obj.get("error"):
            rec.status, rec.error = Status.ERROR, f"stream error: {_error_text(orjson.dumps(obj['error']))}"
            return
        if any(_is_token(c) for c in obj.get("choices") or ()):
            rec.token_times_s.append((ts - self.t0_ns) * 1e-9)
            if rec.first_token_s is None:
                rec.first_token_s = rec.token_times_s[0]  # kept even if the stream breaks later
        usage = obj.get("usage")
        if usage:
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.completion_tokens = usage.get("completion_tokens")

    def _end(self) -> None:
        rec = self.rec
        if rec.done_s is None:
            rec.done_s = (self.last_ns - self.t0_ns) * 1e-9
        if rec.token_times_s:
            rec.first_token_s = rec.token_times_s[0]
        if rec.status is Status.OK and not self.saw_done:
            rec.status, rec.error = Status.ERROR, "stream ended without [DONE]"
        self.reusable = self.keep_alive
        self.finished = True

    def _plain(self, data: bytes) -> None:
        """A non-streamed body (an error's JSON), framed by h11 (b"": the server closed)."""
        self.p.conn.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        conn = self.p.conn
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                return
            if isinstance(ev, h11.Data):
                self.parts.append(bytes(ev.data))
                continue
            reusable = isinstance(ev, h11.EndOfMessage) and conn.their_state is h11.DONE and \
                conn.our_state is h11.DONE
            if isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                text, rec = b"".join(self.parts), self.rec
                if rec.http_status >= 400:
                    rec.status, rec.error = Status.ERROR, f"HTTP {rec.http_status}: {_error_text(text)}"
                else:
                    rec.status, rec.error = Status.ERROR, "response is not a chunked event stream"
                rec.done_s = (self.last_ns - self.t0_ns) * 1e-9
                self.reusable, self.finished = reusable and self.keep_alive, True
                return

    def release(self, reuse: bool = True) -> None:
        """The socket goes back to the endpoint's keep-alive pool if the response was read whole, else closes."""
        p = self.p
        if p.sock is not None:
            if self.reusable and reuse and self.rec.status is not Status.TIMEOUT:
                p.ep.idle.append(p.sock)
            else:
                p.sock.close()
            p.sock = None


def follow(p: Pending, t0_ns: int, reuse: bool = True, deadline: bool = True) -> Outcome:
    """Reads the response to the end with blocking reads. Never raises for server/network trouble: it becomes the
    record's error. deadline=False: the caller bounds the request as a whole (e.g. a gevent.Timeout)."""
    resp = Response(p, t0_ns)
    try:
        if not p.failed:
            p.sock.settimeout(None)
        while not resp.finished:
            if deadline:
                left = (p.deadline_ns - time.monotonic_ns()) / 1e9
                if left <= 0:
                    raise TimeoutError
                p.sock.settimeout(left)
            try:
                data, ts, kernel = read_stamped(p.sock)
            except (BlockingIOError, InterruptedError):
                continue
            resp.feed(data, ts, kernel)
    except TimeoutError:
        resp.timeout()
    except OSError as e:
        resp.fail(Status.ERROR, f"{type(e).__name__}: {e}")
    finally:
        resp.fail(Status.CANCELLED, "stopped while in flight")  # only if nothing else ended it (GreenletExit)
        resp.release(reuse)
    return p.out


def stream_request(ep: Endpoint, api: str, body: bytes, *, request_id: str, request_class: str, input_tokens: int,
                   max_tokens: int, scheduled_s: float, t0_ns: int, timeout_s: float, worker: str = "",
                   reuse: bool = True) -> Outcome:
    """Send one streaming request now and follow it to the end. Never raises for server/network trouble."""
    p = prepare(ep, api, body, request_id=request_id, request_class=request_class, input_tokens=input_tokens,
                max_tokens=max_tokens, scheduled_s=scheduled_s, timeout_s=timeout_s, worker=worker, reuse=reuse)
    send(p, t0_ns)
    return follow(p, t0_ns, reuse=reuse)


def _is_token(choice: dict) -> bool:
    """A streamed choice that carries a token, as the engines count them (vLLM's TTFT is its first output token):
    its text may be empty - vLLM streams a token that ends inside a UTF-8 character as "" - but it is there.
    Not tokens: chat's role announcement (delta with "role" and empty content), which precedes the first token,
    and SGLang's closing chat chunk, whose delta holds no text at all (content null) beside the finish reason."""
    d = choice.get("delta")
    if d is None:
        return choice.get("text") is not None
    text = d.get("content")
    if text is None:
        text = d.get("reasoning_content")
    return text is not None and (text != "" or not d.get("role"))


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
