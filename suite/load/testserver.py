"""A small ground-truth OpenAI-style SSE server for tests and the client-fidelity bench.

Stamps (monotonic ns) the arrival of each request's first byte and every token's write, so a client's measured
TTFT/ITL can be compared with what the server really did. Not an engine: fixed TTFT and ITL, optional injected
errors, optional `x-pdsuite-emulated: true` header, optional engine quirks: tokens streamed with empty text (vLLM's
partial UTF-8 characters), a closing chunk that carries only the finish reason (SGLang), streams that stall.

The arrival stamp is the kernel's receive timestamp of the request's first packet (SO_TIMESTAMPNS), not when this
process got round to reading it: a busy server must not shorten its own "true" TTFT and so inflate the client
overhead measured against it. Hence a plain selector loop over non-blocking sockets (asyncio's transports hide the
ancillary data); token writes go straight to the socket and are stamped when the kernel has taken them.

    python -m suite.load.testserver --port 8123 --ttft-ms 20 --itl-ms 5 [--stamps stamps.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import selectors
import signal
import socket
import struct
import time

import orjson

from suite.load.client import SCM_TIMESTAMPNS, SO_TIMESTAMPNS, _Clock
from suite.netutil import free_port

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n")
_TS = struct.Struct("qq")


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Server:
    def __init__(self, ttft_ms: float, itl_ms: float, emulated: bool, fail_every: int, break_every: int,
                 empty_every: int = 0, finish_chunk: bool = False, stall_after: int = -1) -> None:
        self.ttft_ns, self.itl_ns = int(ttft_ms * 1e6), int(itl_ms * 1e6)
        self.emulated, self.fail_every, self.break_every = emulated, fail_every, break_every
        self.empty_every, self.finish_chunk, self.stall_after = empty_every, finish_chunk, stall_after
        self.count = 0
        self.stamps: list[dict] = []
        self.timers: list = []  # heap of (monotonic ns, seq, callback, args)
        self._seq = itertools.count()

    def at(self, t_ns: int, fn, *args) -> None:
        heapq.heappush(self.timers, (t_ns, next(self._seq), fn, args))


class Conn:
    def __init__(self, srv: Server, sock: socket.socket, sel: selectors.BaseSelector) -> None:
        self.srv, self.sock, self.sel = srv, sock, sel
        self.buf, self.out, self.arrival_ns, self.closed = b"", b"", 0, False

    def readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        if not data:
            self.close()
            return
        if not self.buf:
            ts = next((_TS.unpack_from(raw) for level, kind, raw in anc
                       if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(raw) >= 16), None)
            self.arrival_ns = (ts[0] * 1_000_000_000 + ts[1] - _Clock.offset()) if ts else time.monotonic_ns()
        self.buf += data
        while not self.closed:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            n = int(headers.get("content-length", "0"))
            if len(self.buf) < head_end + 4 + n:
                return
            body, self.buf = self.buf[head_end + 4: head_end + 4 + n], self.buf[head_end + 4 + n:]
            method, path, _ = head[0].split(" ", 2)
            self.handle(method, path, headers, body, self.arrival_ns)
            self.arrival_ns = time.monotonic_ns()  # a pipelined next request (clients here never pipeline)

    def write(self, data: bytes) -> bool:
        """Hands bytes to the kernel now; what it cannot take waits for the socket to drain (never stamped)."""
        if self.closed:
            return False
        if self.out:
            self.out += data
            return False
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.close()
            return False
        if n < len(data):
            self.out = data[n:]
            self.sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)
            return False
        return True

    def writable(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.out = self.out[n:]
        if not self.out:
            self.sel.modify(self.sock, selectors.EVENT_READ, self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sel.unregister(self.sock)
            self.sock.close()

    def _plain(self, status: str, payload: bytes) -> None:
        self.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (status.encode(), len(payload), payload))

    def handle(self, method: str, path: str, headers: dict, body: bytes, arrival_ns: int) -> None:
        srv = self.srv
        if method == "GET" and path in ("/health", "/v1/models"):
            self._plain("200 OK", b'{"object":"list","data":[{"id":"test","object":"model"}]}')
            return
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            self._plain("404 Not Found", b'{"error":{"message":"not found"}}')
            return
        srv.count += 1
        if srv.fail_every and srv.count % srv.fail_every == 0:
            self._plain("500 Internal Server Error", b'{"error":{"message":"injected failure","code":500}}')
            return
        req = orjson.loads(body)
        chat = path.endswith("chat/completions")
        prompt = req.get("prompt") if not chat else req["messages"][-1]["content"]
        n_in = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        n_out = int(req.get("max_tokens") or 16)
        stamp = {"id": headers.get("x-request-id", str(srv.count)), "arrival_ns": arrival_ns, "token_ns": []}
        srv.stamps.append(stamp)
        self.write(HEAD + (b"x-pdsuite-emulated: true\r\n" if srv.emulated else b"") + b"\r\n")
        if chat:  # role-only chunk first, like the engines: it is not a token
            self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        cut = srv.break_every and srv.count % srv.break_every == 0
        t_first = arrival_ns + srv.ttft_ns
        srv.at(t_first, self._token, 0, (chat, n_in, n_out, stamp, cut, t_first))

    def _event(self, obj: dict) -> None:
        self.write(_chunk(b"data: " + orjson.dumps(obj) + b"\n\n"))

    def _token(self, i: int, ctx) -> None:
        chat, n_in, n_out, stamp, cut, t_first = ctx
        if self.closed:
            return
        if cut and i == n_out // 2:
            self.close()  # broken stream: the client must record an error
            return
        if i == self.srv.stall_after:
            return  # stalled: the connection stays open and silent
        text = "" if self.srv.empty_every and i % self.srv.empty_every == 0 else " t"  # token 0 empty too
        choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
        if i + 1 == n_out and not (self.srv.finish_chunk and chat):
            choice["finish_reason"] = "length"
        payload = _chunk(b"data: " + orjson.dumps({"object": "chunk", "choices": [choice]}) + b"\n\n")
        if not self.write(payload):  # the client is not reading: the bytes wait here, the stamp is a lower bound
            stamp["queued"] = stamp.get("queued", 0) + 1
        stamp["token_ns"].append(time.monotonic_ns())
        if i + 1 < n_out:
            self.srv.at(t_first + (i + 1) * self.srv.itl_ns, self._token, i + 1, ctx)
            return
        if self.srv.finish_chunk and chat:  # SGLang's closing chat chunk: no token in it
            self._event({"choices": [{"index": 0, "delta": {"role": None, "content": None},
                                      "finish_reason": "length"}]})
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        self._event({"choices": [], "usage": usage})
        self.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def serve(host: str, port: int, srv: Server, stamps_path: str | None) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    print(f"testserver listening on {host}:{port}", flush=True)
    while not stop:
        now = time.monotonic_ns()
        wait = 0.1 if not srv.timers else max(0.0, min(0.1, (srv.timers[0][0] - now) / 1e9))
        for key, mask in sel.select(wait):
            if key.data is None:
                _accept(lsock, srv, sel)
            elif mask & selectors.EVENT_WRITE:
                key.data.writable()
            if key.data is not None and mask & selectors.EVENT_READ and not key.data.closed:
                key.data.readable()
        now = time.monotonic_ns()
        while srv.timers and srv.timers[0][0] <= now:
            _, _, fn, args = heapq.heappop(srv.timers)
            fn(*args)
    if stamps_path:
        with open(stamps_path, "wb") as f:
            for s in srv.stamps:
                f.write(orjson.dumps(s) + b"\n")


def _accept(lsock: socket.socket, srv: Server, sel: selectors.BaseSelector) -> None:
    while True:
        try:
            sock, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # else user-space arrival stamps
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sel.register(sock, selectors.EVENT_READ, Conn(srv, sock, sel))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--emulated", action="store_true", help="send x-pdsuite-emulated: true")
    p.add_argument("--fail-every", type=int, default=0, help="answer every k-th request with HTTP 500")
    p.add_argument("--break-every", type=int, default=0, help="cut every k-th stream half way")
    p.add_argument("--empty-every", type=int, default=0, help="every k-th token (the first included) has empty text")
    p.add_argument("--finish-chunk", action="store_true", help="chat: end with a chunk that carries only finish_reason")
    p.add_argument("--stall-after", type=int, default=-1, help="stop streaming (connection open) after n tokens")
    p.add_argument("--stamps", default=None, help="write per-request stamps (JSONL) on exit")
    a = p.parse_args(argv)
    serve(a.host, a.port, Server(a.ttft_ms, a.itl_ms, a.emulated, a.fail_every, a.break_every, a.empty_every,
                                 a.finish_chunk, a.stall_after), a.stamps)


if __name__ == "__main__":
    main()


class running:  # lower case: used as `with running(ttft_ms=5) as url:`
    """Start the test server in a subprocess, wait until it accepts connections, stop it on exit."""

    def __init__(self, *args: str, taskset: str | None = None, **opts) -> None:
        self.port = free_port()
        self.argv = [f"--port={self.port}", *args]
        self.argv += [f"--{k.replace('_', '-')}={v}" for k, v in opts.items() if v is not True]
        self.argv += [f"--{k.replace('_', '-')}" for k, v in opts.items() if v is True]
        self.taskset, self.proc = taskset, None

    def __enter__(self) -> str:
        import socket
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "suite.load.testserver", *self.argv]
        if self.taskset:
            cmd = ["taskset", "-c", self.taskset, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return f"http://127.0.0.1:{self.port}"
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("test server did not start")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)
