"""Emission error of the emulator: actual token write time minus the intended one (the end of the emulated
engine step that produced the token), at 100 / 500 / 1,000 concurrent streams, server pinned to one core.

    python bench/emulator_emission.py [--streams 100 500 1000] [--server-core 0] [--client-core 1]

The server records the lateness of every token write itself (GET /emu/emission); the client (another core)
only keeps the streams open and counts tokens. Prints a markdown table (docs/emulator.md keeps the results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
        return json.loads(r.read())


async def client(port: int, streams: int, prompt: int, max_tokens: int) -> tuple[int, float]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"prompt": list(range(prompt)), "max_tokens": max_tokens, "stream": True}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
        async def one() -> int:
            n = 0
            async with s.post(url, json=body) as r:
                async for line in r.content:
                    n += line.startswith(b"data: {")
            return n
        t0 = time.monotonic()
        counts = await asyncio.gather(*(one() for _ in range(streams)))
        return sum(counts), time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[100, 500, 1000])
    ap.add_argument("--server-core", default="0")
    ap.add_argument("--client-core", default="1")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per stream")
    ap.add_argument("--max-tokens", type=int, default=200, help="tokens per stream")
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--model-config", default="llama-3.1-8b")
    ap.add_argument("--spin-us", default="1500")
    a = ap.parse_args()

    port = free_port()
    pin = ["taskset", "-c", a.server_core] if shutil.which("taskset") else []
    server = subprocess.Popen([*pin, sys.executable, "-m", "suite.cli", "emulate", "--flavor", "vllm", "--port",
                               str(port), "--model", "bench", "--hardware", a.hardware, "--model-config",
                               a.model_config, "--spin-us", a.spin_us],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        for _ in range(100):
            try:
                http(f"http://127.0.0.1:{port}/health".replace("/health", "/emu/info"))
                break
            except OSError:
                time.sleep(0.2)
        if pin:
            os.sched_setaffinity(0, {int(a.client_core)})
        for n in a.streams:
            http(f"http://127.0.0.1:{port}/emu/emission/reset", b"")
            tokens, wall = asyncio.run(client(port, n, a.prompt, a.max_tokens))
            s = http(f"http://127.0.0.1:{port}/emu/emission")
            assert tokens == n * a.max_tokens, f"got {tokens} tokens, want {n * a.max_tokens}"
            rows.append((n, s, wall))
            print(f"{n} streams: {json.dumps(s)} wall {wall:.1f}s", file=sys.stderr)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"server on core {a.server_core}, client on core {a.client_core}; {a.hardware} / {a.model_config}, "
          f"prompt {a.prompt}, {a.max_tokens} tokens per stream\n")
    print("| streams | token writes | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for n, s, wall in rows:
        print(f"| {n} | {s['count']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['p99.9_ms']:.2f} | {s['max_ms']:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
