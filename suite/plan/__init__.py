"""Experiment plans: YAML naming deployments, a workload, load points and repetitions.

    name: exp3-compare
    deployments: [vllm-colocated, vllm-disagg]      # GPU names; `--backend emu|cpu` picks their twins
    workload: {...}                                   # a suite.load.spec.LoadSpec
    points:                                           # each one deep-merged over `workload`
      - {arrival: {rate: 2}}
      - {arrival: {rate: 6}}
    repetitions: 3
    warmup_requests: 8

Repetitions are independent samples of the workload: repetition k of every point draws its arrivals and prompts
from its own seed, derived from the workload's `seed` and k (`repetition_seed`), and every deployment gets the
same requests in repetition k, so deployments are compared pair by pair.

Everything is validated before anything starts (`load_plan` raises PlanError with one line).
"""

from __future__ import annotations

import copy
import math
import re
import zlib
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from suite.config import SECRET_SETTINGS, Settings, secrets_allowed_in_files

PLAN_DIR = Path(__file__).resolve().parent.parent.parent / "plans"


# Bounds on what one plan may ask for: beyond them a typo (rate 1e9, duration 1e12) would run for ages or exhaust
# memory building the schedule, so the plan is refused before anything starts.
MAX_PLAN_BYTES = 1_000_000
MAX_POINTS = 1_000
MAX_POINT_REQUESTS = 1_000_000  # planned requests of one load point
MAX_PLAN_REQUESTS = 20_000_000  # planned requests of the whole plan (all deployments, points, repetitions)
MAX_TRACE_BYTES = 256 * 1024 * 1024
MAX_SECONDS = 7 * 24 * 3600.0  # no duration or timeout of a plan is longer than a week
# a label names a folder under the results dir: one path component, no separators, no leading dot
LABEL = re.compile(r"^[A-Za-z0-9_+=,@%-][A-Za-z0-9._+=,@%-]{0,127}$")


class PlanError(ValueError):
    """A plan that cannot run; the message is one line."""


class Plan(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")  # a folder name under --out
    description: str = ""
    deployments: list[str] = Field(min_length=1)
    backend: str | None = Field(None, pattern=r"^(gpu|emu|cpu)$", description="override the deployments' backend")
    workload: dict = Field(default_factory=dict)
    points: list[dict] = Field(default_factory=lambda: [{}], min_length=1, max_length=MAX_POINTS)
    repetitions: int = Field(1, ge=1, le=100)
    warmup_requests: int = Field(4, ge=0, le=10_000)
    on_failure: str = Field("continue", pattern=r"^(continue|stop)$")
    point_timeout_s: float = Field(900, gt=0, le=MAX_SECONDS, description="hard limit for one load point")
    up_timeout_s: float = Field(1800, gt=0, le=MAX_SECONDS, description="limit for a deployment to become healthy")
    liveness_timeout_s: float = Field(
        25, gt=0, le=3600, description="a point fails when the endpoint has not answered /health (or the results "
        "disk has not taken a write) for this long; the deployment's remaining points are skipped")
    settings: dict[str, str | int | float] = Field(default_factory=dict, description="Settings overrides")

    def resolved_deployments(self, backend: str | None = None) -> list[str]:
        backend = backend or self.backend
        out = []
        for name in self.deployments:
            base = name.split("-", 1)[1] if name.startswith(("emu-", "cpu-")) else name
            out.append(base if backend in (None, "gpu") else f"{backend}-{base}")
        return out

    def point_specs(self) -> list[tuple[str, dict]]:
        """(label, workload dict) for every load point, in order."""
        return [(point_label(p), deep_merge(self.workload, p)) for p in self.points]

    def public_dump(self) -> dict:
        """The plan as written with results: secret settings masked."""
        data = self.model_dump(mode="json")
        data["settings"] = {k: ("***" if k in SECRET_SETTINGS and v else v) for k, v in self.settings.items()}
        return data


def repetition_seed(plan_seed: int, rep: int, purpose: int = 0, point: str = "") -> int:
    """The seed of repetition `rep` (purpose 1: the warm-up, whose prompts must not be any repetition's).
    A hash of (plan seed, rep) through numpy's SeedSequence: stable across runs and machines, and neighbouring
    repetitions share nothing (seed + rep would make repetition 1 of seed 1 repeat repetition 0 of seed 2)."""
    # the point's label too: points of one repetition must not share prompts, or the engines' prefix caches serve
    # one point's prompts from another's (measured: half of every TTFT-vs-length prompt came from the cache)
    words = [plan_seed, rep, purpose] + ([zlib.crc32(point.encode())] if point else [])
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])  # 63 bits: any LoadSpec seed


