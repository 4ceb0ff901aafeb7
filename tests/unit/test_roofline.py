"""Roofline bounds computed from the model config and the GPU table: hand-checkable numbers for Llama-3.1-8B."""

import pytest

from suite.analysis.gpus import emulated_peak, lookup
from suite.analysis.roofline import class_roofline, decode_concurrency
from suite.modelcfg import load


@pytest.mark.parametrize("nvml, want", [("NVIDIA H200", "H200 SXM"), ("NVIDIA H100 80GB HBM3", "H100 SXM"),
                                        ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
                                        ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA H200 NVL", "H200 NVL")])
def test_table_keyed_by_nvml_name(nvml, want):
    assert lookup(nvml).name == want


def test_unknown_and_emulated():
    assert lookup("Tesla K80") is None
    assert emulated_peak("h100").name == "H100 SXM"
    assert "emulator profile" in emulated_peak("cpu-tiny").name
    assert emulated_peak("no-such-profile") is None


def test_llama_8b_on_h200_by_hand():
    m, gpu = load("llama-3.1-8b"), lookup("NVIDIA H200")
    r = class_roofline(m, gpu, tp=1, request_class="long", prompt_tokens=4096, output_tokens=256,
                       prefill_measured_s=0.2, itl_measured_s=0.01, decode_batch=1, link_bps=100e9,
                       kv_measured_s=0.01)
    # 2 FLOP per active parameter per token, except the LM head: logits for the last prompt token only
    linear = 2 * m.params_active * 4096 - 2 * m.vocab * m.hidden * 4095
    attn = 4 * m.layers * m.heads * m.head_dim * 4096 * 4097 / 2
    assert r.prefill_flops == pytest.approx(linear + attn)
    assert r.prefill_bound_s == pytest.approx((linear + attn) / 989e12)
    assert r.prefill_fraction == pytest.approx(r.prefill_bound_s / 0.2)
    # one sequence at context 4096 + 128: weights (bf16) + its KV (128 KiB/token for Llama-3.1-8B)
    step = m.params_active * 2 + (4096 + 128) * 131072
    assert r.decode_step_bytes == pytest.approx(step) and r.decode_bound_s == pytest.approx(step / 4.8e12)
    assert 3e-3 < r.decode_bound_s < 4e-3  # ~16 GB weights at 4.8 TB/s
    assert r.kv_bytes == 4096 * 131072 and r.kv_bound_s == pytest.approx(4096 * 131072 / 100e9)
    tp2 = class_roofline(m, gpu, tp=2, request_class="long", prompt_tokens=4096, output_tokens=256,
                         prefill_measured_s=None, itl_measured_s=None, decode_batch=8)
    assert tp2.prefill_bound_s == pytest.approx(r.prefill_bound_s / 2) and tp2.prefill_fraction is None
    assert tp2.decode_step_bytes == pytest.approx(m.params_active * 2 + 8 * (4096 + 128) * 131072)
    assert decode_concurrency(12.0, 4.0) == 3.0
