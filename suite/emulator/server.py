"""The emulator's HTTP server (aiohttp): OpenAI routes, /health, /metrics, framework extras, P/D hand-off."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time

import orjson
from aiohttp import web

from suite.emulator.costmodel import CostModel
from suite.emulator.engine import Engine
from suite.emulator.handoff import HANDOFFS, Plan
from suite.emulator.kvpool import PoolClient, PoolStore, block_hashes, local_block_keys
from suite.emulator.metrics import EmuMetrics
from suite.emulator.protocol import ApiError, Parsed, Responder, error_body, parse_request, prompt_units
from suite.emulator.scheduler import Scheduler, SimRequest, Step
from suite.frameworks.base import Framework, Role

log = logging.getLogger("pdsuite.emulator")
EMULATED_HEADER = "x-pdsuite-emulated"


class StreamSink:
    """One streamed response's token frames, written by the engine straight to the transport at the step end
    (transport.write never awaits; HTTP/1.1 chunked framing is done here, aiohttp's writer only sends the
    headers and the final zero-length chunk). Each token event comes from a bytes template, no JSON work; the
    last token's frame also carries the usage event and [DONE]."""

    __slots__ = ("_chunked", "_first", "_last", "_on_fail", "_post", "_post_last", "_pre", "_tail", "buffered",
                 "closing", "write")

    def __init__(self, transport: asyncio.Transport, chunked: bool, rb: Responder, max_tokens: int,
                 include_usage: bool, on_fail) -> None:
        # bound C methods of the transport: the engine calls them per token without a Python frame in between
        self.write, self.buffered, self.closing = transport.write, transport.get_write_buffer_size, transport.is_closing
        self._chunked, self._on_fail = chunked, on_fail
        self._pre, self._post = rb.token_template(False)
        self._post_last = rb.token_template(True)[1]
        self._first, self._last = rb.first_event(), max_tokens - 1
        self._tail = (rb.usage_chunk(max_tokens) if include_usage else b"") + b"data: [DONE]\n\n"

    def frame(self, i: int) -> bytes:
        last = i == self._last
        body = b"%s%d%s" % (self._pre, i, self._post_last if last else self._post)
        if i == 0 and self._first:
            body = self._first + body
        if last:
            body += self._tail
        return b"%x\r\n%s\r\n" % (len(body), body) if self._chunked else body

    def fail(self, err: BaseException) -> None:
        self._on_fail(err)


