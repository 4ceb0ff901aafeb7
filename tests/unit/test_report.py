import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from suite.report.synth import make_tree


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("res") / "stamp1", reps=3, n_per_rep=80, emulated=False, seed=1)


def _report(*args):
    from suite.cli import app

    return CliRunner().invoke(app, ["report", *map(str, args)])


def test_report_end_to_end(real_tree, tmp_path):
    r = _report(real_tree, "--name", "r1", "--out", tmp_path, "--bootstrap", "300")
    assert r.exit_code == 0, r.output
    out = tmp_path / "r1"
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and 'src="http' not in html
    assert "EMULATED" not in html
    s = pd.read_csv(out / "summary.csv")
    assert len(s) == 2 * 2 * 2  # deployments x rates x classes
    assert s["requests"].sum() == 2 * 2 * 3 * 80  # every record counted once
    assert (s["ttft_p50_ci_low"] <= s["ttft_p50"]).all() and (s["ttft_p50"] <= s["ttft_p50_ci_high"]).all()
    imp = pd.read_csv(out / "improvement.csv")
    ttft = imp[imp["metric"] == "TTFT p50"]
    # the synthetic P/D deployment is 40% faster at TTFT; its TPOT is the same
    assert len(ttft) == 4 and (ttft["ci_high"] < 0).all() and ttft["delta_pct"].between(-55, -25).all()
    assert not imp[imp["metric"] == "TPOT p50"]["significant"].all()
    md = (out / "report.md").read_text()
    # improvement table: one row per point x class x deployment, significant TTFT p50 changes in bold
    assert md.count("| vllm-disagg | vllm-colocated | **-") == 4 and "negative = lower latency" in md
    kv = pd.read_csv(out / "kv_transfer.csv")
    assert (kv["bytes_per_token"].round() == 131072).all()
    cons = pd.read_csv(out / "ttft_consistency.csv")
    assert cons[cons["deployment"] == "vllm-colocated"]["ok"].all()
    reps = pd.read_csv(out / "repetitions.csv")
    assert reps["path"].str.endswith("rep0").any()  # traceable to the raw records
    llmd = json.loads(next((out / "llmd").glob("vllm-disagg__rate=2.json")).read_text())
    assert llmd["version"] == "0.1" and llmd["metrics"]["requests"]["total"] == 3 * 80
    assert llmd["metrics"]["latency"]["time_to_first_token"]["units"] == "s"
    assert llmd["scenario"]["host"]["type"] == ["prefill", "decode"]


def test_emulated_banner_and_mix_warning(real_tree, tmp_path):
    emu = make_tree(tmp_path / "emu", reps=1, n_per_rep=40, emulated=True, deployments=(("vllm", "colocated"),))
    r = _report(emu, "--name", "e", "--out", tmp_path)
    assert r.exit_code == 0 and "EMULATED" in (tmp_path / "e" / "index.html").read_text()
    r = _report(emu, real_tree, "--name", "mix", "--out", tmp_path, "--bootstrap", "100")
    assert r.exit_code == 0
    md = (tmp_path / "mix" / "report.md").read_text()
    assert "MIX emulated and real" in md and "MIXED" in md and "MIXED" in r.stderr


def test_bad_inputs_are_messages_not_crashes(tmp_path):
    tree = make_tree(tmp_path / "t", reps=2, n_per_rep=30, emulated=False, deployments=(("sglang", "colocated"),),
                     rates=(4.0,))
    (tree / "sglang-colocated" / "rate=4" / "rep0" / "requests.parquet").write_bytes(b"not parquet")
    pj = tree / "sglang-colocated" / "rate=4" / "rep1" / "point.json"
    pj.write_text(json.dumps(json.loads(pj.read_text()) | {"status": "partial", "failure": "load timed out"}))
    r = _report(tree, "--name", "bad", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    md = (tmp_path / "bad" / "report.md").read_text()
    assert "unreadable requests.parquet" in md and "PARTIAL" in md and "load timed out" in md
    r = _report(tmp_path / "nothing", "--name", "x", "--out", tmp_path)
    assert r.exit_code == 2 and r.stderr.startswith("pdsuite: error:") and r.stderr.count("\n") == 1


def test_corrupt_point_json_and_schema_version(tmp_path):
    tree = make_tree(tmp_path / "t", reps=2, n_per_rep=30, emulated=False, deployments=(("vllm", "colocated"),),
                     rates=(4.0,), metrics=False)
    (tree / "vllm-colocated" / "rate=4" / "rep0" / "point.json").write_text("{broken")
    m = json.loads((tree / "manifest.json").read_text())
    (tree / "manifest.json").write_text(json.dumps(m | {"schema_version": "9.0"}))
    r = _report(tree, "--name", "c", "--out", tmp_path)
    assert r.exit_code == 0
    md = (tmp_path / "c" / "report.md").read_text()
    assert "corrupt point.json" in md and "schema 9.0" in md
    assert pd.read_csv(tmp_path / "c" / "summary.csv")["reps"].max() == 1


def test_html_banner_tables_and_units(tmp_path):
    from suite.report.load import load
    from suite.report.render import write
    from suite.report.tables import build

    tree = make_tree(tmp_path / "t", rates=(2.0,), reps=1, n_per_rep=40)
    ds = load([tree])
    out = write(ds, build(ds, {}, 20), "h", tmp_path / "rep")
    page = (out / "index.html").read_text()
    assert '<div class="banner"><b>EMULATED</b>' in page and 'class="banner">t;' not in page  # no leaked "&gt;"
    assert "<td><b>measured</b>: kvprobe" in page  # bold inside table cells
    md = (out / "report.md").read_text()
    assert "| mean ms | mean MB | prompt tokens | achieved GB/s |" in md and "e+" not in md.split("## KV")[1][:800]
    assert "### Server-side time per request" in md and "### server_breakdown" not in md


def test_runner_time_section_shows_overhead_and_phases(tmp_path):
    from suite.runner.timing import Timings

    tree = make_tree(tmp_path / "res" / "s1", deployments=(("vllm", "colocated"),), rates=(2.0,), reps=1,
                     n_per_rep=20, metrics=False)
    m = json.loads((tree / "manifest.json").read_text())
    t = Timings(up_s=20, load_s=72, warmup_s=3, point_lead_s=4, scrape_s=0.5, down_s=0.5, wall_s=100, points=16)
    (tree / "manifest.json").write_text(json.dumps(m | {"timings": t.as_dict()}))
    r = _report(tree, "--name", "rt", "--out", tmp_path, "--bootstrap", "50")
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rt" / "report.md").read_text()
    section = md.split("## Runner time")[1].split("## Environment")[0]
    assert "**10.0%**" in section and "8.0 s of 80.0 s" in section and "**missed**" in section
    assert "| warm-up requests | 3.00 | 3.8% |" in section  # 3 s of the 80 s outside model load
    assert "| point lead-in" in section and "schedule t0" in section
    assert "<b>10.0%</b>" in (tmp_path / "rt" / "index.html").read_text()
