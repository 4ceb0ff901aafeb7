"""Emission error of the emulator: actual token write time minus the intended one (the end of the emulated
engine step that produced the token), at 100 / 500 / 1,000 concurrent streams, server pinned to one core.

    python bench/emulator_emission.py [--streams 100 500 1000] [--max-tokens 100] [--no-floor]

The server stamps every token write itself, right after the bytes were handed to the kernel (GET /emu/emission);
the client (a plain-socket reader on another core) keeps the streams open and counts tokens. For each stream
count the bench also runs a FLOOR: a bare Python loop that sends a frame of the same size to the same number of
loopback connections at one instant (no HTTP, no engine), read by the same kind of reader - what one core of this
machine can do at best. Prints a markdown table with the load average (the cores are shared); docs/emulator.md
keeps the results.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import selectors
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
        return json.loads(r.read())


def load1() -> float:
    return os.getloadavg()[0]


def raw_client(port: int, streams: int, prompt: int, max_tokens: int, core: int, out) -> None:
    """The streams' client, in its own process on the client core: plain sockets and one selector (a light reader,
    like the floor's, so the two rows differ only by the server). Puts (tokens received, wall seconds)."""
    os.sched_setaffinity(0, {core})
    body = json.dumps({"prompt": list(range(prompt)), "max_tokens": max_tokens, "stream": True}).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    sel, bufs = selectors.DefaultSelector(), []
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(streams)]
    t0 = time.monotonic()
    for i, s in enumerate(socks):  # connected first, then all requests back to back: they run as one batch
        s.sendall(req)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        bufs.append(bytearray())
    left, deadline = streams, time.monotonic() + 300
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(1):
            data = key.fileobj.recv(1 << 16)
            buf = bufs[key.data]
            buf += data
            if not data or buf.endswith(b"\r\n0\r\n\r\n"):  # end of the chunked body
                sel.unregister(key.fileobj)
                key.fileobj.close()
                left -= 1
    out.put((sum(b.count(b'"text":') for b in bufs), time.monotonic() - t0))


def _drain(port: int, streams: int, total: int, core: int, ready) -> None:
    os.sched_setaffinity(0, {core})
    ls = socket.create_server(("127.0.0.1", port), backlog=4096)
    ready.set()
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(streams):
        c, _ = ls.accept()
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ)
        conns.append(c)
    got, deadline = 0, time.monotonic() + 300
    while got < total and time.monotonic() < deadline:
        for k, _ in sel.select(1):
            got += len(k.fileobj.recv(1 << 16))


def floor(streams: int, steps: int, frame: int, period: float, core: int) -> dict:
    """Bare send loop: `steps` passes, each writing `frame` bytes to every connection at one deadline."""
    port = free_port()
    ready = mp.Event()
    p = mp.Process(target=_drain, args=(port, streams, streams * steps * frame, core, ready))
    p.start()
    ready.wait(10)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(streams)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as aiohttp does
    data, clock, late, first, cpu = b"x" * frame, time.monotonic, [], [], 0.0
    t = clock() + period
    for _ in range(steps):
        while clock() < t:
            pass
        stamps = []
        c0 = time.thread_time()
        for s in socks:
            s.send(data)
            stamps.append(clock())
        cpu += time.thread_time() - c0
        late.extend(x - t for x in stamps)
        first.append(stamps[0] - t)
        t = max(t + period, clock())  # re-anchor like the engine
    for s in socks:
        s.close()
    p.join(30)
    a, f = np.array(late) * 1e3, np.array(first) * 1e3
    per_step = a.reshape(steps, streams)
    itl = np.abs(np.diff(per_step, axis=0))
    return {"count": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "p99.9_ms": float(np.percentile(a, 99.9)),
            "max_ms": float(a.max()), "first_write_p99_ms": float(np.percentile(f, 99)),
            "itl_err_p99_ms": float(np.percentile(itl, 99)),
            "write_us": float((per_step[:, -1] - per_step[:, 0]).sum() / a.size * 1e3),
            "write_cpu_us": cpu / a.size * 1e6}


