"""The emulator's token hot path: templated frames equal the reference SSE events byte for byte, bulk histogram
observations equal one-by-one ones, tokens are never written before their intended time, a vanished client is
dropped, and a reader that stops reading is counted (not silently stamped as on time)."""

import asyncio
import socket

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from suite.emulator.costmodel import CostModel
from suite.emulator.hardware import PROFILES
from suite.emulator.metrics import EmuMetrics
from suite.emulator.protocol import Responder, parse_request
from suite.emulator.server import EmulatorServer, StreamSink
from suite.frameworks.base import Role, get
from suite.modelcfg import load

COST = CostModel(load("tiny-llama"), PROFILES["cpu-tiny"])


class FakeTransport:
    def write(self, b: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: return 0
    def is_closing(self) -> bool: return False


def dechunk(frames: list[bytes]) -> bytes:
    out = b""
    for f in frames:
        size, rest = f.split(b"\r\n", 1)
        assert int(size, 16) == len(rest) - 2 and rest.endswith(b"\r\n")
        out += rest[:-2]
    return out


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("usage", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_stream_frames_equal_reference_events(chat, usage, chunked):
    body = {"stream": True, "max_tokens": 12, "stream_options": {"include_usage": usage}}
    body |= {"messages": [{"role": "user", "content": "a b c"}]} if chat else {"prompt": "a b c"}
    p = parse_request(body, chat, "m", 1000)
    rb = Responder(p)
    sink = StreamSink(FakeTransport(), chunked, rb, 12, usage, lambda e: None)
    frames = [sink.frame(i) for i in range(12)]
    got = dechunk(frames) if chunked else b"".join(frames)
    want = b"".join(rb.chunk(i, i == 11) for i in range(12)) + (rb.usage_chunk(12) if usage else b"")
    assert got == want + b"data: [DONE]\n\n"
    events = [orjson.loads(x[6:]) for x in got.split(b"\n\n") if x.startswith(b"data: {")]
    assert events[-1 - usage]["choices"][0]["finish_reason"] == "length"  # valid JSON, last token marked


def test_observe_many_exposes_what_observe_does():
    values = [0.0, 0.004, 0.01, 0.0101, 0.3, 7.0, 1e9]
    one, bulk = (EmuMetrics(get("sglang"), Role.DECODE, "m", "h") for _ in range(2))
    for v in values:
        one.observe("itl_s", v)
    bulk.observe_many("itl_s", values)

    def itl(m: EmuMetrics) -> list[str]:
        return [x for x in m.render().decode().splitlines() if "inter_token" in x and "_created" not in x]
    assert itl(one) == itl(bulk) and any(x.endswith(" 7.0") for x in itl(bulk) if "_count" in x)


def make() -> EmulatorServer:
    return EmulatorServer(get("vllm"), Role.COLOCATED, COST, host="127.0.0.1", port=0, model="tiny",
                          hardware="cpu-tiny")


def test_tokens_of_concurrent_streams_never_written_early():
    async def go():
        srv = make()
        async with TestServer(srv.app()) as ts, ClientSession() as s:
            body = {"model": "tiny", "prompt": [1] * 8, "max_tokens": 15, "stream": True}

            async def one() -> int:
                async with s.post(ts.make_url("/v1/completions"), json=body) as r:
                    return sum([line.startswith(b"data: {") async for line in r.content])
            assert await asyncio.gather(*(one() for _ in range(20))) == [15] * 20
            async with s.get(ts.make_url("/emu/emission")) as r:
                summary = await r.json()
        assert summary["count"] == 300 and summary["queued_writes"] == 0
        assert summary["max_batch"] > 1 and summary["itl_err_p50_ms"] >= 0  # one pass per step; ITL error kept
        assert srv.engine.emission.late.values().min() >= 0.0  # written at or after the step end, never before
    asyncio.run(asyncio.wait_for(go(), 30))


def test_vanished_client_is_dropped_and_engine_keeps_serving():
    async def go():
        srv = make()
        async with TestServer(srv.app()) as ts:
            async with ClientSession() as s:
                body = {"model": "tiny", "prompt": [1] * 8, "max_tokens": 100_000, "stream": True}
                r = await s.post(ts.make_url("/v1/completions"), json=body)
                for _ in range(3):
                    await r.content.readline()
                r.close()
            for _ in range(200):
                if not srv.sched.running and not srv.sched.waiting:
                    break
                await asyncio.sleep(0.01)
            assert not srv.sched.running, "stream of a closed connection still decoding"
            async with ClientSession() as s, s.post(ts.make_url("/v1/completions"),
                                                    json={"prompt": "a", "max_tokens": 3}) as r:
                assert (await r.json())["usage"]["completion_tokens"] == 3
    asyncio.run(asyncio.wait_for(go(), 30))


def test_client_that_stops_reading_is_counted_as_queued():
    """Bytes left in user space were not handed to the kernel: the stats must say so, not stamp them on time."""
    async def go():
        srv = make()
        async with TestServer(srv.app()) as ts:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window: the server backs up fast
            sock.connect(("127.0.0.1", ts.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            body = orjson.dumps({"model": "tiny", "prompt": [1] * 8, "max_tokens": 100_000, "stream": True})
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            await reader.readline()  # status line, then never read again
            for _ in range(100):
                if srv.sched.running:
                    break
                await asyncio.sleep(0.01)
            # the kernel would otherwise absorb megabytes first (loopback autotuning): shrink the server's buffer
            transport = srv.sched.running[0].sink.write.__self__
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            for _ in range(300):
                if srv.engine.emission.queued:
                    break
                await asyncio.sleep(0.02)
            queued = srv.engine.emission.queued
            writer.close()
        assert queued > 0, srv.engine.emission.summary()
    asyncio.run(asyncio.wait_for(go(), 30))
