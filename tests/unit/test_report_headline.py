"""The report's headline: numbers from a synthetic tree with known differences, marks for too few samples, console."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from suite.report.synth import make_tree

# P/D TTFT 30% above TP=1 co-located, exactly equal to TP=2 (the synthetic TTFT scales with these factors)
KNOWN = {"disagg": 1.3, "colocated": 1.0, "tp2": 1.3, "dp2": 0.8}
DEPS = (("vllm", "disagg"), ("vllm", "colocated"), ("vllm", "tp2"))


@pytest.fixture(scope="module")
def known_tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("known") / "stamp", deployments=DEPS, rates=(2.0, 8.0), reps=3,
                     n_per_rep=500, emulated=True, seed=11, speed=KNOWN, rep_seeds=True, metrics=False)


@pytest.fixture(scope="module")
def known_report(known_tree, tmp_path_factory):
    from suite.cli import app

    out = tmp_path_factory.mktemp("rep")
    r = CliRunner().invoke(app, ["report", str(known_tree), "--name", "k", "--out", str(out), "--bootstrap", "500"])
    assert r.exit_code == 0, r.output
    return out / "k"


def _head(report_dir):
    from suite.report.load import load
    from suite.report.tables import build

    return build(load([report_dir]), {}, 500).headline


def test_headline_recovers_a_known_30_percent_and_a_known_zero(known_tree):
    h = _head(known_tree)
    ttft = h[h["metric"].isin(["TTFT p50", "TTFT p99"])]
    assert set(h["baseline_topology"]) == {"colocated", "tp2"} and h["paired"].all()
    vs1 = ttft[ttft["baseline_topology"] == "colocated"]
    assert len(vs1) == 2 * 2 * 2  # rates x classes x (p50, p99)
    # +30%: the estimates near 30, the CIs around it; every p50 (a p99 from 250 requests less surely) excludes 0
    p50, p99 = vs1[vs1["metric"] == "TTFT p50"], vs1[vs1["metric"] == "TTFT p99"]
    assert p50["delta_pct"].between(20, 40).all() and p99["delta_pct"].between(10, 50).all()
    assert ((vs1["ci_low"] < 30) & (vs1["ci_high"] > 30)).mean() >= 0.75
    assert p50["significant"].all() and (p50["ci_low"] > 0).all() and vs1["significant"].mean() >= 0.75
    assert not vs1["better"].any() and not vs1["few"].any()  # 250 requests per class and repetition
    # 0%: no difference - estimates small, CIs span 0 (at most one of eight by chance)
    vs2 = ttft[ttft["baseline_topology"] == "tp2"]
    assert vs2["delta_pct"].abs().max() < 12 and vs2["significant"].sum() <= 1
    # ITL and throughput do not depend on the topology in the synthetic tree
    rest = h[h["metric"].isin(["ITL p99", "throughput"])]
    assert rest["delta_pct"].abs().max() < 12


def test_headline_opens_the_report_and_says_it_plainly(known_report):
    md = (known_report / "report.md").read_text()
    head = md.index("## Headline")
    assert head < md.index("## Per deployment x point x class") and head < md.index("## Figures")
    section = md[head:md.index("## Load points")]
    assert "P/D raises TTFT p50 by 3" in section or "P/D raises TTFT p50 by 2" in section
    assert "**vs TP=1 co-located** (`emu-vllm-colocated`)" in section and "**vs TP=2**" in section
    assert "No significant difference in" in section and "paired" in section
    assert "share one cost model" in section  # emulated: what the emulator does not model
    html = (known_report / "index.html").read_text()
    assert html.index("Headline") < html.index("Per deployment x point x class")


def test_offered_rate_beside_target_and_never_below_goodput(known_report):
    md = (known_report / "report.md").read_text()
    assert "| target req/s | offered req/s |" in md
    s = pd.read_csv(known_report / "summary.csv")
    per_point = s.groupby(["deployment", "point"]).agg(off=("offered_rps", "first"), good=("goodput_rps", "sum"),
                                                       thr=("req_per_s", "sum"))
    assert (per_point["good"] <= per_point["thr"] + 1e-9).all() and (per_point["thr"] <= per_point["off"]).all()


def test_too_few_samples_are_marked_in_tables_and_headline(tmp_path):
    from suite.cli import app

    tree = make_tree(tmp_path / "few", deployments=DEPS[:2], rates=(4.0,), reps=2, n_per_rep=40, seed=3,
                     metrics=False)
    r = CliRunner().invoke(app, ["report", str(tree), "--name", "f", "--out", str(tmp_path), "--bootstrap", "200"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "f" / "report.md").read_text()
    s = pd.read_csv(tmp_path / "f" / "summary.csv")
    assert s["ttft_p99_few"].all() and s["ttft_p90_few"].eq(s["ttft_n_min"] < 20).all()
    assert not s["ttft_p50_few"].any()
    summary = md[md.index("## Per deployment x point x class"):]
    assert summary.count("]†") >= len(s)  # every TTFT p99 cell of the table
    head = md[md.index("## Headline"):md.index("## Load points")]
    assert "]†" in head and "rests on too few samples" in head
    imp = pd.read_csv(tmp_path / "f" / "improvement.csv")
    assert imp.loc[imp["metric"] == "TTFT p99", "few"].all()


def test_console_headline_after_a_run(known_tree, capsys):
    from suite.runner.cli import _print_headline

    _print_headline(known_tree)
    out = capsys.readouterr().out
    assert out.startswith("Headline: P/D against the co-located baselines") and "EMULATED" in out
    assert "vs TP=1 co-located (emu-vllm-colocated): P/D wins" in out
    assert "loses TTFT p50 (4 of 4 point x class)" in out
    assert "P/D raises TTFT p50 by" in out
    _print_headline(known_tree.parent / "missing")  # a broken tree: one warning, never an exception
    err = capsys.readouterr().err
    assert err.startswith("pdsuite: warning: no headline") and err.count("\n") == 1


def test_plan_validator_warns_about_short_points(capsys):
    from suite.config import Settings
    from suite.plan import load_plan

    load_plan("demo", Settings(), "emu")
    err = capsys.readouterr().err
    assert err.startswith("pdsuite: warning: plan demo: points too short") and "long_prefill ~" in err
    load_plan("exp4-pd-vs-tp2-vs-dp2", Settings(), "emu")  # 240 requests per class: nothing to say
    assert "warning" not in capsys.readouterr().err


def test_one_gpu_pd_is_compared_with_its_own_baseline_only(tmp_path):
    from suite.report.load import load
    from suite.report.tables import build

    tree = make_tree(tmp_path / "one", deployments=(("vllm", "disagg-1gpu"), ("vllm", "colocated-1gpu"),
                                                    ("vllm", "colocated")), rates=(4.0,), reps=1, n_per_rep=60,
                     metrics=False)
    h = build(load([tree]), {}, 100).headline
    assert set(h["deployment"]) == {"emu-vllm-disagg-1gpu"} and set(h["baseline_topology"]) == {"colocated-1gpu"}
