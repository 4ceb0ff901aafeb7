"""The runner gives each repetition its own seed (the same on every deployment) and records it in point.json."""

from pathlib import Path

from test_runner import fakes, plan, points  # noqa: F401  (fakes: autouse fixture)

import suite.load
from suite.config import Settings
from suite.load.run import LoadSummary
from suite.plan import repetition_seed, warmup_seed
from suite.runner.run import run_plan


def test_each_repetition_its_seed_paired_across_deployments(tmp_path, monkeypatch):
    seen = []

    def fake_run(endpoint, model, spec, out_dir, workers=2, timeout_s=60):
        seen.append((Path(out_dir).parent.parent.name, spec.seed, spec.arrival.kind))
        (Path(out_dir) / "requests.parquet").write_bytes(b"fake")
        return LoadSummary(sent=3, ok=3)

    monkeypatch.setitem(vars(suite.load), "run_load", fake_run)
    p = plan(workload={"arrival": {"kind": "poisson", "rate_rps": 2}, "duration_s": 1, "seed": 5},
             warmup_requests=2)
    state = run_plan(p, Settings(), tmp_path, backend="emu", driver_kind="fake")
    got = points(state.out)
    for key, pt in got.items():
        rep = pt["repetition"]
        assert pt["workload"]["seed"] == repetition_seed(5, rep, point=pt["point"]), key
        assert pt["workload"]["plan_seed"] == 5, key
        assert pt["workload"]["target_rps"] == 2
    measured = [(d, s) for d, s, kind in seen if kind != "concurrency"]
    labels = {pt["point"] for pt in got.values()}
    assert {s for _, s in measured} == {repetition_seed(5, r, point=x) for r in (0, 1) for x in labels}
    by_dep = {d: sorted(s for dd, s in measured if dd == d) for d, _ in measured}
    assert len(by_dep) == 2 and len({tuple(v) for v in by_dep.values()}) == 1  # paired: same seeds per deployment
    warm = {s for _, s, kind in seen if kind == "concurrency"}
    assert warm == {warmup_seed({"seed": 5})} and not warm & {s for _, s in measured}


def test_points_of_one_repetition_share_no_prompt():
    """Two points of a repetition draw different prompts: with one seed for every point, request i of each point
    began with the same tokens and vLLM's prefix cache served half of each TTFT-vs-length prompt (H200 run)."""
    from suite.load.prompts import PromptBuilder
    from suite.load.schedule import request_rng

    a, b = repetition_seed(7, 0, point="len=1024"), repetition_seed(7, 0, point="len=2048")
    assert a != b and repetition_seed(7, 0, point="len=1024") == a  # stable, so deployments stay paired
    build = PromptBuilder("completions", "words", 0, 0, (100, 30000))
    first = [build.build(request_rng(s + 1, 0), 64)[:16] for s in (a, b)]
    assert first[0] != first[1]
