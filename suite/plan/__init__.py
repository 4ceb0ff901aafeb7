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
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from suite.config import Settings

PLAN_DIR = Path(__file__).resolve().parent.parent.parent / "plans"


class PlanError(ValueError):
    """A plan that cannot run; the message is one line."""


class Plan(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    description: str = ""
    deployments: list[str] = Field(min_length=1)
    backend: str | None = Field(None, pattern=r"^(gpu|emu|cpu)$", description="override the deployments' backend")
    workload: dict = Field(default_factory=dict)
    points: list[dict] = Field(default_factory=lambda: [{}])
    repetitions: int = Field(1, ge=1, le=100)
    warmup_requests: int = Field(4, ge=0)
    on_failure: str = Field("continue", pattern=r"^(continue|stop)$")
    point_timeout_s: float = Field(900, gt=0, description="hard limit for one load point")
    up_timeout_s: float = Field(1800, gt=0, description="limit for a deployment to become healthy")
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


def repetition_seed(plan_seed: int, rep: int, purpose: int = 0) -> int:
    """The seed of repetition `rep` (purpose 1: the warm-up, whose prompts must not be any repetition's).
    A hash of (plan seed, rep) through numpy's SeedSequence: stable across runs and machines, and neighbouring
    repetitions share nothing (seed + rep would make repetition 1 of seed 1 repeat repetition 0 of seed 2)."""
    state = np.random.SeedSequence([plan_seed, rep, purpose]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])  # 63 bits: any LoadSpec seed


def repetition_spec(spec: dict, rep: int) -> dict:
    """A point's workload dict as repetition `rep` runs it: the same but for its own seed."""
    return spec | {"seed": repetition_seed(int(spec.get("seed", 0)), rep)}


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
    if "label" in point:
        return str(point["label"])

    def flat(d: dict, prefix: str = "") -> list[str]:
        items = []
        for k, v in d.items():
            items += flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"]
        return items

    return ",".join(flat(point)).replace("/", "_") or "default"


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
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PlanError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: a plan is a YAML mapping")
    try:
        plan = Plan(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise PlanError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None

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
    if len(set(labels)) != len(labels):
        raise PlanError(f"{path}: two load points share the label {labels[0]!r}; give them distinct labels")
    for label, spec in plan.point_specs():
        validate_workload(spec, settings, plan.resolved_deployments(backend), where=f"{path}: point {label}")
    warn_short_points(plan)
    return plan


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
