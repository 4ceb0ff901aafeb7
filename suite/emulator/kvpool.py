"""The EMULATED shared CPU KV pool (disagg-kvpool's emu twin) and the client a prefill engine uses.

Stands in for vLLM's LMCache server and SGLang's Mooncake master + segments: it stores prefix-block hashes, not
KV. A prefill engine (`pdsuite emulate --kv-pool URL --kv-pool-block N`) hashes its prompt in blocks of N tokens
(each hash chains the previous one, so a block matches only with its whole prefix, as LMCache's chunk keys and
SGLang's page hashes do), asks the pool for the longest stored prefix, loads those tokens at the hardware
profile's `pool_bw` instead of computing them, and after its prefill stores its full blocks. Capacity: bytes
(`--kv-pool-capacity-gb`), least recently used blocks evicted first. docs/emulator.md, "Shared KV pool".

Routes: GET /health, GET /metrics (pdsuite_kvpool_* and pdsuite_emulated_info), POST /emu/kvpool/lookup
{"hashes": [...]} -> {"hit_blocks": n}, POST /emu/kvpool/store {"hashes": [...], "block_bytes": b}.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

log = logging.getLogger("pdsuite.emulator.kvpool")


def block_hashes(units: Sequence[object], block: int) -> list[str]:
    """Chained hashes of the prompt's FULL blocks (a partial last block is never stored or matched)."""
    out, prev = [], b""
    for i in range(0, len(units) - block + 1, block):
        h = hashlib.blake2b(prev + repr(tuple(units[i:i + block])).encode(), digest_size=16)
        prev = h.digest()
        out.append(h.hexdigest())
    return out


def local_block_keys(units: Sequence[object], block: int) -> list[int]:
    """In-process chained keys of the prompt's full blocks (the GPU prefix cache): Python's hash, ~0.3 us a block
    where blake2b over each block's repr costs ~6 us - this runs on the request's TTFT path. Never sent anywhere
    (hash() differs between processes)."""
    out, prev = [], 0
    for i in range(0, len(units) - block + 1, block):
        prev = hash((prev, *units[i:i + block]))
        out.append(prev)
    return out


class PoolStore:
    """The pool's state: block hash -> bytes, LRU order, bounded by capacity (pure, unit-tested)."""

    def __init__(self, capacity_bytes: float) -> None:
        self.capacity = capacity_bytes
        self.blocks: OrderedDict[str, int] = OrderedDict()
        self.used = 0
        self.evicted = 0

    def lookup(self, hashes: Sequence[str]) -> int:
        """Number of leading blocks stored (the longest stored prefix); touches them (LRU)."""
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            self.blocks.move_to_end(h)
            n += 1
        return n

    def store(self, hashes: Sequence[str], block_bytes: int) -> int:
        """Store blocks not held yet; returns how many were new. Evicts least recently used ones for room."""
        new = 0
        for h in hashes:
            if h in self.blocks:
                self.blocks.move_to_end(h)
                continue
            if block_bytes > self.capacity:
                break
            while self.used + block_bytes > self.capacity and self.blocks:
                _, b = self.blocks.popitem(last=False)
                self.used -= b
                self.evicted += 1
            self.blocks[h] = block_bytes
            self.used += block_bytes
            new += 1
        return new


class PoolServer:
    """HTTP front of PoolStore, labelled emulated like every emulator server."""

    def __init__(self, capacity_gb: float, flavor: str, hardware: str) -> None:
        self.store = PoolStore(capacity_gb * 1e9)
        self.registry = CollectorRegistry()
        r = self.registry
        self.lookups = Counter("pdsuite_kvpool_lookups", "Prefix lookups (emulated pool).", registry=r)
        self.queried = Counter("pdsuite_kvpool_queried_blocks", "Blocks asked for (emulated pool).", registry=r)
        self.hit = Counter("pdsuite_kvpool_hit_blocks", "Leading blocks found (emulated pool).", registry=r)
        self.stored = Counter("pdsuite_kvpool_stored_blocks", "New blocks stored (emulated pool).", registry=r)
        self.blocks = Gauge("pdsuite_kvpool_blocks", "Blocks held (emulated pool).", registry=r)
        self.bytes = Gauge("pdsuite_kvpool_bytes", "Bytes held (emulated pool).", registry=r)
        self.evicted = Gauge("pdsuite_kvpool_evicted_blocks", "Blocks evicted so far (emulated pool).", registry=r)
        info = Gauge("pdsuite_emulated_info", "This engine is the pdsuite stand-in (emulated), not a real one.",
                     ["flavor", "role", "hardware", "model_name"], registry=r)
        info.labels(flavor=flavor, role="kvpool", hardware=hardware, model_name="").set(1)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.on_response_prepare.append(self._mark)
        app.router.add_get("/health", lambda _: web.Response())
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/emu/kvpool/lookup", self._lookup)
        app.router.add_post("/emu/kvpool/store", self._store)
        return app

    async def _mark(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-pdsuite-emulated"] = "true"

    async def _hashes(self, request: web.Request) -> tuple[list[str], dict]:
        try:
            body = await request.json()
            hashes = body["hashes"]
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text="body must be JSON with a list of block hashes") from None
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            raise web.HTTPBadRequest(text="hashes must be a list of strings")
        return hashes, body

    async def _lookup(self, request: web.Request) -> web.Response:
        hashes, _ = await self._hashes(request)
        n = self.store.lookup(hashes)
        self.lookups.inc()
        self.queried.inc(len(hashes))
        self.hit.inc(n)
        return web.json_response({"hit_blocks": n, "emulated": True})

    async def _store(self, request: web.Request) -> web.Response:
        hashes, body = await self._hashes(request)
        size = body.get("block_bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise web.HTTPBadRequest(text="block_bytes must be a positive integer")
        new = self.store.store(hashes, size)
        self.stored.inc(new)
        return web.json_response({"stored": new, "emulated": True})

    async def _metrics(self, request: web.Request) -> web.Response:
        s = self.store
        self.blocks.set(len(s.blocks))
        self.bytes.set(s.used)
        self.evicted.set(s.evicted)
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class PoolClient:
    """What a prefill engine does with the pool: one lookup before scheduling, one store after its prefill."""

    def __init__(self, url: str, block: int, timeout_s: float = 5.0) -> None:
        self.url, self.block = url.rstrip("/"), block
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def stop(self) -> None:
        if self._session:
            await self._session.close()

    async def _post(self, path: str, body: dict) -> dict:
        async with self._session.post(f"{self.url}{path}", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"kv pool {path}: HTTP {r.status} {(await r.text())[:200]}")
            return await r.json()

    async def lookup(self, hashes: list[str]) -> int:
        """Leading blocks the pool holds; a pool that does not answer counts as a miss (the real connectors
        fall back to computing), logged."""
        if not hashes:
            return 0
        try:
            return int((await self._post("/emu/kvpool/lookup", {"hashes": hashes}))["hit_blocks"])
        except (aiohttp.ClientError, TimeoutError, RuntimeError, KeyError, ValueError) as e:
            log.warning("kv pool lookup failed, computing instead: %s", e)
            return 0

    async def store(self, hashes: list[str], block_bytes: int) -> None:
        if not hashes:
            return
        try:
            await self._post("/emu/kvpool/store", {"hashes": hashes, "block_bytes": block_bytes})
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as e:
            log.warning("kv pool store failed: %s", e)
