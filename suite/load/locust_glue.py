"""Locust glue: central open-loop schedule split across workers, closed loop, per-class live stats, records.

How a run goes (master + N workers, or one local process):
  a worker says "pd_hello" once its handlers exist (Locust connects it to the master before pdsuite's init runs:
  a start sent before then would be dropped); the master counts and loads only workers that said it
  master test_start -> "pd_start" to worker k of N: {spec, model, host, k, N}; each worker sets up and answers
  "pd_ready"; when all have, the master sends "pd_go" {t0 (wall clock), GO_DELAY_S ahead}
  worker: dispatcher greenlet sends its share of the schedule (plans k, k+N, ...) at the scheduled times, each request
          in its own greenlet (open loop: never waits for responses), or runs its share of the closed-loop streams;
          fires one Locust request entry per request (E2E <class>) and keeps per-class latencies (TTFT/ITL/TPOT/E2E,
          send lag) in its own statistics, sent with the records to the master every 0.25 s
  worker done -> "pd_done"; master writes <out>/requests.parquet + summary.json, and in headless mode quits.
Every planned request of a point ends in one record: one the point could not send (stopped first, a worker died)
is a `not_sent` record with the reason, written by its worker or, when that worker is gone, by the master.
Locust users are placeholders that keep a run alive (Locust needs >= 1); the load comes from the dispatcher.
Live changes: GET /pdsuite/rate?rps=8 and /pdsuite/mix?long_prefill=1&short_decode=3 on the web UI (or the start
form's "Pd rate" / "Pd mix" fields); GET /pdsuite shows the state, including EMULATED when the endpoint says so.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from pathlib import Path

import gevent
from gevent.event import AsyncResult
from gevent.pool import Group
from gevent.queue import Queue
from locust import User, constant, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import RequestStats, StatsEntry

from suite.load import mux
from suite.load.client import Endpoint, Outcome, Pending, follow, prepare, request_body, send
from suite.load.prompts import PromptBuilder
from suite.load.schedule import Planned, arrival_times, draw, plans, request_rng
from suite.load.spec import LoadSpec
from suite.schema import RequestRecord, Status

log = logging.getLogger("pdsuite.load")
PREPARE_AHEAD_S = 0.02  # connection taken (or opened) this long before a request's scheduled send
FLUSH_EVERY_S = 0.25
SPIN_READS = 4  # stream reads between two clock checks while waiting for a send time (~0.1 ms)
FLUSH_SLICE = 16  # records handled between two yields to the hub (stats events + dump + send: ~1 ms)
REPLAN_BASE = 10_000_000  # request indices after a live rate change start at epoch * REPLAN_BASE


class _Worker:
    """Per-process state of the load side (a worker, or the local runner)."""

    def __init__(self) -> None:
        self.env = None
        self.greenlets = Group()
        self.inflight = Group()
        self.pending: list[RequestRecord] = []
        self.emulated = False
        self.sent = 0
        self.epoch = 0
        self.stopping = False
        self.run = 0  # the point this worker is loading (records and pd_done carry it)
        self.ready_run = -1  # the point it is set up for and waiting to start (pd_go)
        self.ep: Endpoint | None = None
        self.mux = mux.StreamMux() if mux.available() else None  # all streams read by one loop (Linux)

    # --- setup -----------------------------------------------------------------------------------
    def start(self, env, msg: dict) -> None:
        self.stop(cancel=False)
        self._cancel_inflight("a new point started")  # an earlier point's leftovers (its records were sent)
        self.env, self.stopping, self.epoch, self.sent = env, False, 0, 0
        self.run, self.emulated, self.pending = msg.get("run", 0), False, []
        self.spec = LoadSpec.model_validate(msg["spec"])
        self.shares = self.spec.shares()
        self.rate = self.spec.arrival.rate_rps
        self.model, self.index, self.count = msg["model"], msg["index"], msg["count"]
        self.itl_events = msg.get("itl_events", True)
        self.record_unsent = bool(msg.get("record_unsent"))  # a point (not an interactive run): every plan a record
        self.stop_reason = "the point was stopped before its send time"
        if self.ep is None or self.ep.url != msg["host"]:  # a persistent worker keeps its keep-alive connections
            if self.ep is not None:
                self.ep.close()
            self.ep = Endpoint(msg["host"])
        self.name = f"w{self.index}"
        s = self.spec
        self.builder = PromptBuilder(s.api, s.tokenizer, s.seed, s.shared_prefix_tokens, s.token_id_range,
                                     text=s.text_prompts)
        # the open-loop schedule is drawn now, not at pd_go: drawing thousands of requests holds the hub for ms
        self.todo, self.first = [], []
        try:
            if s.arrival.kind == "concurrency":
                self._ready_closed_loop()
            else:
                self.todo = plans(s, self.index, self.count)
        except Exception:  # specs are validated by the master; this only keeps the point from hanging
            log.exception("pdsuite load: cannot draw the schedule")
        self.ready_run = self.run
        _settle_gc()
        self._send("pd_ready", {"run": self.run, "worker": self.index})

    def go(self, data: dict) -> None:
        """Every worker is ready: start on the shared clock (t0, wall time)."""
        if data.get("run") != self.run or self.ready_run != self.run or self.stopping:
            return
        self.ready_run = -1
        self.t0_ns = time.monotonic_ns() + int((data["t0_wall"] - time.time()) * 1e9)
        self.greenlets.spawn(self._flusher)
        main = self._closed_loop if self.spec.arrival.kind == "concurrency" else self._open_loop
        self.greenlets.spawn(self._run, main)

    def stop(self, cancel: bool = True) -> None:
        self.stopping = True
        if cancel:
            self._cancel_inflight("run stopped while in flight")
            self.inflight.kill(block=True, timeout=5)
        self.greenlets.kill(block=True, timeout=5)

    def _cancel_inflight(self, reason: str) -> None:
        if self.mux is not None:
            self.mux.cancel_all(reason)

    def abort(self, data: dict) -> None:
        """The master cancels this point: in-flight requests become `cancelled` records, unsent ones `not_sent`,
        then pd_done."""
        if data.get("run") == self.run and self.env is not None and not self.stopping:
            if data.get("reason"):
                self.stop_reason = f"not sent: {data['reason']}"
            self.stop(cancel=True)

    def now_s(self) -> float:
        return (time.monotonic_ns() - self.t0_ns) / 1e9

    # --- sending -----------------------------------------------------------------------------------
    def _body(self, p: Planned) -> bytes:
        prompt = self.builder.build(request_rng(self.spec.seed + 1, p.index), p.input_tokens)
        return request_body(self.spec.api, self.model, prompt, p.max_tokens)

    def _wait_until(self, t_s: float) -> None:
        delay = t_s - self.now_s()
        if delay > 0.002:
            gevent.sleep(delay - 0.0015)  # the loop's timers are coarse (1 ms): finish the wait by yielding
        while self.now_s() < t_s:
            # sleep(0) does not let the loop poll io, so the streams are read from here meanwhile, a few at a time
            if self.mux is None or not self.mux.read_ready(SPIN_READS):
                gevent.sleep(0)

    def _prepare(self, p: Planned, body: bytes, connect: bool = True) -> Pending:
        return prepare(self.ep, self.spec.api, body, request_id=f"{self.spec.seed}-{p.index}",
                       request_class=p.request_class, input_tokens=p.input_tokens, max_tokens=p.max_tokens,
                       scheduled_s=p.scheduled_s if p.scheduled_s is not None else 0.0,
                       timeout_s=self.spec.request_timeout_s, worker=self.name, connect=connect)

    def _follow_async(self, pend: Pending) -> None:
        """An open-loop request: follow it without waiting."""
        if self.mux is not None:
            self.mux.add(pend, self.t0_ns, self._done_for(self.run))
        else:
            self.inflight.spawn(self._follow, pend)

    def _follow(self, pend: Pending) -> None:
        """Without epoll: a greenlet per stream, bounded by one timeout for the whole request."""
        try:
            with gevent.Timeout(self.spec.request_timeout_s, TimeoutError("request timed out")):
                out = follow(pend, self.t0_ns, deadline=False)
        except gevent.GreenletExit:
            self._done(pend.out)  # follow recorded it as cancelled
            raise
        self._done(out)

    def _done_for(self, run: int):
        return lambda out: run == self.run and self._done(out)

    def _done(self, out: Outcome) -> None:
        """Hot path: keep the record. Dumping records and stats events wait for the flusher, which yields between
        small batches, so it never keeps streams waiting to be read for long."""
        self.pending.append(out.record)
        if out.emulated and not self.emulated:
            self.emulated = True
            log.warning("EMULATED: the endpoint says x-pdsuite-emulated: true; numbers are not a real engine's")

    def _fire(self, r: RequestRecord) -> None:
        """Locust's own statistics get one entry per request sent (its E2E time), so its request rate and response
        times are requests', as in any Locust test. Latencies per class (TTFT, ITL per token, TPOT, E2E, send lag)
        go to pdsuite's own statistics (LATENCY), shipped to the master beside the records (webui shows them)."""
        if r.status is Status.NOT_SENT:
            return  # never sent: not a request to Locust (the record says why)
        cls, log = r.request_class, LATENCY.log_request
        if r.send_lag_s is not None:
            log("SEND_LAG", "all", r.send_lag_s * 1000, 0)
        if r.status is not Status.OK:
            events.request.fire(request_type="E2E", name=cls, response_time=(r.e2e_s or 0) * 1000,
                                response_length=0, exception=RuntimeError(f"{r.status.value}: {r.error}"),
                                context={})
            return
        events.request.fire(request_type="E2E", name=cls, response_time=r.e2e_s * 1000,
                            response_length=r.completion_tokens or 0, exception=None, context={})
        log("E2E", cls, r.e2e_s * 1000, 0)
        if r.ttft_s is not None:
            log("TTFT", cls, r.ttft_s * 1000, 0)
        if r.tpot_s is not None:
            log("TPOT", cls, r.tpot_s * 1000, 0)
        if self.itl_events:
            entry = LATENCY.entries[(cls, "ITL")]
            for gap in r.itl_s:
                entry.log(gap * 1000, 0)

    def _open_loop(self) -> None:
        s = self.spec
        todo, nxt, pend = self.todo, 0, None  # nxt: the first plan of `todo` not handed to the network yet
        try:
            while True:
                epoch = self.epoch
                for k, p in enumerate(todo):
                    nxt = k
                    if self.stopping or self.epoch != epoch:
                        break
                    if epoch and p.index < REPLAN_BASE * epoch:  # a re-plan draws its own classes with the new mix
                        continue
                    # Body and connection are ready before the scheduled time, and this greenlet writes the request
                    # itself at that time: nothing else runs between the wake-up and the send.
                    body = self._body(p)
                    self._wait_until(p.scheduled_s - PREPARE_AHEAD_S)
                    pend = self._prepare(p, body)
                    self._wait_until(p.scheduled_s)
                    send(pend, self.t0_ns)
                    out, pend, nxt = pend, None, k + 1
                    self._follow_async(out)
                    self.sent += 1
                else:
                    nxt = len(todo) if isinstance(todo, list) else 0
                if self.epoch == epoch or self.stopping:
                    break
                todo, nxt = self._replan(), 0  # the old schedule's rest is replaced, not dropped
        finally:  # stopped (or killed) before the end of the schedule: what was not sent is recorded as such
            # (a schedule re-planned live is an interactive run's: it ends where its user stopped it)
            rest = todo[nxt + (pend is not None):] if isinstance(todo, list) else []
            self._unsent(rest, pend)
        limit = s.drain_timeout_s + s.request_timeout_s
        self.inflight.join(timeout=limit)
        if self.mux is not None and not self.mux.empty.wait(timeout=limit):
            self._cancel_inflight(f"still in flight {limit:g} s after the last send")

    def _unsent(self, rest: list[Planned], pend: Pending | None) -> None:
        """One `not_sent` record for each plan left (a point, not an interactive run stopped by its user)."""
        if pend is not None and pend.sock is not None:
            pend.sock.close()
            pend.sock = None
        if pend is not None and self.record_unsent:
            pend.out.record.status, pend.out.record.error = Status.NOT_SENT, self.stop_reason
            self.pending.append(pend.out.record)
        if self.record_unsent:
            for p in rest:
                self.pending.append(not_sent_record(self.spec, p, self.stop_reason, self.name))

    def _replan(self):
        """The rest of the run at the new rate and mix, drawn as it is sent: drawing a long run's thousands of
        requests at once would hold the hub for seconds, while streams wait to be read."""
        start = self.now_s()
        times = arrival_times(self.spec, rate_rps=self.rate, start_s=start)
        base, shares = REPLAN_BASE * self.epoch, self.shares
        for i in range(self.index, len(times), self.count):
            name, n_in, n_out = draw(self.spec, base + i, shares)
            yield Planned(base + i, name, n_in, n_out, float(times[i]))

    def _ready_closed_loop(self) -> None:
        """Before pd_ready: each stream's first request built and a keep-alive connection open for it, so the first
        wave is only sends (64 connects and prompts in a row would delay the last stream by ~20 ms)."""
        s = self.spec
        c = s.arrival.concurrency
        # streams are dealt round robin; only workers that hold a stream draw requests (concurrency 1 on two
        # workers: the second would hold half of num_requests and never send them)
        active = min(self.count, c)
        n = (c // active + (self.index < c % active)) if self.index < active else 0
        self.counter = iter(range(self.index, 1 << 62, active) if n else ())
        self.first = [p for p in (self._build_next() for _ in range(n)) if p is not None]
        warm = []
        try:
            for _ in range(len(self.first) - len(self.ep.idle)):
                warm.append(self.ep.connect(s.request_timeout_s))
        except OSError:
            pass  # the endpoint is down: the requests themselves will say so
        self.ep.idle.extend(warm)

    def _build_next(self) -> Pending | None:
        """The next closed-loop request of this worker (prompt, bytes, record), or None when num_requests is
        reached. Its connection is taken when it is sent."""
        s = self.spec
        i = next(self.counter)
        if s.num_requests is not None and i >= s.num_requests:
            return None
        name, n_in, n_out = draw(s, i, self.shares)
        p = Planned(i, name, n_in, n_out, None)
        return self._prepare(p, self._body(p), connect=False)

    def _closed_loop(self) -> None:
        """Each stream sends its next request as soon as the current one ends (send lag = end of the previous
        response, or t0, to the send). Next requests are built while the current ones stream, one per idle turn
        of the loop by one builder: when many streams end together only the sends remain to do, and reading the
        open streams always comes first (a build is ~0.1 ms; 256 in a row would leave every socket unread 30 ms)."""
        end = self.spec.duration_s if self.spec.duration_s is not None else float("inf")
        orders: Queue = Queue()

        def builder() -> None:
            while True:
                order = orders.get()
                gevent.idle()
                try:
                    order.set(self._build_next())
                except Exception as e:  # handed to the stream that asked
                    order.set_exception(e)

        def stream(nxt: Pending | None) -> None:
            free_s = 0.0
            while nxt is not None and not self.stopping and self.now_s() < end:
                cur = nxt
                cur.out.record.scheduled_s = free_s
                send(cur, self.t0_ns)
                self.sent += 1
                if self.mux is not None:
                    ended = self.mux.add(cur, self.t0_ns, self._done_for(self.run))
                    order = AsyncResult()
                    orders.put(order)
                    ended.wait()
                    nxt = order.get()
                else:
                    nxt = self._build_next()
                    self._follow(cur)
                free_s = cur.out.record.done_s if cur.out.record.done_s is not None else self.now_s()

        self._wait_until(0.0)
        self.greenlets.spawn(builder)
        for p in self.first:
            self.inflight.spawn(stream, p)
        self.inflight.join()

    def _run(self, main) -> None:
        try:
            main()
        finally:
            self._flush()
            self._send("pd_done", {"run": self.run, "worker": self.index, "sent": self.sent, "emulated": self.emulated})
            _resume_gc()

    # --- reporting ---------------------------------------------------------------------------------
    def _flusher(self) -> None:
        while True:
            gevent.sleep(FLUSH_EVERY_S)
            self._flush(yielding=True)

    def _flush(self, yielding: bool = False) -> None:
        """Stats events + records to the master, in slices. While streams are being read, yield between slices:
        a reader held up for longer than one inter-token gap gets that token's packet merged with the next one by
        the kernel, and both get the later arrival stamp."""
        while self.pending:
            records, self.pending = self.pending[:FLUSH_SLICE], self.pending[FLUSH_SLICE:]
            for r in records:
                self._fire(r)
            batch = [r.model_dump(mode="json") for r in records]
            self._send("pd_records", {"run": self.run, "records": batch, "emulated": self.emulated,
                                      "latency": LATENCY.serialize_stats()})  # (and resets them here)
            if yielding:
                gevent.sleep(0.0005)  # a trip through the loop (sleep(0) would not run its io and timers)

    def _send(self, kind: str, data) -> None:
        runner = self.env.runner
        if isinstance(runner, WorkerRunner):
            runner.send_message(kind, data)
        else:
            MASTER.on_message(kind, data)


class _Master:
    """The master (or local runner): hands out the schedule, gathers records, writes them.

    A point starts from the web UI's swarm (test_start) or from the control route POST /pdsuite/run (LoadCluster);
    messages carry the point's run id, so records arriving late from an earlier point never mix into this one."""

    GO_DELAY_S = 0.02  # once all workers are set up, t0 is this far ahead: a message's way to a worker, with room
    PROBE_AFTER_S = 10.0

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.by_class: dict[str, dict[str, int]] = {}  # kept as records arrive: status polls must stay O(1)
        self.done: set[int] = set()
        self.workers = 0
        self.emulated = False
        self.env = None
        self.started_at = 0.0
        self.rate: float | None = None
        self.mix: dict[str, float] | None = None
        self.run = 0
        self.out = ""
        self.finished = False
        self.failure: str | None = None
        self.record_unsent = False
        self.replanned = False  # a live rate/mix change replaced the schedule: "planned" is what the workers drew
        self.hello: set[str] = set()  # workers whose pdsuite handlers exist (they said pd_hello)
        self.latency = RequestStats(use_response_times_cache=True)  # per class TTFT/ITL/TPOT/E2E, send lag

    def spec(self) -> LoadSpec:
        from suite.load.resolve import resolve_spec
        from suite.load.spec import load_spec

        o = self.env.parsed_options
        spec = load_spec(o.pd_spec) if o.pd_spec else LoadSpec(duration_s=3600)
        upd: dict = {}
        if o.pd_api:
            upd["api"] = o.pd_api
        if o.pd_rate and spec.arrival.kind in ("poisson", "constant"):
            upd["arrival"] = spec.arrival.model_copy(update={"rate_rps": float(o.pd_rate)})
        if o.pd_mix:
            upd["mix"] = parse_mix(o.pd_mix)
        if upd:
            spec = load_spec({**spec.model_dump(mode="json"), **{k: _dump(v) for k, v in upd.items()}})
        return resolve_spec(spec, o.pd_deployment or None)

    def start(self, env) -> None:
        """A swarm from the web UI (or `locust --headless`)."""
        from suite.config import ConfigError

        self.env = env
        o = env.parsed_options
        try:
            spec = self.spec()
        except (ConfigError, ValueError) as e:
            log.error("pdsuite load: %s", e)
            return
        self.begin(spec, o.pd_model or os.environ.get("PDSUITE_MODEL", ""), env.host, o.pd_out,
                   o.pd_itl_events == "on", self.run + 1)

    def begin(self, spec: LoadSpec, model: str, host: str, out: str, itl_events: bool, run: int,
              record_unsent: bool = False) -> None:
        """record_unsent: a measured point, where every planned request must end in a record (not_sent ones
        too); an interactive run stopped from the UI ends where its user stopped it."""
        self.run, self.out, self.records, self.done, self.by_class = run, out, [], set(), {}
        self.ready = set()
        self.latency.reset_all()
        self.emulated, self.finished, self.failure = False, False, None
        self.record_unsent, self.replanned = record_unsent, False
        self.rate, self.mix, self.spec_used = spec.arrival.rate_rps, spec.shares(), spec
        msg = {"run": run, "spec": spec.model_dump(mode="json"), "model": model, "host": host,
               "itl_events": itl_events, "record_unsent": record_unsent}
        self.started_at = 0.0
        runner = self.env.runner
        if isinstance(runner, MasterRunner):
            ids = self.worker_ids()
            self.workers = len(ids)
            for k, cid in enumerate(ids):
                runner.send_message("pd_start", {**msg, "index": k, "count": len(ids)}, client_id=cid)
        else:
            self.workers = 1
            WORKER.start(self.env, {**msg, "index": 0, "count": 1})
        log.info("pdsuite load: run %d, %s, %d worker(s), mix %s", run, spec.arrival.kind, self.workers, self.mix)
        _settle_gc()

    def worker_ids(self) -> list[str]:
        """Connected workers that have said pd_hello: one that has not yet would drop a pd_start."""
        from locust.runners import STATE_MISSING

        return sorted(c.id for c in self.env.runner.clients.values() if c.state != STATE_MISSING and c.id in self.hello)

    def prober(self) -> None:
        """Ask a worker connected for PROBE_AFTER_S that has not said pd_hello: covers a hello sent before the
        master listened (a worker asked before its handlers exist only logs that it does not know pd_probe)."""
        from locust.runners import STATE_MISSING

        seen: dict[str, float] = {}
        while True:
            gevent.sleep(1.0)
            runner, now = self.env.runner, time.monotonic()
            for c in list(runner.clients.values()):
                if c.id not in self.hello and c.state != STATE_MISSING and \
                        now - seen.setdefault(c.id, now) > self.PROBE_AFTER_S:
                    runner.send_message("pd_probe", {}, client_id=c.id)

    def abort(self, reason: str) -> None:
        """Cancel the point: live workers cancel their in-flight requests (recorded) and report; a dead worker
        never will, so the records are written after a short grace either way."""
        self.failure = reason
        runner = self.env.runner
        if isinstance(runner, MasterRunner):
            runner.send_message("pd_abort", {"run": self.run, "reason": reason})
        else:
            WORKER.abort({"run": self.run, "reason": reason})
        run = self.run
        gevent.spawn_later(5.0, lambda: self.run == run and self.finish())

    def on_message(self, kind: str, data) -> None:
        if data.get("run", 0) != self.run or self.finished:
            return  # late message from an earlier point
        if kind == "pd_ready":
            self.ready.add(data["worker"])
            if len(self.ready) >= self.workers and not self.started_at:
                self.started_at = time.time() + self.GO_DELAY_S
                go = {"run": self.run, "t0_wall": self.started_at}
                runner = self.env.runner
                if isinstance(runner, MasterRunner):
                    for cid in self.worker_ids():
                        runner.send_message("pd_go", go, client_id=cid)
                else:
                    WORKER.go(go)
        elif kind == "pd_records":
            self.records.extend(data["records"])
            for e in data.get("latency") or ():
                self.latency.entries[(e["name"], e["method"])].extend(StatsEntry.unserialize(e, self.latency))
            for r in data["records"]:
                c = self.by_class.get(r["request_class"])
                if c is None:
                    c = self.by_class[r["request_class"]] = {"done": 0} | {st.value: 0 for st in Status}
                c["done"] += 1
                c[r["status"]] += 1
            self.emulated = self.emulated or bool(data.get("emulated"))  # live, for the UI's marker
        elif kind == "pd_done":
            self.done.add(data["worker"])
            if data.get("emulated"):
                self.emulated = True
            if len(self.done) >= self.workers:
                self.finish()

    def finish(self) -> None:
        from suite.load.records import write_records

        if self.finished:
            return
        out = self.out
        if out:
            self.records += self.unrecorded()
            n = write_records(Path(out) / "requests.parquet", self.records)
            info = {"records": n, "workers": self.workers, "emulated": self.emulated, "run": self.run,
                    "t0_wall": self.started_at, "failure": self.failure,
                    "workload": self.spec_used.to_workload().model_dump(mode="json")}
            (Path(out) / "load.json").write_text(json.dumps(info, indent=1))
            log.info("pdsuite load: wrote %d records to %s%s", n, out, " (EMULATED endpoint)" if self.emulated else "")
        self.finished = True
        _resume_gc()
        if self.env.parsed_options.headless:
            gevent.spawn_later(0.2, self.env.runner.quit)

    def unrecorded(self) -> list[dict]:
        """not_sent records for planned requests no worker reported (a worker died, or never answered an abort)."""
        spec = getattr(self, "spec_used", None)
        if not self.record_unsent or spec is None or self.replanned:
            return []
        if spec.arrival.kind == "concurrency":
            if spec.num_requests is None or spec.duration_s is not None:
                return []  # a closed loop that runs for a time plans no fixed set of requests
            todo = [Planned(i, *draw(spec, i), None) for i in range(spec.num_requests)]
        else:
            todo = plans(spec)
        seen = {r["request_id"] for r in self.records}
        why = "no record came back from its worker" + (f" ({self.failure})" if self.failure else "")
        return [not_sent_record(spec, p, why, f"w{p.index % max(1, self.workers)}").model_dump(mode="json")
                for p in todo if f"{spec.seed}-{p.index}" not in seen]

    def status(self) -> dict:
        by = {k: dict(v) for k, v in self.by_class.items()}
        runner = self.env.runner if self.env else None
        connected = len(self.worker_ids()) if isinstance(runner, MasterRunner) else 1
        return {"emulated": self.emulated, "rate_rps": self.rate, "mix": self.mix, "workers": self.workers,
                "workers_done": len(self.done), "workers_connected": connected, "run": self.run,
                "finished": self.finished, "failure": self.failure, "records": len(self.records), "classes": by}


_FULL_GC_EVERY = gc.get_threshold()[2]


def _settle_gc() -> None:
    """Before a point starts: collect, freeze what survives, and leave only the young generations to the collector
    until the point ends (_resume_gc). A full pass walks every object (Locust, gevent, pandas, pydantic, and the
    point's records on the master): 25-75 ms with the hub held or the shared core taken, measured at 120 req/s -
    tens of ms of send lag and token reads late enough for the kernel to merge packets. Young cycles are still
    collected, and a request leaves none (tests/unit/test_load_mux.py)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1_000_000)


def _resume_gc() -> None:
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _FULL_GC_EVERY)


def not_sent_record(spec: LoadSpec, p: Planned, reason: str, worker: str) -> RequestRecord:
    return RequestRecord(request_id=f"{spec.seed}-{p.index}", request_class=p.request_class, api=spec.api,
                         worker=worker, input_tokens=p.input_tokens, max_tokens=p.max_tokens,
                         scheduled_s=p.scheduled_s if p.scheduled_s is not None else 0.0, status=Status.NOT_SENT,
                         error=reason)


def parse_mix(text: str) -> dict[str, float]:
    """"long_prefill=1,short_decode=3" -> dict; malformed -> ValueError."""
    out = {}
    for part in text.split(","):
        name, sep, w = part.partition("=")
        if not sep:
            raise ValueError(f"mix entry {part!r} is not name=weight")
        out[name.strip()] = float(w)
    return out


def _dump(v):
    return v.model_dump(mode="json") if hasattr(v, "model_dump") else v


LATENCY = RequestStats(use_response_times_cache=False)  # this process's latency entries since the last flush
WORKER = _Worker()
MASTER = _Master()


@events.init_command_line_parser.add_listener
def _args(parser) -> None:
    g = parser  # Locust's own parser: argument groups do not take include_in_web_ui
    g.add_argument("--pd-spec", default="", help="LoadSpec YAML/JSON (default: the two default classes, 1 req/s)")
    g.add_argument("--pd-rate", default="", include_in_web_ui=True, help="open-loop rate (req/s), overrides the spec")
    g.add_argument("--pd-mix", default="", include_in_web_ui=True, help="e.g. long_prefill=1,short_decode=3")
    g.add_argument("--pd-api", default="", choices=["", "completions", "chat"], include_in_web_ui=True)
    g.add_argument("--pd-model", default="", help="model name (default: $PDSUITE_MODEL)")
    g.add_argument("--pd-out", default="", help="folder for requests.parquet (written by the master)")
    g.add_argument("--pd-itl-events", default="on", choices=["on", "off"],
                   help="per-token ITL statistics in the pdsuite tab and charts")
    g.add_argument("--pd-deployment", default="", help="catalog name (e.g. emu-sglang-disagg): picks the prompt form "
                                                       "and resolves tokenizer: auto")


@events.init.add_listener
def _init(environment, **_kw) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        if os.environ.get("PDSUITE_TEST_WORKER_INIT_DELAY_S"):  # tests only: widen the connect -> init gap
            gevent.sleep(float(os.environ["PDSUITE_TEST_WORKER_INIT_DELAY_S"]))
        runner.register_message("pd_start", lambda msg, **kw: WORKER.start(environment, msg.data))
        runner.register_message("pd_go", lambda msg, **kw: WORKER.go(msg.data))
        runner.register_message("pd_rate", lambda msg, **kw: _set_live(msg.data))
        runner.register_message("pd_abort", lambda msg, **kw: WORKER.abort(msg.data))
        runner.register_message("pd_probe", lambda msg, **kw: runner.send_message("pd_hello", {}))
        runner.send_message("pd_hello", {})  # only now can this worker take a point
        return
    MASTER.env = environment
    if isinstance(runner, MasterRunner):
        runner.register_message("pd_ready", lambda msg, **kw: MASTER.on_message("pd_ready", msg.data))
        runner.register_message("pd_records", lambda msg, **kw: MASTER.on_message("pd_records", msg.data))
        runner.register_message("pd_done", lambda msg, **kw: MASTER.on_message("pd_done", msg.data))
        runner.register_message("pd_hello", lambda msg, **kw: MASTER.hello.add(msg.node_id))
        gevent.spawn(MASTER.prober)
    if environment.web_ui:
        _routes(environment)


def _set_live(data: dict) -> None:
    if WORKER.env is None:
        return
    if data.get("mix"):
        WORKER.shares = {k: v / sum(data["mix"].values()) for k, v in data["mix"].items() if v > 0}
    WORKER.rate = data.get("rate_rps") or WORKER.spec.arrival.rate_rps
    WORKER.epoch += 1  # the dispatcher re-plans from now


def _routes(environment) -> None:
    from flask import jsonify, request

    from suite.load import webui

    app = environment.web_ui.app
    webui.extend(environment, MASTER)

    @app.route("/pdsuite")
    def pd_status():
        return jsonify(MASTER.status())

    @app.route("/pdsuite/run", methods=["POST"])
    def pd_run():
        """LoadCluster's control route: start one point on the connected workers (no Locust swarm)."""
        from suite.load.spec import LoadSpec

        req = request.get_json(force=True)
        if MASTER.run and not MASTER.finished:
            return jsonify({"error": f"run {MASTER.run} is still going"}), 409
        if isinstance(environment.runner, MasterRunner) and not MASTER.worker_ids():
            return jsonify({"error": "no workers connected"}), 409
        spec = LoadSpec.model_validate(req["spec"])
        MASTER.begin(spec, req["model"], req["host"], req["out"], bool(req.get("itl_events")), int(req["run"]),
                     record_unsent=True)
        return jsonify(MASTER.status())

    @app.route("/pdsuite/abort", methods=["POST"])
    def pd_abort():
        req = request.get_json(force=True)
        if req.get("run") == MASTER.run and not MASTER.finished:
            MASTER.abort(str(req.get("reason") or "aborted"))
        return jsonify(MASTER.status())

    @app.route("/pdsuite/rate")
    def pd_rate():
        try:
            rps = float(request.args["rps"])
            assert rps > 0
        except (KeyError, ValueError, AssertionError):
            return jsonify({"error": "use /pdsuite/rate?rps=<positive number>"}), 400
        return _broadcast({"rate_rps": rps, "mix": MASTER.mix})

    @app.route("/pdsuite/mix")
    def pd_mix():
        try:
            mix = {k: float(v) for k, v in request.args.items()}
            spec = getattr(MASTER, "spec_used", None)
            if not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0 or \
                    (spec and set(mix) - set(spec.classes)):
                raise ValueError
        except ValueError:
            hint = "use /pdsuite/mix?<class>=<weight>&...: known classes, weights >= 0, sum > 0"
            return jsonify({"error": hint}), 400
        return _broadcast({"rate_rps": MASTER.rate, "mix": mix})


def _broadcast(data: dict):
    from flask import jsonify

    MASTER.rate, MASTER.mix, MASTER.replanned = data["rate_rps"], data["mix"], True
    runner = MASTER.env.runner
    if isinstance(runner, MasterRunner):
        runner.send_message("pd_rate", data)
    else:
        _set_live(data)
    return jsonify(MASTER.status())


@events.test_start.add_listener
def _test_start(environment, **_kw) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        MASTER.start(environment)


@events.test_stop.add_listener
def _test_stop(environment, **_kw) -> None:
    load_side = isinstance(environment.runner, WorkerRunner) or not isinstance(environment.runner, MasterRunner)
    if load_side and WORKER.env is not None and not WORKER.stopping:
        WORKER.stop(cancel=True)
        WORKER._flush()


class PdUser(User):
    """Placeholder: keeps the run alive. The load comes from the dispatcher above, not from users."""

    wait_time = constant(3600)

    @task
    def idle(self) -> None:
        gevent.sleep(3600)
