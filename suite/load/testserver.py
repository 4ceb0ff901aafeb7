"""A small ground-truth OpenAI-style SSE server for tests and the client-fidelity bench.

Stamps (monotonic ns) the arrival of each request's first byte and every token's write, so a client's measured
TTFT/ITL can be compared with what the server really did. Not an engine: fixed TTFT and ITL, optional injected
errors, optional `x-pdsuite-emulated: true` header.

    python -m suite.load.testserver --port 8123 --ttft-ms 20 --itl-ms 5 [--stamps stamps.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import orjson

from suite.netutil import free_port

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n")


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Server:
    def __init__(self, ttft_ms: float, itl_ms: float, emulated: bool, fail_every: int, break_every: int) -> None:
        self.ttft, self.itl = ttft_ms / 1000, itl_ms / 1000
        self.emulated, self.fail_every, self.break_every = emulated, fail_every, break_every
        self.count = 0
        self.stamps: list[dict] = []


class Conn(asyncio.Protocol):
    def __init__(self, srv: Server) -> None:
        self.srv, self.buf, self.arrival_ns, self.tr = srv, b"", 0, None

    def connection_made(self, transport) -> None:
        self.tr = transport

    def data_received(self, data: bytes) -> None:
        if not self.buf:
            self.arrival_ns = time.monotonic_ns()
        self.buf += data
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

    def _plain(self, status: str, payload: bytes) -> None:
        self.tr.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
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
        head = HEAD + (b"x-pdsuite-emulated: true\r\n" if srv.emulated else b"") + b"\r\n"
        self.tr.write(head)
        if chat:  # role-only chunk first, like the engines: it is not a token
            self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        cut = srv.break_every and srv.count % srv.break_every == 0
        loop = asyncio.get_running_loop()
        t_first = arrival_ns / 1e9 + srv.ttft
        ctx = (chat, n_in, n_out, stamp, cut, t_first)
        loop.call_at(loop.time() + max(0.0, t_first - time.monotonic()), self._token, 0, ctx)

    def _event(self, obj: dict) -> None:
        self.tr.write(_chunk(b"data: " + orjson.dumps(obj) + b"\n\n"))

    def _token(self, i: int, ctx) -> None:
        chat, n_in, n_out, stamp, cut, t_first = ctx
        if self.tr.is_closing():
            return
        if cut and i == n_out // 2:
            self.tr.close()  # broken stream: the client must record an error
            return
        choice = {"index": 0, "delta": {"content": " t"}} if chat else {"index": 0, "text": " t"}
        payload = _chunk(b"data: " + orjson.dumps({"object": "chunk", "choices": [choice]}) + b"\n\n")
        stamp["token_ns"].append(time.monotonic_ns())
        self.tr.write(payload)
        if i + 1 < n_out:
            loop = asyncio.get_running_loop()
            when = loop.time() + max(0.0, t_first + (i + 1) * self.srv.itl - time.monotonic())
            loop.call_at(when, self._token, i + 1, ctx)
            return
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        self._event({"choices": [], "usage": usage})
        self.tr.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def serve(host: str, port: int, srv: Server, stamps_path: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(srv), host, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"testserver listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()
    if stamps_path:
        with open(stamps_path, "wb") as f:
            for s in srv.stamps:
                f.write(orjson.dumps(s) + b"\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--emulated", action="store_true", help="send x-pdsuite-emulated: true")
    p.add_argument("--fail-every", type=int, default=0, help="answer every k-th request with HTTP 500")
    p.add_argument("--break-every", type=int, default=0, help="cut every k-th stream half way")
    p.add_argument("--stamps", default=None, help="write per-request stamps (JSONL) on exit")
    a = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(a.host, a.port, Server(a.ttft_ms, a.itl_ms, a.emulated, a.fail_every, a.break_every), a.stamps))


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