def repetition_spec(spec: dict, rep: int, point: str = "") -> dict:
    """A point's workload dict as repetition `rep` runs it: the same but for its own seed (per point label)."""
    return spec | {"seed": repetition_seed(int(spec.get("seed", 0)), rep, point=point)}


def warmup_seed(spec: dict) -> int:
    return repetition_seed(int(spec.get("seed", 0)), 0, purpose=1)


def apply_overrides(settings: Settings, overrides: dict) -> Settings:
    """The plan's `settings:` block on top of the user's settings (a plan pins what it needs, e.g. MAX_MODEL_LEN)."""
    if not overrides:
        return settings
    try:
        return Settings(**(settings.model_dump() | overrides))
    except ValidationError as e:
        err = e.errors()[0]
        raise PlanError(f"plan settings: {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}") from None


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k == "label":
            continue
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def point_label(point: dict) -> str:
    """An explicit `label` as given (checked by `check_label`), else one made from the point's overrides with
    every character that could not be part of a folder name replaced."""
    if "label" in point:
        return str(point["label"])

    def flat(d: dict, prefix: str = "") -> list[str]:
        items = []
        for k, v in d.items():
            items += flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"]
        return items

    label = re.sub(r"[^A-Za-z0-9._+=,@%-]", "_", ",".join(flat(point)))[:128].lstrip(".")
    return label or "default"


def check_label(label: str) -> str | None:
    """Why `label` cannot name a results folder, or None."""
    if not LABEL.match(label):
        return (f"label {label!r} must be one folder name: letters, digits and . _ + = , @ % - only, no leading "
                f"dot, at most 128 characters")
    return None


def _non_finite(data, where: str = "") -> str | None:
    """The first NaN/Inf number in a parsed plan, as a dotted field path, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return f"{where or 'value'}: {data!r} is not a finite number"
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return None
    for k, v in items:
        bad = _non_finite(v, f"{where}.{k}" if where else str(k))
        if bad:
            return bad
    return None


def find_plan(ref: str | Path) -> Path:
    p = Path(ref)
    for cand in (p, PLAN_DIR / p, PLAN_DIR / f"{ref}.yaml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(x.stem for x in PLAN_DIR.glob("*.yaml")))
    raise PlanError(f"no plan {str(ref)!r}; bundled plans: {known}")


def load_plan(ref: str | Path, settings: Settings, backend: str | None = None,
              gpus_present: int | None = None) -> Plan:
    """Parse and validate a plan against the catalog, the settings and (for GPU runs) the host's GPU count."""
    from suite.deploy.catalog import deployments, gpu_order_problem

    path = find_plan(ref)
    try:
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise PlanError(f"{path}: larger than {MAX_PLAN_BYTES} bytes; a plan is a short YAML file")
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not a text file (not UTF-8)") from None
    except OSError as e:
        raise PlanError(f"{path}: cannot read ({e.strerror})") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise PlanError(f"{path}: not valid YAML ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: a plan is a YAML mapping")
    bad = _non_finite(raw)
    if bad:
        raise PlanError(f"{path}: {bad}")
    try:
        plan = Plan(**{str(k): v for k, v in raw.items()})
    except ValidationError as e:
        err = e.errors()[0]
        raise PlanError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']} "
                        f"(got {_short(err.get('input'))})") from None
    secret = sorted(set(plan.settings) & SECRET_SETTINGS)
    if secret and not secrets_allowed_in_files():
        raise PlanError(f"{path}: settings.{secret[0]}: a secret in a plan file is refused (it would sit in the "
                        f"plan and its copies); set it in the environment, or set PDSUITE_ALLOW_TOKEN_IN_FILE=1")

    settings = apply_overrides(settings, plan.settings)
    catalog = deployments()
    for name in plan.resolved_deployments(backend):
        if name not in catalog:
            raise PlanError(f"{path}: unknown deployment {name!r} (see `pdsuite deployments`)")
        problem = gpu_order_problem(catalog[name], settings)
        if problem:
            raise PlanError(f"{path}: {problem} (set the GPU indices in .env)")
        need = catalog[name].gpus_needed
        if gpus_present is not None and need > gpus_present:
            raise PlanError(f"{path}: {name} needs {need} GPUs, this host has {gpus_present}")
    labels = [label for label, _ in plan.point_specs()]
    for k, label in enumerate(labels):
        why = check_label(label)
        if why:
            raise PlanError(f"{path}: points.{k}.{why}")
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise PlanError(f"{path}: two load points share the label {dup!r}; give them distinct labels")
    names = plan.resolved_deployments(backend)
    total = 0
    for label, spec in plan.point_specs():
        validate_workload(spec, settings, names, where=f"{path}: point {label}")
        total += check_schedule(spec, where=f"{path}: point {label}", max_model_len=_max_len(names, settings))
    total *= plan.repetitions * len(names)
    if total > MAX_PLAN_REQUESTS:
        raise PlanError(f"{path}: the plan schedules ~{total:.3g} requests in all (limit {MAX_PLAN_REQUESTS:.0e}); "
                        f"fewer points, repetitions or shorter durations")
    if any(n.startswith("emu-") for n in names):
        check_emulator_settings(settings, where=str(path))
    warn_short_points(plan)
    return plan


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _max_len(names: list[str], settings: Settings) -> int:
    """The smallest context length among the deployments (a trace request must fit every one of them)."""
    from suite.deploy.catalog import deployments
    from suite.frameworks.base import get as get_framework

    catalog = deployments()
    return min(get_framework(catalog[n].framework).max_model_len(catalog[n], settings) for n in names)


