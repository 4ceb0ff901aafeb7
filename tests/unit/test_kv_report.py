"""The report's KV-transfer section: attribution from normalised metric deltas, link lines, crossover, warnings,
and SGLang's P/D stage mapping."""

import json
from pathlib import Path

import numpy as np
import pytest

from suite.kvprofile import report as kvr
from suite.normalise import normalise_text
from suite.report.load import load
from suite.report.synth import make_tree
from suite.report.tables import build

FIX = Path(__file__).resolve().parents[1] / "fixtures"
DEPS = (("vllm", "disagg"), ("vllm", "colocated"), ("sglang", "disagg"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("kv") / "run", deployments=DEPS, rates=(2.0,), reps=2, n_per_rep=120,
                     classes={"only": 2048}, emulated=False)


def _expected_transfer(tree: Path, dep: str) -> tuple[float, float]:
    """Per-request transfer seconds and bytes, straight from the synthetic records (what synth wrote)."""
    import pyarrow.parquet as pq

    toks = []
    for rq in sorted((tree / dep).glob("*/rep*/requests.parquet")):
        t = pq.read_table(rq).to_pandas()
        toks.append(t.loc[t["status"] == "ok", "input_tokens"].to_numpy(float))
    b = np.concatenate(toks) * 131072
    return float((2e-4 + b / 300e9).mean()), float(b.mean())


def test_section_attributes_each_pd_point(tree):
    ds = load([tree])
    out = kvr.section(build(ds, {}, 50), ds)
    attrs = {a["deployment"]: a for a in out["attributions"]}
    assert set(attrs) == {"vllm-disagg", "sglang-disagg"}  # co-located has no P/D roles
    for dep, a in attrs.items():
        t, b = _expected_transfer(tree, dep)
        assert a["transfer_s"] == pytest.approx(t, rel=1e-6)
        assert a["transfer_bytes"] == pytest.approx(b, rel=1e-6)
        assert 200e9 < a["achieved_bps"] < 300e9
        assert 230 <= a["client_requests"] <= 240  # 2 x 120 requests, ~0.2% synthetic errors
        c = a["components_s"]
        assert c["prefill_p"] > 0 and c["queue_p"] > 0  # SGLang's prefill_forward stage is mapped too
        parts = sum(v for v in c.values() if v is not None)
        assert parts == pytest.approx(a["ttft_s"])
        assert a["shares"]["transfer"] == pytest.approx(t / a["ttft_s"])
        assert not any("TCP" in w for w in a["warnings"])
    md = out["markdown"]
    assert "| vllm-disagg | rate=2 |" in md and "| sglang-disagg | rate=2 |" in md
    assert "**measured**" in md and "nominal spec" in md  # NVLink from docs/data, others spec
    assert "TCP FALLBACK" not in md and "EMULATED" not in md
    assert "25 Gb/s TCP | 408, 32,176 |" in md  # crossover from the committed H100 prefill + probe data
    assert set(out["figures"]) == {"kv_transfer", "kv_ttft_decomposition"}
    left = out["figures"]["kv_transfer"].axes[0]
    assert any(ln.get_label().startswith("run: vllm-disagg") for ln in left.lines)
    assert any("measured" in ln.get_label() for ln in left.lines)


def test_tcp_fallback_is_flagged_with_the_remedy(tmp_path):
    tree = make_tree(tmp_path / "slow", deployments=(("vllm", "disagg"),), rates=(2.0,), reps=1, n_per_rep=60,
                     classes={"only": 2048}, emulated=False, link_Bps=1e9)
    ds = load([tree])
    md = kvr.section(build(ds, {}, 20), ds)["markdown"]
    assert "TCP FALLBACK" in md and "UCX_TLS" in md and "ipc: host" in md
    assert "**warning** vllm-disagg rate=2" in md


def test_emulated_inputs_are_labelled(tmp_path):
    tree = make_tree(tmp_path / "emu", deployments=(("vllm", "disagg"),), rates=(2.0,), reps=1, n_per_rep=40,
                     link_Bps=1e9)
    ds = load([tree])
    md = kvr.section(build(ds, {}, 20), ds)["markdown"]
    assert "EMULATED" in md and "emulated input" in md and "TCP FALLBACK" not in md


def test_role_deltas_sum_repetitions(tree):
    ds = load([tree])
    pidx = ds.points.index[ds.points["deployment"] == "vllm-disagg"].tolist()
    one = kvr.role_deltas(ds.metrics, pidx[:1])["decode"].hist["kv_transfer_s"]
    both = kvr.role_deltas(ds.metrics, pidx)["decode"].hist["kv_transfer_s"]
    assert len(pidx) == 2 and both.count > one.count > 0 and both.sum > one.sum


def test_probe_beside_results_wins_and_model_from_settings(tmp_path, tree):
    probe = json.loads(Path(kvr.DOCS_DATA / "kvprobe-h100x2-llama-3.1-8b.json").read_text())
    probe["summary"]["link_fit_coalesced"]["bandwidth_gbps"] = 123.0
    run = tmp_path / "results" / "plan" / "stamp"
    run.mkdir(parents=True)
    (tmp_path / "results" / "kvprobe.json").write_text(json.dumps(probe))

    class DS:
        manifests = [{"_path": str(run), "settings": {"MODEL": "meta-llama/Llama-3.1-8B-Instruct"}}]

    got, where = kvr.find_probe(DS, "llama-3.1-8b")
    assert where.endswith("results/kvprobe.json") and got["summary"]["link_fit_coalesced"]["bandwidth_gbps"] == 123
    m, note = kvr.resolve_model(DS)
    assert m.name == "llama-3.1-8b" and "ASSUMED" not in note
    DS.manifests = [{"_path": str(tmp_path / "x"), "settings": {"MODEL": "org/unknown-model"}}]
    assert kvr.find_probe(DS, "unknown-model") == (None, "")
    assert "ASSUMED" in kvr.resolve_model(DS)[1]


def test_sglang_pd_stages_are_mapped_from_the_fixtures():
    d = normalise_text((FIX / "sglang-0.5.23-metrics.txt").read_text(), "sglang")
    p = normalise_text((FIX / "sglang-0.5.23-metrics-prefill.txt").read_text(), "sglang")
    for name in ("decode_prepare_s", "decode_bootstrap_s", "kv_wait_s"):
        s = d.get(name, "decode")
        assert s is not None and s.count == 8 and 0 < s.mean < 0.1, name
    for name in ("prefill_bootstrap_s", "kv_transfer_stage_s", "prefill_s"):
        s = p.get(name, "prefill")
        assert s is not None and s.count == 8, name
    # stages are told apart by the label: decode's "transferred" is not P's transfer stage
    assert d.get("kv_transfer_stage_s", "decode") is None and p.get("kv_wait_s", "prefill") is None
    assert p.get("prefill_s", "prefill").sum != p.get("prefill_bootstrap_s", "prefill").sum


def test_sglang_first_decode_stage_feeds_the_decomposition():
    page = "\n".join([
        "# TYPE sglang:per_stage_req_latency_seconds histogram",
        *(f'sglang:per_stage_req_latency_seconds_bucket{{engine_type="decode",stage="fake_output",le="{le}"}} {c}'
          for le, c in (("0.01", 3.0), ("+Inf", 4.0))),
        'sglang:per_stage_req_latency_seconds_count{engine_type="decode",stage="fake_output"} 4.0',
        'sglang:per_stage_req_latency_seconds_sum{engine_type="decode",stage="fake_output"} 0.02', ""])
    s = normalise_text(page, "sglang").get("first_decode_s", "decode")
    assert s.count == 4 and s.mean == pytest.approx(0.005)


def test_breakdown_has_sglang_components_and_derived_decode(tree):
    ds = load([tree])
    b = build(ds, {}, 20).breakdown
    sg = b[b["deployment"] == "sglang-disagg"]
    got = set(zip(sg["role"], sg["metric"], strict=True))
    assert {("prefill", "prefill_s"), ("prefill", "queue_s"), ("decode", "kv_transfer_s"),
            ("decode", "decode_s")} <= got
    dec = sg[(sg["role"] == "decode") & (sg["metric"] == "decode_s")].iloc[0]
    m = ds.metrics.join(ds.points["deployment"], on="pidx")
    t = m[(m["deployment"] == "sglang-disagg") & (m["role"] == "decode") & (m["metric"] == "ttft_s")]
    assert dec["derived"] == "e2e_s - ttft_s"
    assert dec["mean_s"] == pytest.approx(2 * t["sum"].sum() / t["count"].sum())  # synth: E2E = 3 x TTFT
    assert not (sg["role"] == "prefill").to_numpy()[sg["metric"] == "decode_s"].any()  # P does not decode


def test_report_includes_the_section(tree, tmp_path):
    from suite.report.render import write

    ds = load([tree])
    out = write(ds, build(ds, {}, 20), "kv", tmp_path)
    md = (out / "report.md").read_text()
    assert "KV transfer analysis" in md and (out / "figures" / "kv_ttft_decomposition.png").stat().st_size > 1000
