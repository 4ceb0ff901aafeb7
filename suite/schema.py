"""The versioned result schema: what every stage writes and the report reads.

Layout of one results tree (a plan run):

    results/<plan>/<stamp>/
      manifest.json                       RunManifest: plan, settings (secrets masked), versions, environment
      <deployment>/<point>/rep<k>/
        point.json                        PointResult: status, times, deployment, workload, errors
        requests.parquet                  one RequestRecord per request (errors and timeouts included)
        metrics/<phase>/<service>.prom    raw /metrics text, phase = before | after
        logs/<service>.log                container logs when the point failed (or always, per setting)

Standardised fields are the schema's own names and units (seconds, bytes); engine-native names stay in the
raw .prom files and in `native` maps. Bump SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import itertools
from enum import StrEnum

from pydantic import BaseModel, Field

SCHEMA_VERSION = "1.1"  # 1.1: PointResult.engine_versions, caveat, driver (additive)


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"  # HTTP error, broken stream, connection refused ...
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # run interrupted (Ctrl-C) while in flight
    NOT_SENT = "not_sent"  # planned but never sent (point stopped, connection never taken...); `error` says why


class RequestRecord(BaseModel):
    """One request as the client saw it. Times are seconds on the client's monotonic clock,
    relative to the load point's t0 (so records from several workers line up)."""

    request_id: str
    request_class: str  # e.g. long_prefill, short_decode
    api: str = "completions"  # completions | chat
    worker: str = ""  # which load-generator process sent it
    input_tokens: int  # intended, exact
    max_tokens: int
    scheduled_s: float  # when the arrival process wanted it sent
    sent_s: float | None = None  # when the request left the client
    first_token_s: float | None = None  # first chunk carrying content (not the role-only chunk)
    done_s: float | None = None
    token_times_s: list[float] = Field(default_factory=list)  # arrival of every content chunk
    prompt_tokens: int | None = None  # usage reported by the server
    completion_tokens: int | None = None
    status: Status = Status.OK
    http_status: int | None = None
    error: str | None = None
    response_id: str | None = None  # the response's `id` (vLLM: cmpl-<X-Request-Id>): joins the engines' spans

    # --- derived (seconds) -------------------------------------------------------------------------
    @property
    def send_lag_s(self) -> float | None:
        return None if self.sent_s is None else self.sent_s - self.scheduled_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None or self.sent_s is None else self.first_token_s - self.sent_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.done_s is None or self.sent_s is None else self.done_s - self.sent_s

    @property
    def itl_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def tpot_s(self) -> float | None:
        n = self.completion_tokens or len(self.token_times_s)
        if n is None or n < 2 or self.first_token_s is None or self.done_s is None:
            return None
        return (self.done_s - self.first_token_s) / (n - 1)


class Workload(BaseModel):
    """What load a point applied (filled by the load stage)."""

    arrival: str  # poisson | constant | concurrency | trace | ramp
    rate_rps: float | None = None
    concurrency: int | None = None
    duration_s: float | None = None
    mix: dict[str, float] = Field(default_factory=dict)  # class -> share
    classes: dict[str, dict] = Field(default_factory=dict)  # class -> its length distributions
    seed: int = 0  # the effective seed of this point's arrivals and prompts (one per repetition)
    plan_seed: int | None = None  # the plan's seed it was derived from; same (plan_seed, repetition): same requests
    api: str = "completions"
    target_rps: float | None = None  # the rate asked for, averaged over the window (None: closed loop)


class PointResult(BaseModel):
    schema_version: str = SCHEMA_VERSION
    deployment: str
    framework: str
    topology: str
    backend: str  # gpu | cpu | emu
    emulated: bool
    point: str  # load point label, e.g. rate=4 or len=2048
    repetition: int = 0
    workload: Workload
    status: str = "ok"  # ok | failed | partial
    failure: str | None = None  # one line: what went wrong
    started_at: str  # ISO 8601 UTC
    ended_at: str | None = None
    load_wall_s: float | None = None  # time spent generating load (for the overhead budget)
    services: dict[str, str] = Field(default_factory=dict)  # service -> role
    # service -> the version the engine reported about itself (vLLM GET /version), not the settings' image tag
    engine_versions: dict[str, str] = Field(default_factory=dict)
    driver: str | None = None  # compose | host
    caveat: str | None = None  # what this deployment cannot show (e.g. P and D sharing one GPU)
    native: dict[str, object] = Field(default_factory=dict)  # anything framework-specific worth keeping


class RunManifest(BaseModel):
    schema_version: str = SCHEMA_VERSION
    plan: str
    stamp: str
    suite_version: str
    settings: dict[str, object]  # Settings.public(): secrets masked
    versions: dict[str, str] = Field(default_factory=dict)  # engine / router / image versions and digests
    environment: dict[str, object] = Field(default_factory=dict)  # GPU model, topology (nvidia-smi topo -m), host
    emulated: bool = False