def check_schedule(spec: dict, where: str, max_model_len: int | None = None) -> int:
    """How many requests a point plans (an upper estimate); refuses a schedule that is empty, absurdly large, or a
    trace file that cannot be replayed. Runs before anything starts (the load stage checks again at the point)."""
    from suite.load.schedule import arrival_times, plans, read_trace
    from suite.load.spec import LoadSpec

    s = LoadSpec(**spec)  # validate_workload has checked it parses
    a = s.arrival
    for name, value in (("duration_s", s.duration_s), ("request_timeout_s", s.request_timeout_s),
                        ("drain_timeout_s", s.drain_timeout_s)):
        if value is not None and value > MAX_SECONDS:
            raise PlanError(f"{where}: {name} {value:g} s is longer than a week")
    if a.kind == "trace":
        trace = Path(a.trace).expanduser()
        try:
            size = trace.stat().st_size
        except OSError as e:
            raise PlanError(f"{where}: arrival.trace {str(trace)!r}: {e.strerror}") from None
        if not trace.is_file():
            raise PlanError(f"{where}: arrival.trace {str(trace)!r} is not a file")
        if size > MAX_TRACE_BYTES:
            raise PlanError(f"{where}: arrival.trace {str(trace)!r} is larger than {MAX_TRACE_BYTES >> 20} MiB")
        try:
            rows = read_trace(trace, a.trace_time_unit)
        except UnicodeDecodeError:
            raise PlanError(f"{where}: arrival.trace {str(trace)!r}: not a text file (not UTF-8)") from None
        except ValueError as e:  # ConfigError is a ValueError
            raise PlanError(f"{where}: arrival.{str(e).splitlines()[0]}") from None
        limit = min(x for x in (s.max_model_len, max_model_len, 1 << 62) if x)
        for k, (t, n_in, n_out) in enumerate(rows, start=1):
            if not math.isfinite(t):
                raise PlanError(f"{where}: arrival.trace {str(trace)!r}: request {k} has timestamp {t!r}")
            if limit and n_in + n_out > limit:
                raise PlanError(f"{where}: arrival.trace {str(trace)!r}: request {k} needs {n_in} + {n_out} tokens "
                                f"> max_model_len {limit}")
        n = len(plans(s.model_copy(update={"arrival": a.model_copy(update={"trace": trace})})))
        if n == 0:
            raise PlanError(f"{where}: the trace schedules no requests within duration_s {s.duration_s}")
        return n
    if a.kind == "concurrency":
        n = s.num_requests or int(max(1.0, s.duration_s or 1) * a.concurrency * 100)  # ~100 req/s per stream at most
        if s.num_requests and s.num_requests > MAX_POINT_REQUESTS:
            raise PlanError(f"{where}: num_requests {s.num_requests} > {MAX_POINT_REQUESTS} per point")
        return min(n, MAX_POINT_REQUESTS)
    if a.kind == "step":
        span = min(sum(d for d, _ in a.steps), s.duration_s or math.inf)
        peak = max(r for _, r in a.steps)
    else:
        span = s.duration_s if s.duration_s is not None else math.inf
        peak = max(a.rate_rps or 0.0, a.end_rps or 0.0)
    estimate = min(span * peak, s.num_requests or math.inf)
    if not math.isfinite(estimate) or estimate > MAX_POINT_REQUESTS:
        raise PlanError(f"{where}: the point schedules ~{estimate:.3g} requests (rate x duration; limit "
                        f"{MAX_POINT_REQUESTS:.0e} per point)")
    if len(arrival_times(s)) == 0:
        raise PlanError(f"{where}: the schedule has no requests (duration_s {s.duration_s} too short for the rate)")
    return int(estimate) + 1


