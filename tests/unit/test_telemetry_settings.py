"""What the runner hands the engines for tracing: real vLLM gets --otlp-traces-endpoint (pointing at the receiver
the runner started) through VLLM_EXTRA_ARGS; TRACING=off or a framework without spans changes nothing; every
engine service carries the OpenTelemetry SDK settings naming its role."""

import shlex

from suite.config import Settings
from suite.deploy.catalog import get as get_deployment
from suite.deploy.compose import deployment_services
from suite.netutil import free_ports
from suite.telemetry import RunTelemetry


def test_vllm_gets_the_receivers_endpoint(tmp_path):
    port = free_ports(1)[0]
    tel = RunTelemetry(get_deployment("vllm-disagg"), Settings(OTLP_PORT=port, VLLM_EXTRA_ARGS="--seed 1"), tmp_path)
    try:
        args = shlex.split(tel.engine_settings().VLLM_EXTRA_ARGS)
        assert args == ["--seed", "1", "--otlp-traces-endpoint", f"http://127.0.0.1:{port}/v1/traces"]
        assert tel.receiver.endpoint == args[-1]
    finally:
        tel.close()


def test_off_and_busy_port(tmp_path):
    s = Settings(TRACING="off")
    tel = RunTelemetry(get_deployment("vllm-disagg"), s, tmp_path)
    assert tel.receiver is None and tel.engine_settings() is s
    port = free_ports(1)[0]
    first = RunTelemetry(get_deployment("vllm-colocated"), Settings(OTLP_PORT=port), tmp_path)
    try:
        second = RunTelemetry(get_deployment("vllm-colocated"), Settings(OTLP_PORT=port), tmp_path)
        assert second.receiver is None and "could not bind" in second.notes[0]  # a note, the run goes on
        assert second.engine_settings().VLLM_EXTRA_ARGS == ""
    finally:
        first.close()


def test_sglang_real_engines_get_no_vllm_flags(tmp_path):
    tel = RunTelemetry(get_deployment("sglang-disagg"), Settings(OTLP_PORT=free_ports(1)[0]), tmp_path)
    try:
        assert "--otlp-traces-endpoint" not in tel.engine_settings().SGLANG_EXTRA_ARGS
        assert tel.spans_per_request() == 0
    finally:
        tel.close()


def test_engine_services_name_their_role_for_spans():
    for name in ("vllm-disagg", "emu-vllm-disagg"):
        svcs = deployment_services(get_deployment(name))
        env = svcs[f"{name}-decode"]["environment"]
        assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == "pdsuite.role=decode,pdsuite.engine=decode"
    emu = deployment_services(get_deployment("emu-vllm-colocated"))["emu-vllm-colocated-engine"]["command"]
    assert "--otlp-traces-endpoint 'http://${BIND_ADDRESS}:${OTLP_PORT}/v1/traces' --tracing '${TRACING}'" in emu
