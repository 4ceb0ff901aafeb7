"""The two P/D hand-offs the real routers drive, chosen by the framework's `emulator_handoff`.

nixl_pull (vLLM NixlConnector, driven by vllm-router / the toy proxy): P gets kv_transfer_params
  {do_remote_decode: true}, prefills, keeps the blocks and answers with kv_transfer_params naming its side
  channel (remote_engine_id/host/port/block_ids/request_id). D gets {do_remote_prefill: true, ...}, claims the
  blocks over HTTP on P's side channel (--kv-port), then waits the modelled transfer time. D records nixl_*.
bootstrap_room (SGLang, driven by sglang-router): both sides get bootstrap_host/port/room at once. P runs the
  bootstrap server (--bootstrap-port); D asks it for the route, then long-polls the room until P's prefill is
  done; both then wait the modelled transfer time. P records kv_transfer_latency/total/speed.
Field names come from the framework module (`emulator_handoff_fields`). Bad fields: HTTP 400, never a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from suite.emulator.protocol import ApiError, Parsed
from suite.frameworks.base import Role


@dataclass
class Plan:
    """How the server runs one request on this engine."""

    remote_kv: int = 0  # prompt tokens whose KV comes from the other engine
    ready_delay: float = 0.0  # seconds until that KV has arrived
    max_tokens: int | None = None  # forced output length (P: 1)
    sources: dict[str, int] = field(default_factory=dict)  # prompt tokens by source (vLLM metric)
    finish: Callable[[float], Awaitable[dict]] | None = None  # after the engine finished: extra response fields
    external_queries: int = 0  # prompt tokens a KV connector was asked about (vLLM external_prefix_cache_*)
    external_hits: int = 0  # of those, tokens it supplied (NIXL hand-off on D, the shared pool on P)
    cache_hits: int = 0  # prompt tokens found in this engine's GPU prefix cache (vllm:prefix_cache_hits)
    pool_hits: int = 0  # prompt tokens loaded from the shared KV pool (SGLang cached_tokens{cache_source=storage})


class Handoff:
    def __init__(self, srv) -> None:  # srv: suite.emulator.server.EmulatorServer
        self.srv = srv
        self.f = srv.fw.emulator_handoff_fields
        self.role: Role = srv.role
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.srv.kv_timeout, connect=3))

    async def stop(self) -> None:
        if self._session:
            await self._session.close()
        for r in self._runners:
            await r.cleanup()

    async def _serve(self, app: web.Application, port: int) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.srv.host, port).start()
        self._runners.append(runner)

    async def prepare(self, p: Parsed, rid: str) -> Plan:
        return Plan()

    def _fail(self, msg: str) -> ApiError:
        self.srv.metrics.inc("kv_failed")
        return ApiError(msg)


class NixlPull(Handoff):
    """vLLM P/D over NixlConnector (pull by D), with an HTTP side channel standing in for NIXL."""

    def __init__(self, srv) -> None:
        super().__init__(srv)
        self.engine_id = str(uuid.uuid4())
        self._blocks = itertools.count(1)
        self._held: dict[int, tuple[int, list[int], float]] = {}  # first block -> (tokens, blocks, expiry)

    async def start(self) -> None:
        await super().start()
        if self.srv.kv_port:
            app = web.Application()
            app.router.add_post("/emu/nixl/read", self._read)
            app.router.add_get("/emu/nixl/metadata", self._metadata)
            await self._serve(app, self.srv.kv_port)

    async def _metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"engine_id": self.engine_id, "emulated": True, "block_size": self._block_size})

    @property
    def _block_size(self) -> int:
        return self.srv.fw.emulator_block_size

    async def _read(self, request: web.Request) -> web.Response:
        """D claims the blocks P holds for one request (what a NIXL READ + notification does)."""
        now = time.monotonic()
        for k in [k for k, (_, _, exp) in self._held.items() if exp < now]:
            del self._held[k]  # P frees blocks D never read (VLLM_NIXL_ABORT_REQUEST_TIMEOUT)
        try:
            body = await request.json()
            engine_id, blocks = body["engine_id"], body["block_ids"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "bad read request"}, status=400)
        if engine_id != self.engine_id:
            return web.json_response({"error": f"unknown engine id {engine_id!r}"}, status=404)
        held = self._held.get(blocks[0]) if blocks else None
        if held is None or held[1] != blocks:
            return web.json_response({"error": "no such blocks held (expired or already read)"}, status=404)
        del self._held[blocks[0]]
        return web.json_response({"tokens": held[0], "bytes": self.srv.cost.transfer_bytes(held[0])})

    async def prepare(self, p: Parsed, rid: str) -> Plan:
        params = p.body.get(self.f["params"])
        if params is None or self.role is Role.COLOCATED:  # no KV connector: vLLM ignores the field
            return Plan()
        if not isinstance(params, dict):
            raise ApiError(f"{self.f['params']} must be an object", param=self.f["params"])
        if params.get(self.f["decode_flag"]):
            if self.role is not Role.PREFILL:
                raise ApiError(f"{self.f['decode_flag']} needs a KV producer; this engine is the decode side")
            # vLLM asks its connector about every request (scheduler.py: queries = prompt - local hits)
            return Plan(max_tokens=1, sources={"local_compute": p.prompt_tokens}, external_queries=p.prompt_tokens,
                        finish=lambda now: self._hold(p.prompt_tokens, rid))
        if params.get(self.f["prefill_flag"]):
            if self.role is not Role.DECODE:
                raise ApiError(f"{self.f['prefill_flag']} needs a KV consumer; this engine is the prefill side")
            return await self._pull(p, params)
        return Plan()

    async def _hold(self, tokens: int, rid: str) -> dict:
        n = -(-tokens // self._block_size)
        blocks = [next(self._blocks) for _ in range(n)]
        if blocks:
            self._held[blocks[0]] = (tokens, blocks, time.monotonic() + self.srv.kv_hold_s)
        return {self.f["params"]: {
            self.f["prefill_flag"]: True, self.f["decode_flag"]: False, self.f["blocks"]: blocks,
            self.f["engine_id"]: self.engine_id, self.f["request_id"]: rid, self.f["host"]: self.srv.host,
            self.f["port"]: self.srv.kv_port, "tp_size": self.srv.tp}}

    async def _pull(self, p: Parsed, params: dict) -> Plan:
        f = self.f
        engine_id, host, port, blocks = (params.get(f[k]) for k in ("engine_id", "host", "port", "blocks"))
        bad = [f[k] for k, v, ok in (("engine_id", engine_id, isinstance(engine_id, str) and engine_id),
                                     ("host", host, isinstance(host, str) and host),
                                     ("port", port, isinstance(port, int) and 0 < port < 65536),
                                     ("blocks", blocks, isinstance(blocks, list)
                                      and all(isinstance(b, int) for b in blocks))) if not ok]
        if bad:
            raise self._fail(f"{f['params']}: missing or invalid {', '.join(bad)} for a remote prefill")
        if not blocks:  # prompt shorter than a block: nothing to pull, D computes it all
            return Plan(sources={"local_compute": p.prompt_tokens})
        t0 = time.monotonic()
        try:
            async with self._session.post(f"http://{host}:{port}/emu/nixl/read",
                                          json={"engine_id": engine_id, "block_ids": blocks,
                                                "request_id": params.get(f["request_id"])}) as r:
                data = await r.json(content_type=None)
                if r.status != 200:
                    raise self._fail(f"KV transfer from {host}:{port} failed: {data.get('error', r.status)}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise self._fail(f"KV transfer from {host}:{port} failed: {type(e).__name__} {e}".strip()) from None
        tokens = int(data["tokens"])
        if tokens != p.prompt_tokens:
            raise self._fail(f"KV transfer holds {tokens} prompt tokens, the request has {p.prompt_tokens}")
        post = time.monotonic() - t0
        xfer = self.srv.cost.transfer_s(tokens)
        m, layers = self.srv.metrics, self.srv.cost.model.layers
        m.observe("kv_xfer_s", xfer)
        m.observe("kv_post_s", post)
        m.observe("kv_bytes", self.srv.cost.transfer_bytes(tokens))
        m.observe("kv_descriptors", len(blocks) * layers * 2)
        remote = tokens - 1  # vLLM D recomputes the last prompt token to sample the first output token
        return Plan(remote_kv=remote, ready_delay=xfer, external_queries=p.prompt_tokens, external_hits=remote,
                    sources={"external_kv_transfer": remote, "local_compute": p.prompt_tokens - remote})


@dataclass
class _Room:
    prefill_done: asyncio.Future  # -> prompt tokens
    claimed: asyncio.Future  # -> transfer seconds
    arrived: float


class BootstrapRoom(Handoff):
    """SGLang P/D: bootstrap server on P, rooms matched by bootstrap_room."""

    def __init__(self, srv) -> None:
        super().__init__(srv)
        self._rooms: dict[int, _Room] = {}

    async def start(self) -> None:
        await super().start()
        if self.role is Role.PREFILL and self.srv.bootstrap_port:
            app = web.Application()
            app.router.add_get("/route", self._route)
            app.router.add_get("/health", self._health)
            app.router.add_post("/emu/room/{room}/claim", self._claim)
            await self._serve(app, self.srv.bootstrap_port)

    def _room(self, room: int) -> _Room:
        if room not in self._rooms:
            loop = asyncio.get_running_loop()
            self._rooms[room] = _Room(loop.create_future(), loop.create_future(), time.monotonic())
        return self._rooms[room]

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _route(self, request: web.Request) -> web.Response:
        return web.json_response({"rank_ip": self.srv.host, "rank_port": self.srv.port, "emulated": True})

    async def _claim(self, request: web.Request) -> web.Response:
        """D waits here until P finished the room's prefill (bounded by --kv-timeout)."""
        try:
            room = int(request.match_info["room"])
            want = int((await request.json())["prompt_tokens"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "bad claim"}, status=400)
        r = self._room(room)
        if r.claimed.done():
            return web.json_response({"error": f"room {room} already claimed"}, status=409)
        try:
            tokens = await asyncio.wait_for(asyncio.shield(r.prefill_done), self.srv.kv_timeout)
        except TimeoutError:
            self._rooms.pop(room, None)
            return web.json_response({"error": f"room {room}: no prefill arrived in {self.srv.kv_timeout} s"},
                                     status=408)
        if tokens != want:
            r.claimed.set_exception(ApiError(f"room {room}: decode has {want} prompt tokens, prefill {tokens}"))
            return web.json_response({"error": f"room {room}: prompt mismatch ({want} vs {tokens})"}, status=409)
        xfer = self.srv.cost.transfer_s(tokens)
        r.claimed.set_result(xfer)
        return web.json_response({"tokens": tokens, "transfer_s": xfer,
                                  "bytes": self.srv.cost.transfer_bytes(tokens)})

    def _fields(self, body: dict) -> tuple[str, int, int]:
        f = self.f
        host, port, room = body.get(f["host"]), body.get(f["port"]), body.get(f["room"])
        bad = [f[k] for k, ok in (("host", isinstance(host, str) and host),
                                  ("port", isinstance(port, int) and 0 < port < 65536),
                                  ("room", isinstance(room, int) and not isinstance(room, bool) and room >= 0))
               if not ok]
        if bad:
            raise self._fail(f"disaggregated {self.role.value} needs {', '.join(bad)} (missing or invalid)")
        return host, port, room

    async def prepare(self, p: Parsed, rid: str) -> Plan:
        if self.role is Role.COLOCATED:
            return Plan()
        _, _, room = self._fields(p.body)
        if self.role is Role.PREFILL:
            r = self._room(room)
            if r.prefill_done.done():
                raise self._fail(f"bootstrap_room {room} is already in use")
            return Plan(max_tokens=1, finish=lambda now: self._send(room, r, p.prompt_tokens, now))
        return await self._receive(p)

    async def _send(self, room: int, r: _Room, tokens: int, prefill_end: float) -> dict:
        """P after its prefill: wait for D to claim the room, then the modelled transfer."""
        r.prefill_done.set_result(tokens)
        m = self.srv.metrics
        try:
            xfer = await asyncio.wait_for(asyncio.shield(r.claimed), self.srv.kv_timeout)
        except TimeoutError:
            raise self._fail(f"bootstrap_room {room}: no decode engine claimed the KV in "
                             f"{self.srv.kv_timeout} s") from None
        finally:
            self._rooms.pop(room, None)
        await asyncio.sleep(xfer)
        nbytes = self.srv.cost.transfer_bytes(tokens)
        m.observe("kv_transfer_s", xfer)
        m.observe("kv_transfer_bytes", nbytes)
        m.observe("kv_transfer_Bps", nbytes / xfer)
        m.observe("kv_bootstrap_s", 0.0)
        m.observe("kv_alloc_s", 0.0)
        m.observe("stage_s", xfer, stage="prefill_transfer_kv_cache")
        return {}

    async def _receive(self, p: Parsed) -> Plan:
        host, port, room = self._fields(p.body)
        base = f"http://{host}:{port}"
        m = self.srv.metrics
        t0 = time.monotonic()
        try:
            async with self._session.get(f"{base}/route", timeout=aiohttp.ClientTimeout(total=5)) as r:
                r.raise_for_status()
            boot = time.monotonic() - t0
            async with self._session.post(f"{base}/emu/room/{room}/claim",
                                          json={"prompt_tokens": p.prompt_tokens}) as r:
                data = await r.json(content_type=None)
                if r.status != 200:
                    raise self._fail(f"KV transfer for bootstrap_room {room} failed: {data.get('error', r.status)}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise self._fail(f"bootstrap server {host}:{port} unreachable: {type(e).__name__} {e}".strip()) from None
        waited = time.monotonic() - t0 - boot
        m.observe("kv_bootstrap_s", boot)
        m.observe("kv_alloc_s", 0.0)
        m.observe("stage_s", boot, stage="decode_bootstrap")
        m.observe("stage_s", waited, stage="decode_waiting")
        m.observe("stage_s", float(data["transfer_s"]), stage="decode_transferred")
        # SGLang moves the whole prompt's KV; D's first step is a decode step
        return Plan(remote_kv=p.prompt_tokens, ready_delay=float(data["transfer_s"]))


HANDOFFS = {"nixl_pull": NixlPull, "bootstrap_room": BootstrapRoom}
