import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from suite.normalise import MetricsError, delta, detect_framework, hist_quantile, normalise_text, parse_families

F = Path(__file__).resolve().parents[1] / "fixtures"
pytestmark = pytest.mark.skipif(not F.is_dir(), reason="shared fixtures not present")
VLLM, VLLM_P, VLLM_D = (F / "vllm-0.32-cpu-metrics.txt", F / "vllm-0.32-cpu-metrics-pd-prefill-example-connector.txt",
                        F / "vllm-0.32-cpu-metrics-pd-decode-example-connector.txt")
SGL, SGL_P = F / "sglang-0.5.23-metrics.txt", F / "sglang-0.5.23-metrics-prefill.txt"


def _sample_sum(path: Path, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in path.read_text().splitlines() if line.startswith(prefix))


@pytest.mark.parametrize(("path", "fw"), [(VLLM, "vllm"), (VLLM_P, "vllm"), (VLLM_D, "vllm"), (SGL, "sglang"),
                                          (SGL_P, "sglang")])
def test_detects_framework(path, fw):
    assert detect_framework(parse_families(path.read_text())) == fw


def test_vllm_decode_counts_and_sources():
    s = normalise_text(VLLM_D.read_text(), role="decode")
    ttft = s.get("ttft_s", "decode")
    assert ttft.count == _sample_sum(VLLM_D, "vllm:time_to_first_token_seconds_count")
    assert ttft.sum == pytest.approx(_sample_sum(VLLM_D, "vllm:time_to_first_token_seconds_sum"))
    assert s.get("prompt_tokens_transferred", "decode").value == 4096
    assert s.get("prompt_tokens_computed", "decode").value == 886
    # all finish reasons summed
    assert s.get("requests_completed", "decode").value == _sample_sum(VLLM_D, "vllm:request_success_total")
    assert "kv_transfer_s" in s.missing  # ExampleConnector has no NIXL metrics: listed, not fatal
    assert s.warnings == []


def test_sglang_units_converted_and_role_from_label():
    s = normalise_text(SGL_P.read_text())
    xfer = s.get("kv_transfer_s", "prefill")  # role came from engine_type, not from the caller
    assert xfer.sum == pytest.approx(_sample_sum(SGL_P, "sglang:kv_transfer_latency_ms_sum") / 1e3)
    assert xfer.le[0] == pytest.approx(float(_bucket_bounds(SGL_P, "sglang:kv_transfer_latency_ms")[0]) / 1e3)
    assert s.get("kv_transfer_bytes", "prefill").sum == pytest.approx(
        _sample_sum(SGL_P, "sglang:kv_transfer_total_mb_sum") * 1e6)
    assert s.get("prefill_s", "prefill").count == 8  # only stage=prefill_forward
    assert s.get("prompt_tokens", "prefill").value == 6016  # streaming and non-streaming summed
    assert "sglang:gen_throughput" in s.unknown
    d = normalise_text(SGL.read_text())
    assert {r for (_, r) in d.series} == {"decode"}


def _bucket_bounds(path: Path, fam: str) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith(fam + "_bucket"):
            out.append(line.split('le="')[1].split('"')[0])
    return out


def test_delta_between_snapshots():
    text = VLLM.read_text()
    before = normalise_text(text, role="colocated")
    later = text.replace("vllm:prompt_tokens_total{engine=\"0\",model_name=\"tiny\"} 459.0",
                         "vllm:prompt_tokens_total{engine=\"0\",model_name=\"tiny\"} 1459.0")
    assert later != text
    after = normalise_text(later, role="colocated")
    d = delta(before, after)
    assert d.get("prompt_tokens", "colocated").value == 1000
    assert d.get("ttft_s", "colocated").count == 0 and all(c == 0 for c in d.get("ttft_s", "colocated").cum)
    assert d.get("requests_running", "colocated").kind == "gauge"
    # counter reset (engine restarted): flagged, the after value kept
    d2 = delta(after, before)
    assert d2.get("prompt_tokens", "colocated").reset and any("restarted" in w for w in d2.warnings)


def test_hist_quantile_linear_and_inf():
    le, cum = (1.0, 2.0, math.inf), (0.0, 10.0, 10.0)
    assert hist_quantile(le, cum, 0.5) == pytest.approx(1.5)
    assert hist_quantile((1.0, math.inf), (0.0, 5.0), 0.9) == 1.0  # +Inf bucket -> highest finite bound
    assert math.isnan(hist_quantile(le, (0.0, 0.0, 0.0), 0.5))


def test_corrupt_and_foreign_text():
    with pytest.raises(MetricsError):
        normalise_text("this is {not metrics 1 2 3")
    with pytest.raises(MetricsError, match="cannot tell the framework"):
        normalise_text("# TYPE foo_total counter\nfoo_total 1\n")
    s = normalise_text("# TYPE foo_total counter\nfoo_total 1\n", framework="vllm")
    assert s.page == "empty" and s.warnings


def test_unknown_version_warns():
    text = "\n".join(line for line in VLLM.read_text().splitlines() if "time_to_first_token" not in line)
    s = normalise_text(text + "\n")
    assert any("ttft_s" in w and "version" in w for w in s.warnings)


def _cli(*args):
    from suite.cli import app

    return CliRunner().invoke(app, ["metrics", *args])


def test_metrics_cli_text_and_json(tmp_path):
    r = _cli(str(SGL_P))
    assert r.exit_code == 0, r.output
    assert "kv_transfer_s" in r.output and "sglang" in r.output
    r = _cli(str(VLLM_D), "--json", "--role", "decode")
    data = json.loads(r.stdout)
    ttft = next(x for x in data["series"] if x["metric"] == "ttft_s")
    assert data["framework"] == "vllm" and ttft["role"] == "decode" and ttft["count"] == 9


def test_metrics_cli_corrupt_exit_2(tmp_path):
    bad = tmp_path / "bad.prom"
    bad.write_text("garbage{{{ 1 2\n")
    r = _cli(str(bad))
    assert r.exit_code == 2 and "pdsuite: error:" in r.stderr and r.stderr.count("\n") == 1
    assert _cli(str(tmp_path / "missing.prom")).exit_code == 2
