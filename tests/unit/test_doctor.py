"""pdsuite doctor: each failure a user can hit gives one clear line and a failing status."""

from suite.config import Settings
from suite.doctor import Probe, diagnose, link_between, parse_gpus

TOPO = """\tGPU0\tGPU1\tGPU2\tCPU Affinity\tNUMA Affinity
GPU0\t X \tNV18\tSYS\t0-63\t0
GPU1\tNV18\t X \tSYS\t0-63\t0
GPU2\tSYS\tSYS\t X \t64-127\t1
"""
SMI = "0, NVIDIA H100 80GB HBM3, 81559, 5\n1, NVIDIA H100 80GB HBM3, 81559, 5\n2, NVIDIA H100 80GB HBM3, 81559, 60000\n"


class FakeProbe(Probe):
    def __init__(self, outputs: dict[str, tuple[int, str]], busy: set[int] = frozenset()):
        self.outputs, self.busy, self.calls = outputs, busy, []

    def run(self, *argv, timeout=20):
        self.calls.append(argv)
        for prefix, result in self.outputs.items():
            if " ".join(argv).startswith(prefix):
                return result
        return 127, ""

    def port_free(self, host, port):
        return port not in self.busy


def healthy(**over):
    base = {"docker version": (0, "28.2.2\n"), "docker compose version": (0, "2.26.1\n"),
            "docker info": (0, '{"nvidia":{},"runc":{}}'), "nvidia-smi --query-gpu": (0, SMI),
            "nvidia-smi topo": (0, TOPO), "docker image inspect": (1, "")}
    return base | over


def failures(checks):
    return [c for c in checks if c.status == "fail"]


def test_topology_cell_is_read_per_pair():
    assert link_between(TOPO, 0, 1) == "NV18"
    assert link_between(TOPO, 1, 2) == "SYS"
    assert parse_gpus(SMI)[2] == ("NVIDIA H100 80GB HBM3", 81559, 60000)


def test_healthy_gpu_host_passes_with_token():
    checks = diagnose("vllm-disagg", Settings(HF_TOKEN="x"), FakeProbe(healthy()))
    assert failures(checks) == []
    assert any(c.name == "nvlink" and c.status == "ok" and "NV18" in c.detail for c in checks)


def test_gated_model_without_token_fails():
    fails = failures(diagnose("vllm-colocated", Settings(MODEL_CACHE_DIR="/nonexistent"), FakeProbe(healthy())))
    assert [c.name for c in fails] == ["model"] and "HF_TOKEN" in fails[0].detail


def test_missing_gpu_index_fails():
    fails = failures(diagnose("vllm-disagg", Settings(HF_TOKEN="x", PREFILL_GPU=1, DECODE_GPU=5),
                              FakeProbe(healthy())))
    assert fails[0].name == "gpus" and "5 does not exist" in fails[0].detail


def test_busy_gpu_and_non_nvlink_pair():
    checks = diagnose("sglang-disagg", Settings(HF_TOKEN="x", PREFILL_GPU=1, DECODE_GPU=2), FakeProbe(healthy()))
    assert [c.name for c in failures(checks)] == ["gpu2-memory"]
    assert any(c.name == "nvlink" and c.status == "warn" and "SYS" in c.detail for c in checks)


def test_busy_port_is_named():
    s = Settings(HF_TOKEN="x")
    fails = failures(diagnose("sglang-disagg", s, FakeProbe(healthy(), busy={s.SGLANG_BOOTSTRAP_PORT})))
    assert fails[0].name == "ports" and "SGLANG_BOOTSTRAP_PORT=8998" in fails[0].detail


def test_no_docker_daemon_fails_first():
    fails = failures(diagnose("emu-vllm-disagg", Settings(), FakeProbe(healthy(**{"docker version": (1, "")}))))
    assert fails[0].name == "docker"


def test_emulated_profile_needs_no_gpu():
    probe = FakeProbe(healthy(**{"nvidia-smi --query-gpu": (9, "")}))
    assert failures(diagnose("emu-sglang-disagg", Settings(), probe)) == []
    assert not any(c[0] == "nvidia-smi" for c in probe.calls)


def test_nixl_check_runs_in_pulled_image():
    probe = FakeProbe(healthy(**{"docker image inspect": (0, "[]"), "docker run": (1, "nixl 1.2.0 too old")}))
    fails = failures(diagnose("vllm-disagg", Settings(HF_TOKEN="x"), probe))
    assert [c.name for c in fails] == ["nixl-check"] and "too old" in fails[0].detail


def test_three_gpu_deployment_checks_order_and_presence():
    fails = failures(diagnose("vllm-1p2d", Settings(HF_TOKEN="x", THIRD_GPU=0), FakeProbe(healthy())))
    assert fails[0].name == "gpu-order" and "PREFILL_GPU < DECODE_GPU < THIRD_GPU" in fails[0].detail
    checks = diagnose("sglang-2p1d", Settings(HF_TOKEN="x"), FakeProbe(healthy()))
    assert [c.name for c in failures(checks)] == ["gpu2-memory"]  # GPU 2 of the fake host is busy
    assert any(c.name == "gpus" and c.detail.count("H100") == 3 for c in checks)


def test_kv_read_warning_without_nvlink_only_when_get_zcopy_is_auto():
    one_gpu = Settings(HF_TOKEN="x", UCX_CUDA_IPC_GET_ZCOPY="auto")
    warned = [c for c in diagnose("vllm-disagg-1gpu", one_gpu, FakeProbe(healthy())) if c.name == "kv-read"]
    assert warned and warned[0].status == "warn" and "TCP" in warned[0].detail
    assert not [c for c in diagnose("vllm-disagg-1gpu", Settings(HF_TOKEN="x"), FakeProbe(healthy()))
                if c.name == "kv-read"]  # default y: cuda_ipc reads forced on
    nvlinked = [c for c in diagnose("vllm-disagg", one_gpu, FakeProbe(healthy())) if c.name == "kv-read"]
    assert not nvlinked  # the fake host's GPU0<->GPU1 is NV18: UCX's auto already reads over cuda_ipc