class EmulatorServer:
    def __init__(self, fw: Framework, role: Role, cost: CostModel, *, host: str, port: int, model: str,
                 hardware: str, tp: int = 1, kv_port: int | None = None, bootstrap_port: int | None = None,
                 token_budget: int = 8192, max_num_seqs: int = 1024, max_model_len: int = 131072,
                 kv_timeout: float = 60.0, kv_hold_s: float = 480.0, spin_s: float = 1.5e-3,
                 kv_pool: str | None = None, kv_pool_block: int = 256, prefix_cache_block: int = 0,
                 otlp_traces_endpoint: str | None = None) -> None:
        self.fw, self.role, self.cost = fw, role, cost
        self.host, self.port, self.model, self.hardware, self.tp = host, port, model, hardware, tp
        self.kv_port, self.bootstrap_port = kv_port, bootstrap_port
        self.max_model_len, self.kv_timeout, self.kv_hold_s = max_model_len, kv_timeout, kv_hold_s
        self.metrics = EmuMetrics(fw, role, model, hardware)
        self.sched = Scheduler(cost, token_budget=token_budget, max_num_seqs=max_num_seqs)
        self.spin_s = spin_s
        self.engine: Engine | None = None
        self.handoff = HANDOFFS[fw.emulator_handoff](self)
        # shared KV pool (disagg-kvpool): the prefill engine looks prefixes up there and stores its blocks
        self.pool = PoolClient(kv_pool, kv_pool_block) if kv_pool else None
        self._pool_tasks: set[asyncio.Task] = set()
        # GPU prefix cache (vLLM's automatic prefix caching): full blocks of computed prompts, LRU, bounded by the
        # KV cache (blocks in use are not pinned: an approximation that only matters near a full cache)
        self.prefix_block = prefix_cache_block
        self.gpu_cache = PoolStore(cost.kv_capacity_tokens() * cost.model.kv_bytes_per_token()) \
            if prefix_cache_block else None
        self._ids = itertools.count()
        self.otlp_traces_endpoint = otlp_traces_endpoint
        self.spans = None  # SpanEmitter once started (vLLM flavour with an endpoint): the spans vLLM emits
        self._gen_total = 0
        self._last_scrape = (time.monotonic(), 0)
        for source in ("local_compute", "local_cache_hit", "external_kv_transfer"):
            self.metrics.inc("prompt_tokens_by_source", 0, source=source)

    # ---- app -------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.on_response_prepare.append(self._mark)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        r = app.router
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_get("/v1/models", self._models)
        r.add_get("/metrics", self._metrics)
        r.add_get("/emu/info", self._info)
        r.add_get("/emu/emission", self._emission)
        r.add_post("/emu/emission/reset", self._reset_emission)
        # Extras the routers probe (sglang-router: server/model info; both: version)
        for path in ("/health", "/health_generate", "/ping"):
            r.add_get(path, self._ok)
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self._info)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self._model_info)
        r.add_get("/version", self._version)
        return app

    async def _mark(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[EMULATED_HEADER] = "true"

    async def _startup(self, app: web.Application) -> None:
        self.engine = Engine(self.sched, spin_s=self.spin_s, on_step=self._on_step)
        self.engine.start()
        await self.handoff.start()
        if self.pool:
            await self.pool.start()
        if self.otlp_traces_endpoint and self.fw.name == "vllm":
            from suite.emulator.tracing import SpanEmitter

            self.spans = SpanEmitter(self.otlp_traces_endpoint, self.role.value, self.fw.name)
        log.warning("pdsuite EMULATED engine (not a real %s): flavor=%s role=%s model=%s hardware=%s tp=%d "
                    "listening on %s:%d%s%s", self.fw.name, self.fw.name, self.role.value, self.model,
                    self.hardware, self.tp, self.host, self.port,
                    f" kv-port={self.kv_port}" if self.kv_port else "",
                    f" bootstrap-port={self.bootstrap_port}" if self.bootstrap_port else "")
        if self.pool:
            log.warning("pdsuite EMULATED shared KV pool at %s, blocks of %d tokens", self.pool.url, self.pool.block)

    async def _cleanup(self, app: web.Application) -> None:
        await self.handoff.stop()
        if self._pool_tasks:
            await asyncio.gather(*self._pool_tasks, return_exceptions=True)
        if self.pool:
            await self.pool.stop()
        if self.engine:
            await self.engine.stop()
        if self.spans:
            self.spans.shutdown()  # exports what is still queued

    def _error(self, err: ApiError) -> web.Response:
        return web.Response(body=error_body(err, self.fw.emulator_error_style), status=err.status,
                            content_type="application/json")

    # ---- routes ----------------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model, "object": "model", "created": int(time.time()), "owned_by": "pdsuite-emulator",
            "root": self.model, "max_model_len": self.max_model_len}]})

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response({"emulated": True, "flavor": self.fw.name, "role": self.role.value,
                                  "model": self.model, "hardware": self.hardware, "tp": self.tp,
                                  "model_path": self.model, "disaggregation_mode":
                                      "null" if self.role is Role.COLOCATED else self.role.value,
                                  "max_total_num_tokens": self.sched.kv_capacity,
                                  "token_budget": self.sched.token_budget})

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": self.model, "is_generation": True, "emulated": True})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "emulated", "emulated": True})

    async def _emission(self, request: web.Request) -> web.Response:
        return web.json_response(self.engine.emission.summary())

    async def _reset_emission(self, request: web.Request) -> web.Response:
        self.engine.emission.reset()
        return web.json_response({"ok": True})

    async def _metrics(self, request: web.Request) -> web.Response:
        self.engine.drain()  # per-request records deferred to gaps between steps
        m, s = self.metrics, self.sched
        m.set("running", len(s.running))
        m.set("waiting", len(s.waiting))
        m.set("kv_usage", s.kv_used() / max(1, s.kv_capacity))
        now = time.monotonic()
        t0, g0 = self._last_scrape
        if now > t0:
            m.set("gen_throughput", (self._gen_total - g0) / (now - t0))
        self._last_scrape = (now, self._gen_total)
        m.set("cache_hit_rate", 0.0)
        return web.Response(body=m.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def _on_step(self, step: Step) -> None:
        self.metrics.observe("iteration_tokens", step.tokens)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        arrival = time.monotonic()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            return self._error(ApiError(f"invalid JSON body: {e}"))
        rid = request.headers.get("X-Request-ID") or f"emu-{next(self._ids)}"
        try:
            p = parse_request(body, chat, self.model, self.max_model_len)
            plan = await self.handoff.prepare(p, rid)
        except ApiError as e:
            return self._error(e)
        cached = self._prefix_lookup(p, plan) if self.gpu_cache is not None else None
        hashes = await self._pool_lookup(p, plan) if self.pool else None
        max_tokens = plan.max_tokens or p.max_tokens
        stream = p.stream and plan.finish is None  # P answers the router non-streaming, with its hand-off
        resp_builder = Responder(p, request.headers.get("X-Request-ID"))
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        now = time.monotonic()
        req = SimRequest(rid=rid, prompt=p.prompt_tokens, max_tokens=max_tokens, arrival=arrival,
                         # nothing in flight: schedulable from arrival (an idle engine backdates its step to it);
                         # a hand-off or pool load is modelled from now, after the real claim round trip
                         ready_at=now + plan.ready_delay if plan.ready_delay else arrival, remote_kv=plan.remote_kv,
                         on_finish=lambda r: done.done() or done.set_result(r))
        resp: web.StreamResponse | None = None
        if stream:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            writer = await resp.prepare(request)
            writer.send_headers()  # from here on the engine writes token frames to the transport itself
            if request.transport is None:
                raise ConnectionResetError("client went away before the first token")

            def on_fail(err: BaseException) -> None:
                self.sched.abort(req)
                if not done.done():
                    done.set_exception(ConnectionResetError(str(err)))

            req.sink = StreamSink(request.transport, writer.chunked, resp_builder, max_tokens, p.include_usage,
                                  on_fail)
        try:
            self.engine.add(req)
        except ValueError as e:
            return self._error(ApiError(str(e)))
        try:
            await done
            if cached:  # the prompt's full blocks stay in the GPU cache for later requests
                self.gpu_cache.store(cached, self.cost.transfer_bytes(self.prefix_block))
            if hashes:  # prefill done: its full blocks go to the pool, off the response path
                t = asyncio.ensure_future(self.pool.store(hashes, self.cost.transfer_bytes(self.pool.block)))
                self._pool_tasks.add(t)
                t.add_done_callback(self._pool_tasks.discard)
            extra = await plan.finish(req) if plan.finish else {}
        except ApiError as e:
            if resp is None:
                return self._error(e)
            await resp.write(b"data: " + error_body(e, "nested") + b"\n\n")
            return resp
        except (ConnectionError, asyncio.CancelledError):
            self.engine.abort(req)
            raise
        self.engine.defer(functools.partial(self._record, req, p, plan, stream))  # off the deadline path
        if self.spans:
            self.engine.defer(functools.partial(self._span, req, p, rid, request.headers))
        if resp is None:
            return web.json_response(resp_builder.full(req.generated, extra), dumps=lambda o: orjson.dumps(o).decode())
        await resp.write_eof()  # usage and [DONE] went out with the last token
        return resp

    def _prefix_lookup(self, p: Parsed, plan: Plan) -> list[int] | None:
        """vLLM's prefix cache: the longest cached block-aligned prefix of the prompt's first prompt-1 tokens is
        not computed (the last token always is: its logits are needed). Not on D: its prompt KV comes from P."""
        if self.role is Role.DECODE or plan.remote_kv:
            return None
        hashes = local_block_keys(prompt_units(p), self.prefix_block)  # chained: a prefix's hashes are a prefix
        hit = self.gpu_cache.lookup(hashes[:(p.prompt_tokens - 1) // self.prefix_block]) * self.prefix_block
        if hit:
            plan.remote_kv = hit
            plan.cache_hits = hit
            plan.sources = {"local_compute": p.prompt_tokens - hit, "local_cache_hit": hit}
        return hashes

    async def _pool_lookup(self, p: Parsed, plan: Plan) -> list[str] | None:
        """Prefill side of the shared pool: the longest stored block-aligned prefix is loaded at the modelled pool
        bandwidth instead of computed (the request waits for the load, as for a KV hand-off). At least the last
        prompt token is always computed (the engines need its logits)."""
        if self.role is Role.DECODE:
            return None  # D's writes to the pool are not modelled (docs/emulator.md)
        hashes = block_hashes(prompt_units(p), self.pool.block)
        hit = min(await self.pool.lookup(hashes) * self.pool.block, p.prompt_tokens - 1)
        plan.external_queries = p.prompt_tokens  # one connector lookup per request, whichever child answers
        if hit > max(0, plan.remote_kv):
            plan.external_hits += hit
            plan.pool_hits = hit
            plan.remote_kv = hit
            plan.ready_delay += self.cost.pool_load_s(hit)
            plan.sources = {"local_compute": p.prompt_tokens - hit, "external_kv_transfer": hit}
        return hashes

    def _span(self, r: SimRequest, p: Parsed, rid: str, headers) -> None:
        from suite.emulator.tracing import vllm_request_id

        self.spans.emit(headers=headers, request_id=vllm_request_id(rid, p.chat), arrival=r.arrival,
                        scheduled=r.scheduled_at, first_token=r.first_token_at, last_token=r.finished_at,
                        prompt_tokens=r.prompt, completion_tokens=r.generated, max_tokens=r.max_tokens,
                        temperature=getattr(p, "temperature", None))

    def _record(self, r: SimRequest, p: Parsed, plan: Plan, stream: bool) -> None:
        m = self.metrics
        lab = {"is_streaming": "true" if stream else "false", "finished_reason": "length"}
        first, end, sched = r.first_token_at, r.finished_at, r.scheduled_at
        m.observe("ttft_s", first - r.arrival, **lab)
        m.observe("e2e_s", end - r.arrival, **lab)
        m.observe("queue_s", sched - r.arrival)
        m.observe("prefill_s", first - sched)
        m.observe("decode_s", end - first)
        m.observe("inference_s", end - sched)
        if r.generated > 1:
            m.observe("tpot_s", (end - first) / (r.generated - 1), **lab)
        m.observe_many("itl_s", [b - a for a, b in itertools.pairwise(r.token_times)])
        m.observe("request_prompt_tokens", r.prompt)
        m.observe("request_generation_tokens", r.generated)
        m.observe("request_max_tokens", p.max_tokens)
        m.inc("prompt_tokens", r.prompt, **lab)
        m.inc("generation_tokens", r.generated, **lab)
        m.inc("num_requests", 1, **lab)
        m.inc("request_success", 1, **lab)
        m.inc("prefix_cache_queries", r.prompt)
        if plan.cache_hits:
            m.inc("prefix_cache_hits", plan.cache_hits)
        for source, n in (plan.sources or {"local_compute": r.prompt}).items():
            m.inc("prompt_tokens_by_source", n, source=source)
        if plan.external_queries:  # vLLM counts connector lookups; hits of uninstrumented connectors as unspecified
            m.inc("external_prefix_cache_queries", plan.external_queries)
            m.inc("external_prefix_cache_hits", plan.external_hits)
            if plan.external_hits:
                m.inc("prompt_tokens_cached_by_source", plan.external_hits, source="external_unspecified")
        if plan.pool_hits:  # SGLang reports each cache source only when > 0
            m.inc("cached_tokens", plan.pool_hits, cache_source="storage")
        if self.role is Role.PREFILL:
            m.observe("stage_s", first - sched, stage="prefill_forward")
        m.observe("stage_s", end - r.arrival, stage="request_process")
        self._gen_total += r.generated