def check_emulator_settings(settings: Settings, where: str) -> None:
    """EMU_HARDWARE and EMU_MODEL_CONFIG must load (the emulated engines would exit at start otherwise)."""
    from suite.emulator.hardware import HardwareError, load_hardware
    from suite.modelcfg import ModelConfigError, load

    try:
        hw = load_hardware(settings.EMU_HARDWARE)
    except HardwareError as e:
        raise PlanError(f"{where}: setting EMU_HARDWARE: {str(e).splitlines()[0]}") from None
    try:
        size = load(settings.EMU_MODEL_CONFIG)
    except ModelConfigError as e:
        raise PlanError(f"{where}: setting EMU_MODEL_CONFIG: {str(e).splitlines()[0]}") from None
    if size.weight_bytes >= hw.mem_bytes * hw.mem_fraction * 2:  # TP=2 is the largest deployment of one model
        raise PlanError(f"{where}: setting EMU_MODEL_CONFIG {settings.EMU_MODEL_CONFIG!r} does not fit "
                        f"EMU_HARDWARE {settings.EMU_HARDWARE!r} (weights {size.weight_bytes / 1e9:.1f} GB)")


def short_points(plan: Plan) -> list[str]:
    """'rate=2: long_prefill ~4, ...' for every point whose classes expect too few requests per repetition for the
    percentiles the report gives (expected = rate x duration x mix share; suite.stats.MIN_SAMPLES)."""
    from suite.load.spec import LoadSpec
    from suite.stats.bootstrap import MIN_SAMPLES

    need = max(MIN_SAMPLES.values())
    out = []
    for label, spec in plan.point_specs():
        ls = LoadSpec(**spec)
        a, dur = ls.arrival, ls.duration_s
        if a.kind in ("poisson", "constant") and dur:
            total = a.rate_rps * dur
        elif a.kind == "ramp" and dur:
            total = (a.rate_rps + a.end_rps) / 2 * dur
        elif a.kind == "step":
            total = sum(d * r for d, r in a.steps)
        else:  # closed loop, traces: the count depends on the server or the file
            continue
        if ls.num_requests:
            total = min(total, ls.num_requests)
        few = [f"{c} ~{total * share:.0f}" for c, share in ls.shares().items() if total * share < need]
        if few:
            out.append(f"{label}: {', '.join(few)}")
    return out


def warn_short_points(plan: Plan) -> None:
    """A WARNING, not an error: short points still run, and the report marks the percentiles they cannot carry."""
    import sys

    from suite.stats.bootstrap import MIN_SAMPLES

    short = short_points(plan)
    if short:
        need = ", ".join(f"p{round(q * 100)} >= {n}" for q, n in sorted(MIN_SAMPLES.items(), reverse=True))
        print(f"pdsuite: warning: plan {plan.name}: points too short for the report's percentiles (requests per "
              f"class per repetition, {need}): {'; '.join(short)}. The report marks those percentiles.",
              file=sys.stderr)


def validate_workload(spec: dict, settings: Settings, deployment_names: list[str], where: str) -> None:
    """The load stage's own validation (LoadSpec) plus limits that depend on the deployment."""
    from suite.deploy.catalog import deployments
    from suite.frameworks.base import get as get_framework
    from suite.load.spec import LoadSpec

    for name in deployment_names:
        dep = deployments()[name]
        limit = get_framework(dep.framework).max_model_len(dep, settings)
        try:
            LoadSpec(**(spec | {"max_model_len": min(limit, spec.get("max_model_len") or limit)}))
        except (ValidationError, ValueError) as e:
            msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            raise PlanError(f"{where} on {name}: {msg.removeprefix('Value error, ')}") from None
