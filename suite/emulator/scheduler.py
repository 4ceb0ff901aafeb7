"""A pure, clock-free simulation of continuous batching with chunked prefill (vLLM V1 / SGLang style).

Each step: every running request whose prompt is done decodes one token; the remaining token budget goes to
prefill chunks, first of running requests, then of waiting ones (FCFS, skipping those whose KV has not arrived
yet). A request whose last prompt chunk runs in a step gets its first token at that step's end. The caller
drives time: `plan(now)` -> Step (with its duration from the cost model), then `commit(step)` at its end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from suite.emulator.costmodel import CostModel


class TokenSink(Protocol):
    """Where the engine writes a streaming request's tokens: `frame(i)` builds token i's bytes ahead of the step
    end, `write` hands them to the kernel at the step end (never awaits), `buffered()` is the byte count left in
    user space (the client is not reading), `closing()` the connection is gone, `fail` reports a dead client."""

    write: Callable[[bytes], None]
    buffered: Callable[[], int]
    closing: Callable[[], bool]

    def frame(self, i: int) -> bytes: ...

    def fail(self, err: BaseException) -> None: ...


@dataclass(eq=False)
class SimRequest:
    rid: str
    prompt: int
    max_tokens: int
    arrival: float
    ready_at: float | None = None  # KV of the prompt arrives (P/D decode); not schedulable before
    remote_kv: int = 0  # prompt tokens whose KV comes from another engine; only the rest is computed here
    on_token: Callable[[SimRequest, int, float], None] | None = None  # (req, token index, intended time)
    on_finish: Callable[[SimRequest], None] | None = None
    sink: TokenSink | None = None  # streaming: the engine writes this request's token frames itself
    computed: int = 0
    generated: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    token_times: list[float] = field(default_factory=list)
    aborted: bool = False
    last_late: float | None = None  # lateness of the last token write (engine's emission stats)

    def __post_init__(self) -> None:
        self.computed = min(self.remote_kv, self.prompt)
        if self.ready_at is None:
            self.ready_at = self.arrival

    @property
    def prefilled(self) -> bool:
        return self.computed >= self.prompt

    @property
    def context(self) -> int:
        return self.computed + self.generated


@dataclass
class Step:
    start: float
    duration: float
    decodes: list[SimRequest]
    chunks: list[tuple[SimRequest, int]]  # (request, new prompt tokens this step)

    @property
    def end(self) -> float:
        return self.start + self.duration

    def emitting(self) -> list[SimRequest]:
        """Requests that get a token at this step's end, in commit order (call before commit)."""
        return ([r for r in self.decodes if not r.aborted]
                + [r for r, n in self.chunks if not r.aborted and r.computed + n >= r.prompt])

    @property
    def tokens(self) -> int:
        return len(self.decodes) + sum(n for _, n in self.chunks)


class Scheduler:
    def __init__(self, cost: CostModel, token_budget: int = 8192, max_num_seqs: int = 1024,
                 kv_capacity: int | None = None) -> None:
        if token_budget < 1 or max_num_seqs < 1:
            raise ValueError("token_budget and max_num_seqs must be >= 1")
        self.cost = cost
        self.token_budget = token_budget
        self.max_num_seqs = max_num_seqs
        self.kv_capacity = cost.kv_capacity_tokens() if kv_capacity is None else kv_capacity
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.steps = 0

    # ---- state ------------------------------------------------------------------------------------
    def add(self, req: SimRequest) -> None:
        if req.prompt + 1 > self.kv_capacity:
            raise ValueError(f"prompt of {req.prompt} tokens does not fit the KV cache ({self.kv_capacity} tokens)")
        self.waiting.append(req)

    def abort(self, req: SimRequest) -> None:
        req.aborted = True
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def kv_used(self) -> int:
        return sum(r.computed + r.generated for r in self.running)  # hot: no property call

    def next_ready(self) -> float | None:
        """Earliest time a waiting request becomes schedulable (None: nothing waiting)."""
        return min((r.ready_at for r in self.waiting), default=None)

    # ---- one step ---------------------------------------------------------------------------------
    def plan(self, now: float) -> Step | None:
        budget = self.token_budget
        decodes = [r for r in self.running if r.computed >= r.prompt][:budget]
        budget -= len(decodes)
        chunks: list[tuple[SimRequest, int]] = []
        for r in self.running:
            if budget <= 0:
                break
            if not r.prefilled:
                n = min(r.prompt - r.computed, budget)
                chunks.append((r, n))
                budget -= n
        used = self.kv_used()
        for r in list(self.waiting):
            if len(self.running) >= self.max_num_seqs:
                break
            if r.ready_at > now:
                continue  # KV still in flight (vLLM WAITING_FOR_REMOTE_KVS); later ones may go first
            need = r.prompt + 1
            if used + need > self.kv_capacity:
                break  # FCFS: no overtaking on memory
            if not r.prefilled and budget <= 0:
                break
            self.waiting.remove(r)
            self.running.append(r)
            r.scheduled_at = max(now, r.arrival)
            used += need
            if r.prefilled:  # the whole prompt's KV was transferred: straight to decode
                decodes.append(r)
                budget -= 1
            else:
                n = min(r.prompt - r.computed, budget)
                chunks.append((r, n))
                budget -= n
        if not decodes and not chunks:
            return None
        duration = self.cost.step_s([(n, r.computed) for r, n in chunks], len(decodes),
                                    sum(r.computed + r.generated for r in decodes))
        return Step(start=now, duration=duration, decodes=decodes, chunks=chunks)

    def commit(self, step: Step) -> list[SimRequest]:
        """Apply a planned step at its end time: emit tokens, return the requests that finished."""
        end = step.end
        self.steps += 1
        emitting = [r for r in step.decodes if not r.aborted]
        for r, n in step.chunks:
            if r.aborted:
                continue
            r.computed += n
            if r.prefilled:
                emitting.append(r)
        done = []
        for r in emitting:
            r.generated += 1
            r.token_times.append(end)
            if r.first_token_at is None:
                r.first_token_at = end
            if r.on_token is not None:
                r.on_token(r, r.generated - 1, end)
            if r.generated >= r.max_tokens:
                r.finished_at = end
                done.append(r)
        for r in done:
            self.running.remove(r)
            if r.on_finish is not None:
                r.on_finish(r)
        return done

    def run(self, until: float = float("inf"), start: float = 0.0) -> float:
        """Run in virtual time until idle (tests, what-if analysis). Returns the final time."""
        now = start
        while self.has_work() and now < until:
            step = self.plan(now)
            if step is None:
                nxt = self.next_ready()
                if nxt is None or nxt <= now:
                    break
                now = nxt
                continue
            self.commit(step)
            now = step.end
        return now
