"""LoadSpec: what load one point applies. Embedded in the runner's YAML plans; validated before any request.

Every check that can fail on user input fails here, with one clear message, before load starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from suite.schema import Workload


class Lengths(BaseModel):
    """A token-length distribution: uniform integers in [min, max] (min == max: fixed)."""

    model_config = {"extra": "forbid"}
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> Lengths:
        if self.min > self.max:
            raise ValueError(f"length min {self.min} > max {self.max}")
        return self


class RequestClass(BaseModel):
    model_config = {"extra": "forbid"}
    input: Lengths
    output: Lengths


def default_classes() -> dict[str, RequestClass]:
    return {
        "long_prefill": RequestClass(input=Lengths(min=2048, max=8192), output=Lengths(min=16, max=64)),
        "short_decode": RequestClass(input=Lengths(min=64, max=256), output=Lengths(min=128, max=512)),
    }


class Arrival(BaseModel):
    """poisson/constant: open loop at rate_rps. ramp: rate goes linearly rate_rps -> end_rps over the duration.
    step: piecewise-constant rates, `steps` = [[seconds, rps], ...]. concurrency: closed loop, `concurrency` streams.
    trace: replay `trace` (CSV/JSONL: timestamp,input_length,output_length or TIMESTAMP,ContextTokens,GeneratedTokens).
    """

    model_config = {"extra": "forbid"}
    kind: Literal["poisson", "constant", "ramp", "step", "concurrency", "trace"] = "poisson"
    rate_rps: float | None = Field(None, gt=0)
    end_rps: float | None = Field(None, ge=0)
    steps: list[tuple[float, float]] = Field(default_factory=list)
    concurrency: int | None = Field(None, ge=1)
    trace: Path | None = None
    trace_time_unit: Literal["s", "ms"] = "ms"  # unit of numeric trace timestamps (Mooncake: ms)
    trace_speedup: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> Arrival:
        need = {"poisson": "rate_rps", "constant": "rate_rps", "ramp": "rate_rps", "concurrency": "concurrency",
                "trace": "trace"}
        field = need.get(self.kind)
        if field and getattr(self, field) is None:
            raise ValueError(f"arrival {self.kind!r} needs {field}")
        if self.kind == "ramp" and self.end_rps is None:
            raise ValueError("arrival 'ramp' needs end_rps")
        if self.kind == "step":
            if not self.steps:
                raise ValueError("arrival 'step' needs steps: [[seconds, rps], ...]")
            if any(d <= 0 or r < 0 for d, r in self.steps):
                raise ValueError("step durations must be > 0 and rates >= 0")
        return self


class LoadSpec(BaseModel):
    model_config = {"extra": "forbid"}
    classes: dict[str, RequestClass] = Field(default_factory=default_classes)
    mix: dict[str, float] = Field(default_factory=lambda: {"long_prefill": 0.5, "short_decode": 0.5})
    arrival: Arrival = Field(default_factory=lambda: Arrival(kind="poisson", rate_rps=1.0))
    duration_s: float | None = Field(None, gt=0)  # open loop: schedule length; closed loop: run length
    num_requests: int | None = Field(None, ge=1)  # stop after this many (whichever comes first)
    seed: int = Field(0, ge=0, lt=2**63)  # a plan's repetitions each derive their own (suite.plan.repetition_seed)
    api: Literal["completions", "chat"] = "completions"
    # how text prompts get their exact token count: "auto" (the runner picks: emulated -> words, real engines ->
    # the served model's tokenizer from a local folder), "words" (one token per word), "hf:<local folder>"
    tokenizer: str = "auto"
    # /v1/completions prompt form: "auto" = token ids unless the deployment's framework rejects them (then text)
    completions_prompt: Literal["auto", "token_ids", "text"] = "auto"
    shared_prefix_tokens: int = Field(0, ge=0)  # > 0: every prompt starts with the same tokens (prefix caching on)
    token_id_range: tuple[int, int] = (100, 1000)  # random prompt ids drawn from [lo, hi): valid in any vocab
    max_model_len: int | None = Field(None, ge=2)  # when set, input + output must fit
    request_timeout_s: float = Field(600.0, gt=0)
    drain_timeout_s: float = Field(120.0, ge=0)  # after the last arrival: wait this long for in-flight requests

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, v: str) -> str:
        if v in ("words", "auto"):
            return v
        if v.startswith("hf:"):
            path = Path(v[3:]).expanduser()
            if not path.is_dir():
                raise ValueError(f"tokenizer folder {path} not found (hf:<local folder>; no hub access)")
            return v
        raise ValueError(f"unknown tokenizer {v!r}: use 'auto', 'words' or 'hf:<local folder>'")

    @model_validator(mode="after")
    def _consistent(self) -> LoadSpec:
        if not self.classes:
            raise ValueError("no request classes")
        unknown = sorted(set(self.mix) - set(self.classes))
        if unknown:
            raise ValueError(f"mix names unknown classes {unknown}; classes are {sorted(self.classes)}")
        if any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"impossible mix {self.mix}: weights must be >= 0 and sum > 0")
        lo, hi = self.token_id_range
        if not 0 <= lo < hi:
            raise ValueError(f"token_id_range {self.token_id_range} must be 0 <= lo < hi")
        for name, c in self.classes.items():
            if self.mix.get(name, 0) == 0:
                continue
            if self.shared_prefix_tokens >= c.input.min:
                raise ValueError(f"shared_prefix_tokens {self.shared_prefix_tokens} >= {name} input min {c.input.min}")
            if self.max_model_len and c.input.max + c.output.max > self.max_model_len:
                raise ValueError(f"class {name}: input max {c.input.max} + output max {c.output.max} "
                                 f"> max_model_len {self.max_model_len}")
        open_loop = self.arrival.kind in ("poisson", "constant", "ramp")
        if open_loop and self.duration_s is None and self.num_requests is None:
            raise ValueError(f"arrival {self.arrival.kind!r} needs duration_s or num_requests")
        if self.arrival.kind == "concurrency" and self.duration_s is None and self.num_requests is None:
            raise ValueError("closed-loop concurrency needs duration_s or num_requests")
        if self.arrival.kind == "ramp" and self.duration_s is None:
            raise ValueError("arrival 'ramp' needs duration_s")
        return self

    @property
    def text_prompts(self) -> bool:
        """Prompts go out as text (chat, or completions with text prompts): the tokenizer decides the count."""
        return self.api == "chat" or self.completions_prompt == "text"

    def shares(self) -> dict[str, float]:
        total = sum(self.mix.values())
        return {k: v / total for k, v in self.mix.items() if v > 0}

    def to_workload(self) -> Workload:
        from suite.load.schedule import target_rps

        a = self.arrival
        return Workload(
            arrival=a.kind,
            rate_rps=a.rate_rps,
            concurrency=a.concurrency,
            duration_s=self.duration_s,
            mix=self.shares(),
            classes={k: c.model_dump() for k, c in self.classes.items()},
            seed=self.seed,
            api=self.api,
            target_rps=target_rps(self),
        )


def load_spec(data: dict | str | Path) -> LoadSpec:
    """From a dict (a plan's embedded block) or a YAML/JSON file; raises ConfigError with one line."""
    import yaml
    from pydantic import ValidationError

    from suite.config import ConfigError

    if isinstance(data, (str, Path)):
        try:
            data = yaml.safe_load(Path(data).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read load spec {data}: {str(e).splitlines()[0]}") from e
    try:
        return LoadSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"load spec{' ' + where if where else ''}: {err['msg']}") from e
