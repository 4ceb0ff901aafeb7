"""Every family the emulator exposes matches the real engine's exposition (tests/fixtures/): name, type,
help, label names and histogram buckets; units scale to the framework's native ones (SGLang ms / MB / GB/s)."""

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from suite.emulator.metrics import EmuMetrics
from suite.frameworks.base import Role, get

FIX = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURES = {"vllm": ["vllm-0.32-cpu-metrics.txt", "vllm-0.32-cpu-metrics-pd-decode-example-connector.txt"],
            "sglang": ["sglang-0.5.23-metrics.txt", "sglang-0.5.23-metrics-prefill.txt"]}
# Families the CPU fixtures cannot show (ExampleConnector has no NIXL): checked against vLLM's
# nixl_connector.py NixlPromMetrics instead (buckets copied there; labels are vLLM's standard pair).
NOT_IN_FIXTURES = {"vllm:nixl_xfer_time_seconds", "vllm:nixl_post_time_seconds", "vllm:nixl_bytes_transferred",
                   "vllm:nixl_num_descriptors", "vllm:nixl_num_failed_transfers",
                   "vllm:nixl_num_failed_notifications", "pdsuite_emulated_info"}



def families(text: str) -> dict:
    out = {}
    for f in text_string_to_metric_families(text):
        labels = {k for s in f.samples for k in s.labels if k != "le"}
        buckets = []
        for s in f.samples:
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf":
                le = float(s.labels["le"])
                if le not in buckets:
                    buckets.append(le)
        out[f.name] = (f.type, f.documentation, labels, sorted(buckets))
    return out


def reference(flavor: str) -> dict:
    ref = {}
    for name in FIXTURES[flavor]:
        ref |= families((FIX / name).read_text())
    return ref


def emulated(flavor: str, role: Role) -> dict:
    m = EmuMetrics(get(flavor), role, "meta-llama/Llama-3.1-8B-Instruct", "h100")
    dyn = {"is_streaming": "true", "finished_reason": "length", "source": "local_compute", "stage": "prefill_forward",
           "cache_source": "device"}
    for key, spec in get(flavor).emulator_metrics.items():
        {"histogram": m.observe, "counter": m.inc, "gauge": m.set}[spec[1]](key, 0.5, **dyn)
    return families(m.render().decode())


@pytest.mark.parametrize("flavor", ["vllm", "sglang"])
@pytest.mark.parametrize("role", [Role.PREFILL, Role.DECODE, Role.COLOCATED])
def test_every_family_matches_the_real_engine(flavor, role):
    ref, emu = reference(flavor), emulated(flavor, role)
    assert len(emu) >= 15
    for name, (typ, doc, labels, buckets) in emu.items():
        if name.removesuffix("_created") in NOT_IN_FIXTURES:
            continue
        assert name in ref, f"{name} is not a {flavor} family"
        rtyp, rdoc, rlabels, rbuckets = ref[name]
        assert typ == rtyp, name
        assert doc == rdoc, name
        assert labels == rlabels, name
        assert buckets == pytest.approx(rbuckets, rel=1e-9), name


def test_required_families_are_emitted():
    vllm = emulated("vllm", Role.DECODE)
    for n in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
              "vllm:request_time_per_output_token_seconds", "vllm:e2e_request_latency_seconds",
              "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds",
              "vllm:request_decode_time_seconds", "vllm:prompt_tokens", "vllm:generation_tokens",
              "vllm:prompt_tokens_by_source", "vllm:num_requests_running", "vllm:num_requests_waiting",
              "vllm:kv_cache_usage_perc", "vllm:request_success", "vllm:nixl_xfer_time_seconds",
              "vllm:nixl_bytes_transferred", "pdsuite_emulated_info"):
        assert n in vllm, n
    sgl = emulated("sglang", Role.PREFILL)
    for n in ("sglang:time_to_first_token_seconds", "sglang:e2e_request_latency_seconds", "sglang:queue_time_seconds",
              "sglang:kv_transfer_latency_ms", "sglang:kv_transfer_total_mb", "sglang:kv_transfer_speed_gb_s",
              "sglang:num_running_reqs", "sglang:token_usage", "sglang:prompt_tokens", "sglang:num_requests"):
        assert n in sgl, n


def _samples(m: EmuMetrics) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


def test_sglang_units_and_engine_type():
    m = EmuMetrics(get("sglang"), Role.PREFILL, "m", "h100")
    m.observe("kv_transfer_s", 0.004)  # seconds -> ms
    m.observe("kv_transfer_bytes", 268_435_456)  # bytes -> MB
    m.observe("kv_transfer_Bps", 339e9)  # B/s -> GB/s
    s = _samples(m)
    lab = (("engine_type", "prefill"), ("model_name", "m"), ("moe_ep_rank", "0"), ("pp_rank", "0"), ("tp_rank", "0"))
    assert s[("sglang:kv_transfer_latency_ms_sum", lab)] == pytest.approx(4.0)
    assert s[("sglang:kv_transfer_total_mb_sum", lab)] == pytest.approx(268.435456)
    assert s[("sglang:kv_transfer_speed_gb_s_sum", lab)] == pytest.approx(339.0)
    unified = EmuMetrics(get("sglang"), Role.COLOCATED, "m", "h100").render().decode()
    assert 'engine_type="unified"' in unified and 'engine_type="prefill"' not in unified


def test_emulated_info_metric():
    s = _samples(EmuMetrics(get("vllm"), Role.DECODE, "m", "cpu-tiny"))
    key = ("pdsuite_emulated_info", (("flavor", "vllm"), ("hardware", "cpu-tiny"), ("model_name", "m"),
                                     ("role", "decode")))
    assert s[key] == 1.0
