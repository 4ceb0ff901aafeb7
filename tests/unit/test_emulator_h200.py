"""The h200 profile is the one fitted to the real H200 run (docs/data/emulator-h200-fit.json), and the cost model
reproduces the measured TTFT and ITL at the fitted points (a profile edit that breaks the calibration fails)."""

import json
from pathlib import Path

import pytest

from suite.emulator.costmodel import CostModel
from suite.emulator.hardware import load_hardware
from suite.modelcfg import load

FIT = json.loads((Path(__file__).parents[2] / "docs/data/emulator-h200-fit.json").read_text())


def test_h200_profile_is_the_fitted_one():
    hw = load_hardware("h200")
    for field in FIT["fitted"]:
        assert getattr(hw, field) == pytest.approx(FIT["profile"][field], rel=0.005), field
    assert hw.mem_bytes == FIT["profile"]["mem_bytes"]


@pytest.mark.parametrize("point", sorted(FIT["inputs"]))
def test_cost_model_reproduces_the_measured_point(point):
    cost = CostModel(load("llama-3.1-8b"), load_hardware("h200"))
    m = FIT["inputs"][point]
    prompt = int(point.split("=")[1])
    new, cached = round(m["computed_per_request"]), round(m["cached_per_request"])
    assert new + cached == prompt
    # first token: the step that computes the prompt (what vLLM's own span times, arrival to first token)
    ttft = cost.step_s([(new, cached)], 0, 0)
    assert ttft == pytest.approx(m["server_ttft_p50_s"], rel=0.08)
    # batch-1 decode step at the mean context of the 32 output tokens
    itl = cost.step_s([], 1, prompt + 16)
    assert itl == pytest.approx(m["itl_p50_s"], rel=0.02)


def test_prefix_cache_keys_chain_so_a_prefix_matches_only_with_its_whole_prefix():
    from suite.emulator.kvpool import PoolStore, local_block_keys

    a = list(range(100))
    store = PoolStore(1e9)
    store.store(local_block_keys(a, 16), 1)
    assert store.lookup(local_block_keys(a[:64] + [7] * 40, 16)) == 4  # shares 64 tokens = 4 blocks
    assert store.lookup(local_block_keys([7, *a[1:]], 16)) == 0  # first block differs: nothing after it matches