def stretch(s: dict) -> str:
    """How much longer the emulated timeline ran than the cost model said (re-anchoring after late writes)."""
    return f"{s['slip_ms'] / s['modelled_ms']:.0%}" if s.get("modelled_ms") else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[100, 500, 1000])
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per stream")
    ap.add_argument("--max-tokens", type=int, default=100, help="tokens per stream")
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--model-config", default="llama-3.1-8b")
    ap.add_argument("--spin-us", default="1500")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare-socket floor runs")
    ap.add_argument("--server-src", help="run the server from this source tree (before/after comparisons, e.g. "
                                         "`git archive <commit> suite | tar -x -C DIR`)")
    a = ap.parse_args()

    port = free_port()
    pin = ["taskset", "-c", str(a.server_core)] if shutil.which("taskset") else []
    server = subprocess.Popen([*pin, sys.executable, "-m", "suite.cli", "emulate", "--flavor", "vllm", "--port",
                               str(port), "--model", "bench", "--hardware", a.hardware, "--model-config",
                               a.model_config, "--spin-us", a.spin_us],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=a.server_src)  # `python -m` imports from the working directory first
    rows = []
    try:
        for _ in range(100):
            try:
                http(f"http://127.0.0.1:{port}/emu/info")
                break
            except OSError:
                time.sleep(0.2)
        for n in a.streams:
            http(f"http://127.0.0.1:{port}/emu/emission/reset", b"")
            la = load1()
            q = mp.Queue()
            c = mp.Process(target=raw_client, args=(port, n, a.prompt, a.max_tokens, a.client_core, q))
            c.start()
            tokens, wall = q.get(timeout=400)
            c.join(10)
            s = http(f"http://127.0.0.1:{port}/emu/emission")
            assert tokens == n * a.max_tokens, f"got {tokens} tokens, want {n * a.max_tokens}"
            if "max_batch" in s:  # older servers (--server-src) do not report it
                assert s["max_batch"] == n, f"only {s['max_batch']} of {n} streams ever ran in one step"
            s |= {"load": max(la, load1()), "wall_s": wall}
            rows.append(("emulator" + (" (--server-src)" if a.server_src else ""), n, s))
            print(f"emulator {n} streams: {json.dumps(s)}", file=sys.stderr)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    if not a.no_floor:
        os.sched_setaffinity(0, {a.server_core})
        for n in a.streams:
            la = load1()
            s = floor(n, a.max_tokens, 240, 12e-3, a.client_core) | {"load": max(la, load1())}
            rows.append(("floor", n, s))
            print(f"floor {n} streams: {json.dumps(s)}", file=sys.stderr)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"server on core {a.server_core}, client on core {a.client_core}; {a.hardware} / {a.model_config}, "
          f"prompt {a.prompt}, {a.max_tokens} tokens per stream; load = 1-min load average\n")
    for _, _, s in rows:  # older servers lack some columns
        s.setdefault("first_write_p99_ms", float("nan"))
        s.setdefault("itl_err_p99_ms", float("nan"))
        s.setdefault("write_us", float("nan"))
        s.setdefault("write_cpu_us", float("nan"))
    print("| what | streams | token writes | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | first write p99 ms | "
          "ITL error p99 ms | us per write (CPU) | stretch | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for what, n, s in rows:
        print(f"| {what} | {n} | {s['count']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['p99.9_ms']:.2f} | {s['max_ms']:.2f} | {s['first_write_p99_ms']:.2f} | {s['itl_err_p99_ms']:.2f} | "
              f"{s['write_us']:.1f} ({s['write_cpu_us']:.1f}) | {stretch(s)} | {s['load']:.1f} |")

if __name__ == "__main__":
    main()
