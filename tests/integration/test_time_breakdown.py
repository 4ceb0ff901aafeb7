"""Request spans through a real run (emulated vLLM engines + the real vllm-router as local processes): the runner
starts its OTLP receiver, the engines export vLLM's llm_request span per request, the point keeps them, and every
client record joins its engines' spans by request id."""

import json

import pytest

from suite.analysis.spans import join, point_spans
from suite.config import Settings
from suite.load.records import read_records
from suite.netutil import free_ports
from suite.plan import Plan
from suite.runner.run import run_plan

pytestmark = pytest.mark.integration
PORTS = ["ENDPOINT_PORT", "ENGINE_A_PORT", "ENGINE_B_PORT", "ENGINE_C_PORT", "ROUTER_METRICS_PORT",
         "VLLM_NIXL_PORT_PREFILL", "VLLM_NIXL_PORT_DECODE", "VLLM_NIXL_PORT_THIRD", "SGLANG_BOOTSTRAP_PORT",
         "SGLANG_BOOTSTRAP_PORT_THIRD", "LOCUST_WEB_PORT", "OTLP_PORT"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    settings = Settings(**dict(zip(PORTS, free_ports(len(PORTS)), strict=True)))
    plan = Plan(name="time", deployments=["vllm-disagg", "vllm-colocated"], warmup_requests=2, repetitions=1,
                workload={"classes": {"long": {"input": {"min": 1500, "max": 3000}, "output": {"min": 8, "max": 16}},
                                      "short": {"input": {"min": 100, "max": 300}, "output": {"min": 16, "max": 32}}},
                          "mix": {"long": 1, "short": 1}, "arrival": {"kind": "poisson", "rate_rps": 6},
                          "duration_s": 4, "api": "completions", "request_timeout_s": 20, "drain_timeout_s": 10},
                points=[{"label": "p"}], point_timeout_s=90, up_timeout_s=90)
    state = run_plan(plan, settings, tmp_path_factory.mktemp("runs"), backend="emu", driver_kind="process",
                     workers=1)
    assert not state.failed, state.failed
    return state.out


@pytest.mark.parametrize("dep, roles", [("emu-vllm-disagg", ["prefill", "decode"]),
                                        ("emu-vllm-colocated", ["colocated"])])
def test_every_request_joins_its_engine_spans(run, dep, roles):
    point = run / dep / "p" / "rep0"
    tel = json.loads((point / "point.json").read_text())["native"]["telemetry"]
    records = [r for r in read_records(point / "requests.parquet") if r.status.value == "ok"]
    assert records and tel["spans"]["received"] == len(records) * len(roles) == tel["spans"]["expected"]
    joined = join(records, point_spans(point))
    assert joined.unmatched_spans == 0 and joined.other_spans == 0
    assert set(joined.by_request) == {r.request_id for r in records}
    for r in records:
        spans = joined.by_request[r.request_id]
        assert [s.role for s in spans] == roles  # P's span starts before D's
        assert spans[-1].completion_tokens == r.completion_tokens
        assert spans[0].prompt_tokens == r.prompt_tokens
    assert "no GPU telemetry" in " ".join(tel.get("notes", [])) or "gpu" in tel  # a note, never an error


@pytest.mark.parametrize("dep", ["emu-vllm-disagg", "emu-vllm-colocated"])
def test_phases_add_up_to_client_ttft(run, dep):
    from suite.analysis.breakdown import CO_PHASES, PD_PHASES, point_breakdown

    df, info = point_breakdown(run / dep / "p" / "rep0")
    phases = PD_PHASES if "disagg" in dep else CO_PHASES
    assert info["joined"] == info["ok"] > 0 and info["unmatched_spans"] == 0
    total = df[list(phases)].sum(axis=1)
    assert ((total - df["ttft_s"]).abs() < 1e-3).all()  # within 1 ms per request
    # the clocks line up: no phase is negative beyond float noise, and the network legs are small on one host
    assert (df[list(phases)] > -1e-3).all().all(), df[list(phases)].min()
    assert (df["router_in"] < 0.05).all() and (df["first_token_out"] < 0.05).all()
    # the engine parts are real: prefill compute grows with the prompt
    long, short = df[df.request_class == "long"], df[df.request_class == "short"]
    assert long["prefill_compute"].mean() > short["prefill_compute"].mean()
    if "disagg" in dep:  # D's queue holds the KV transfer, which the emulator models for every P/D request
        assert (df["kv_wait"] > 0).all()


def test_report_section(run, tmp_path):
    from suite.report import render
    from suite.report.load import load
    from suite.report.tables import build

    ds = load([run])
    out = render.write(ds, build(ds, {}, b=50), "t", tmp_path)
    md = (out / "report.md").read_text()
    start = md.index("## Where the time goes")
    sec = md[start:md.index("\n## ", start + 1)]  # up to the next section (Figures come before it since headline-first)
    assert "EMULATED" in sec and "**emu-vllm-disagg / long**: TTFT" in sec and "D queue: KV transfer + wait" in sec
    assert "no GPU telemetry" in sec  # this host has no NVML: one note
    assert "H100 SXM" in sec and "emulator hardware profile" in sec  # roofline keyed by the emulator's profile
    assert (out / "figures" / "ttft_breakdown.png").is_file()
    import pandas as pd

    roof = pd.read_csv(out / "roofline.csv")
    assert set(roof["request_class"]) == {"long", "short"}
    long = roof[(roof.deployment == "emu-vllm-disagg") & (roof.request_class == "long")].iloc[0]
    assert 0 < long.prefill_fraction <= 1.0 and 0 < long.decode_fraction <= 1.0  # no engine beats the bound
    assert long.prefill_bound_s > roof[(roof.deployment == "emu-vllm-disagg")
                                       & (roof.request_class == "short")].iloc[0].prefill_bound_s
    per_req = pd.read_csv(out / "time_breakdown_requests.csv")
    assert len(per_req) == int(ds.requests["ok"].sum())  # every ok request has its phases


def test_kv_attribution_uses_the_spans(run):
    from suite.kvprofile.report import pd_attributions, resolve_model
    from suite.report.load import load

    ds = load([run])
    [a] = pd_attributions(ds, resolve_model(ds)[0], None)
    assert a["deployment"] == "emu-vllm-disagg" and a["from_spans"]
    from suite.analysis.breakdown import point_breakdown

    df, _ = point_breakdown(run / "emu-vllm-disagg" / "p" / "rep0")
    assert abs(a["components_s"]["prefill_p"] - df["prefill_compute"].mean()) < 1e-9
    assert abs(a["components_s"]["queue_p"] - df["prefill_queue"].mean()) < 1e-9
