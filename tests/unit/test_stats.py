import math

import numpy as np
import pytest

from suite.stats import aggregate_reps, compare, estimate, goodput_mask, quantile_sorted, ttft_consistency


def test_quantile_matches_numpy_inverted_cdf():
    x = np.sort(np.random.default_rng(1).lognormal(size=1001))
    for q in (0.5, 0.9, 0.99):
        assert quantile_sorted(x, q) == np.quantile(x, q, method="inverted_cdf")


def test_beta_bootstrap_matches_naive_resampling():
    rng = np.random.default_rng(2)
    x = np.sort(rng.exponential(size=400))
    est = estimate([x], ("quantile", 0.9), b=4000, seed=3)
    naive = np.quantile(x[rng.integers(0, len(x), size=(4000, len(x)))], 0.9, axis=1, method="inverted_cdf")
    lo, hi = np.quantile(naive, [0.025, 0.975])
    assert est.ci_low == pytest.approx(lo, rel=0.05) and est.ci_high == pytest.approx(hi, rel=0.05)
    assert est.ci_low < est.value < est.ci_high


def test_ci_covers_true_quantile_most_of_the_time():
    rng = np.random.default_rng(4)
    true_p90 = -math.log(0.1)  # Exp(1)
    cover = 0
    for s in range(200):
        x = np.sort(rng.exponential(size=300))
        e = estimate([x], ("quantile", 0.9), b=300, seed=s)
        cover += e.ci_low <= true_p90 <= e.ci_high
    assert 0.88 <= cover / 200 <= 0.99


def test_compare_detects_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(5)
    base = [np.sort(rng.exponential(1.0, 2000)) for _ in range(3)]
    faster = [np.sort(rng.exponential(0.6, 2000)) for _ in range(3)]
    same = [np.sort(rng.exponential(1.0, 2000)) for _ in range(3)]
    d = compare(faster, base, ("quantile", 0.99))
    assert d.ci_high < 0 and -55 < d.value < -25  # 40% lower, CI excludes 0
    d0 = compare(same, base, ("quantile", 0.5))
    assert d0.ci_low < 0 < d0.ci_high


def test_mean_estimate_both_paths():
    rng = np.random.default_rng(6)
    small = rng.normal(10, 2, 1000)
    big = rng.normal(10, 2, 100_000)
    es, eb = estimate([small], ("mean",)), estimate([big], ("mean",))
    assert es.ci_low < 10 < es.ci_high and eb.ci_low < 10 < eb.ci_high
    assert (eb.ci_high - eb.ci_low) < (es.ci_high - es.ci_low) / 5


def test_aggregate_reps():
    a = aggregate_reps([1.0, 2.0, 3.0])
    assert a["mean"] == 2.0 and a["std"] == 1.0 and a["cv"] == 0.5
    assert a["ci_low"] == pytest.approx(2 - 4.303 / math.sqrt(3)) and a["n"] == 3
    assert math.isnan(aggregate_reps([5.0])["ci_low"]) and aggregate_reps([])["n"] == 0


def test_goodput_mask_per_class():
    ttft = np.array([0.1, 0.5, 0.1, 3.0, 0.1])
    tpot = np.array([0.01, 0.01, 0.2, 0.01, np.nan])
    ok = np.array([True, True, True, True, False])
    cls = np.array(["short", "short", "short", "long", "short"])
    slos = {"short": {"ttft_s": 0.2, "tpot_s": 0.05}, "long": {"ttft_s": 5.0, "tpot_s": 0.05}}
    assert goodput_mask(ttft, tpot, ok, cls, slos).tolist() == [True, False, False, True, False]


def test_ttft_consistency_flags_disagreement():
    le = (0.05, 0.1, 0.2, 0.5, math.inf)
    cum = (0.0, 100.0, 100.0, 100.0, 100.0)  # server: all TTFTs in (0.05, 0.1]
    near = np.sort(np.random.default_rng(7).uniform(0.055, 0.1, 100))
    assert ttft_consistency(near, le, cum).ok
    far = near + 0.3  # client sees 300 ms more: something sits between client and engine
    c = ttft_consistency(far, le, cum)
    assert not c.ok and not c.rows[0]["agree"]
    c2 = ttft_consistency(near[:50], le, cum)
    assert "do not cover" in c2.note


def test_paired_compare_cancels_the_workload_draw():
    """Repetitions that replay one workload draw per repetition, shared by both deployments: the draw moves both
    alike, so the paired CI of the change is narrower than the unpaired one, and both cover the true +30%."""
    from suite.stats import compare_reps, too_few

    rng = np.random.default_rng(8)
    draws = [rng.lognormal(0, 0.4) for _ in range(6)]  # each repetition's workload scales every latency
    base = [np.sort(f * rng.exponential(1.0, 400)) for f in draws]
    slower = [np.sort(1.3 * f * rng.exponential(1.0, 400)) for f in draws]
    paired = compare(slower, base, ("quantile", 0.5), paired=True)
    unpaired = compare(slower, base, ("quantile", 0.5))
    assert paired.ci_low < 30 < paired.ci_high and paired.ci_low > 0
    assert unpaired.ci_low < 30 < unpaired.ci_high
    assert (paired.ci_high - paired.ci_low) < 0.6 * (unpaired.ci_high - unpaired.ci_low)
    thr = compare_reps([13.0 * f for f in draws], [10.0 * f for f in draws])  # per-repetition scalars, paired
    assert thr.value == pytest.approx(30) and thr.ci_high - thr.ci_low < 1e-6
    assert too_few(0.99, 99) and not too_few(0.99, 100) and too_few(0.9, 19) and not too_few(0.5, 3)
