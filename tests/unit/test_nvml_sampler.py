"""The NVML GPU sampler against a stand-in pynvml (tests/fixtures/fake_pynvml): rate, columns, role labels from
the deployment's engines, and a one-line note (no error) without NVML or without a GPU."""

import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from suite.config import Settings
from suite.deploy.catalog import get as get_deployment
from suite.telemetry.nvml import COLUMNS, GpuSampler, gpu_labels

FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_pynvml"


@pytest.fixture
def fake_nvml(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    sys.modules.pop("pynvml", None)
    yield monkeypatch
    sys.modules.pop("pynvml", None)


def test_samples_at_rate_with_labels(fake_nvml, tmp_path):
    dep = get_deployment("vllm-disagg")
    s = GpuSampler(gpu_labels(dep, Settings()), hz=20)
    assert s.start() is None
    time.sleep(1.0)
    s.stop()
    table = pq.read_table(s.write(tmp_path)).to_pylist()
    assert set(table[0]) == set(COLUMNS)
    summary = s.summary()["gpus"]
    assert summary["0"]["role"] == "prefill" and summary["1"]["role"] == "decode"
    assert summary["0"]["name"] == "NVIDIA H200" and summary["0"]["power_w_mean"] == 350.0
    assert summary["0"]["samples"] >= 10 and summary["0"]["hz"] >= 10  # the floor
    rows0 = [r for r in table if r["gpu"] == 0]
    assert len({r["sm_util_pct"] for r in rows0}) > 1  # real successive reads, not one value repeated
    assert rows0[0]["sm_clock_mhz"] == 1980 and rows0[0]["mem_clock_mhz"] == 3201


def test_labels_tp_and_replicas():
    st = Settings(PREFILL_GPU=2, DECODE_GPU=5)
    tp2 = gpu_labels(get_deployment("vllm-tp2"), st)
    assert {g: (lab.role, lab.tp_rank) for g, lab in tp2.items()} == {2: ("colocated", 0), 5: ("colocated", 1)}
    dp2 = gpu_labels(get_deployment("vllm-dp2"), st)
    assert {g: (lab.engine, lab.replica) for g, lab in dp2.items()} == {2: ("replica0", 0), 5: ("replica1", 1)}
    assert gpu_labels(get_deployment("emu-vllm-disagg"), st) == {}  # emulated engines use no GPU


@pytest.mark.parametrize("env, why", [({"FAKE_PYNVML_MODE": "nolib"}, "NVML unavailable"),
                                      ({"FAKE_PYNVML_GPUS": "0"}, "sees no GPU")])
def test_no_nvml_is_a_note(fake_nvml, tmp_path, env, why):
    for k, v in env.items():
        fake_nvml.setenv(k, v)
    s = GpuSampler({})
    note = s.start()
    assert note and why in note and "\n" not in note
    s.stop()
    assert s.write(tmp_path) is None and s.summary()["gpus"] == {}


def test_no_pynvml_installed_is_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert "not installed" in GpuSampler({}).start()
