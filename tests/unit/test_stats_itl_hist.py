"""ITL histograms (bounded memory) agree with the exact path within their stated resolution."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from suite.report import load as L
from suite.report.synth import make_tree
from suite.report.tables import build
from suite.stats import estimate
from suite.stats.histogram import RESOLUTION, HistAcc, merge

TOL = RESOLUTION * 1.0001


def _sample(x):
    a = HistAcc()
    a.add(x)
    return a.sample()


def test_resolution_is_what_the_docs_say():
    assert abs(RESOLUTION - 0.0025) < 1e-5


def test_order_statistics_within_resolution_and_moments_exact():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.lognormal(-4.5, 0.8, 20_000), np.zeros(50)])  # zeros: tokens in one chunk
    h, s = _sample(x), np.sort(x)
    idx = rng.integers(0, len(x), 2000)
    got, want = h[idx], s[idx]
    assert np.all(np.abs(got - want) <= TOL * want) and np.all(got[want == 0] == 0)
    assert len(h) == len(x) and h.mean() == pytest.approx(x.mean()) and h.std(1) == pytest.approx(x.std(ddof=1))
    assert (h.min, h.max) == (x.min(), x.max())
    q = np.linspace(0, 1, 11)
    assert np.allclose(h.quantiles(q), np.quantile(x, q, method="inverted_cdf"), rtol=TOL, atol=0)


def test_bootstrap_estimates_match_the_exact_path():
    rng = np.random.default_rng(5)
    reps = [np.sort(rng.gamma(4, 0.0025, n)) for n in (3000, 2500, 4000)]
    for q in (0.5, 0.99):
        exact = estimate(reps, ("quantile", q), 500, seed=11)
        hist = estimate([_sample(r) for r in reps], ("quantile", q), 500, seed=11)
        for a, b in ((hist.value, exact.value), (hist.ci_low, exact.ci_low), (hist.ci_high, exact.ci_high)):
            assert abs(a - b) <= TOL * b
    assert merge([_sample(r) for r in reps]).quantiles([0.5])[0] == pytest.approx(
        np.quantile(np.concatenate(reps), 0.5, method="inverted_cdf"), rel=TOL)


def _exact_itl(tree):
    """The old exact path: every gap kept, per (deployment, point, class) and repetition, sorted."""
    out = {}
    for rq in sorted(tree.glob("*/*/rep*/requests.parquet")):
        t = pq.read_table(rq)
        gaps, owner = L.itl_gaps(t.column("token_times_s").combine_chunks())
        cls = np.asarray(t.column("request_class").to_pylist(), dtype=object)[owner]
        dep, point = rq.parts[-4], rq.parts[-3]
        for c in set(cls):
            out.setdefault((dep, point, c), []).append(np.sort(gaps[cls == c]))
    return out


def test_report_itl_matches_exact_path_and_batches_do_not_matter(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "t", rates=(2.0,), reps=3, n_per_rep=150, out_tokens=9)
    exact = _exact_itl(tree)
    monkeypatch.setattr(L, "ITL_BATCH_ROWS", 7)  # many batch boundaries inside one repetition
    ds_small = L.load([tree])
    monkeypatch.setattr(L, "ITL_BATCH_ROWS", 1 << 20)
    ds = L.load([tree])
    for k, h in ds.itl.items():
        assert np.array_equal(h.counts, ds_small.itl[k].counts) and h.sum == pytest.approx(ds_small.itl[k].sum)
    s = build(ds, {}, 200).summary
    assert len(s) == len(exact) == 4
    for r in s.itertuples():
        reps = exact[(r.deployment, r.point, r.cls)]
        assert sum(map(len, reps)) == sum(len(h) for (p, c), h in ds.itl.items()
                                         if ds.points.loc[p, "deployment"] == r.deployment
                                         and ds.requests["cls"].cat.categories[c] == r.cls)
        for q, col in ((0.5, "itl_p50"), (0.99, "itl_p99")):
            e = estimate(reps, ("quantile", q), 200, seed=0)
            assert math.isclose(getattr(r, col), e.value, rel_tol=TOL)
