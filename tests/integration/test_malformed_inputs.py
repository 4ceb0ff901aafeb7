"""No traceback for any input: a corpus of malformed plans, traces, .env files, metrics pages and URLs, model
configs, results trees and CLI values, each fed to the real CLI (`python -m suite.cli`, a subprocess), must end in
exit 2 with exactly one line on stderr that names what is wrong - before anything starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

WORKLOAD = (
    "workload: {arrival: {kind: poisson, rate_rps: 2}, duration_s: 5, classes: {c: {input: {min: 8, max: 16}, "
    "output: {min: 4, max: 8}}}, mix: {c: 1}}\n"
)
PLAN = "name: bad\ndeployments: [vllm-colocated]\n" + WORKLOAD


def trace_plan(d: Path, name: str, body: str | bytes | None) -> Path:
    """A plan replaying trace file `name` (written with `body`; None: not written)."""
    trace = d / name
    if isinstance(body, bytes):
        trace.write_bytes(body)
    elif body is not None:
        trace.write_text(body)
    p = d / f"plan-{name}.yaml"
    p.write_text(
        f"name: bad\ndeployments: [vllm-colocated]\nworkload: {{arrival: {{kind: trace, trace: '{trace}'}}, "
        f"classes: {{c: {{input: {{min: 8, max: 16}}, output: {{min: 4, max: 8}}}}}}, mix: {{c: 1}}}}\n"
    )
    return p


def plan(d: Path, name: str, text: str | bytes) -> Path:
    p = d / f"{name}.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def run_cmd(*args) -> list[str]:
    return ["run", *map(str, args), "--validate", "--backend", "emu", "--driver", "process"]


def serve_once(payload: bytes) -> str:
    """A listener that answers every connection with `payload` (garbage status lines, huge bodies)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            try:
                c.recv(4096)
                c.sendall(payload)
            except OSError:
                pass
            finally:
                c.close()

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}/metrics"


def metrics_file(d: Path, name: str, text: str | bytes) -> str:
    p = d / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


COUNTER = '# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total{model_name="m"} %s\n'
HIST = (
    "# TYPE vllm:time_to_first_token_seconds histogram\n"
    'vllm:time_to_first_token_seconds_bucket{le="0.1"} 5\n'
    'vllm:time_to_first_token_seconds_bucket{le="1.0"} 3\n'
    'vllm:time_to_first_token_seconds_bucket{le="+Inf"} 9\n'
    "vllm:time_to_first_token_seconds_count 9\nvllm:time_to_first_token_seconds_sum 2.5\n"
)


def model_config(d: Path, name: str, cfg) -> str:
    p = d / f"{name}.json"
    p.write_bytes(cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode())
    return str(p)


LLAMA = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "intermediate_size": 128,
}


def results_tree(d: Path, name: str, mutate) -> str:
    from suite.report.synth import make_tree

    root = make_tree(d / name / "stamp", reps=1, n_per_rep=5, emulated=True, deployments=(("vllm", "colocated"),))
    mutate(root)
    return str(root)


def _wrong_types(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in root.rglob("requests.parquet"):
        t = pq.read_table(f)
        pq.write_table(
            t.set_column(t.schema.get_field_index("sent_s"), "sent_s", pa.array(["x"] * len(t), pa.string())), f
        )


def _negative_latency(root: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for f in root.rglob("requests.parquet"):
        t = pq.read_table(f)
        i = t.schema.get_field_index("done_s")
        pq.write_table(t.set_column(i, "done_s", pc.subtract(t.column("sent_s"), 5.0)), f)


def _no_services(root: Path) -> None:
    for f in root.rglob("point.json"):
        data = json.loads(f.read_text())
        data.pop("services", None)
        data["services"] = "prefill"
        f.write_text(json.dumps(data))


def cases() -> dict:
    """id -> a function of the corpus folder returning the argv after `python -m suite.cli`."""

    def tree_ok(d: Path) -> str:
        return results_tree(d, "ok", lambda r: None) if not (d / "ok").is_dir() else str(d / "ok" / "stamp")

    def a_file(d: Path) -> Path:
        (d / "a-file").write_text("x")
        return d / "a-file"

    def env_dir(d: Path) -> Path:
        (d / "envdir").mkdir(exist_ok=True)
        return d / "envdir"

    return {
        # --- plans ---------------------------------------------------------------------------------------------
        "plan-binary": lambda d: run_cmd(plan(d, "bin", b"\x89PNG\r\n\x1a\n\x00\xff\xfe")),
        "plan-no-points": lambda d: run_cmd(plan(d, "nopoints", PLAN + "points: []\n")),
        "plan-label-escapes": lambda d: run_cmd(plan(d, "esc", PLAN + "points: [{label: ../../../../X}]\n")),
        "plan-label-absolute": lambda d: run_cmd(plan(d, "abs", PLAN + "points: [{label: /tmp/X}]\n")),
        "plan-name-dotdot": lambda d: run_cmd(plan(d, "dotdot", PLAN.replace("name: bad", "name: '..'"))),
        "plan-rate-inf": lambda d: run_cmd(plan(d, "inf", PLAN.replace("rate_rps: 2", "rate_rps: .inf"))),
        "plan-rate-nan": lambda d: run_cmd(plan(d, "nan", PLAN.replace("rate_rps: 2", "rate_rps: .nan"))),
        "plan-warmup-huge": lambda d: run_cmd(plan(d, "warm", PLAN + "warmup_requests: 1000000000000\n")),
        "plan-absurd-size": lambda d: run_cmd(
            plan(d, "absurd", PLAN.replace("rate_rps: 2}, duration_s: 5", "rate_rps: 1e9}, duration_s: 1e12"))
        ),
        "plan-no-requests": lambda d: run_cmd(
            plan(d, "empty", PLAN.replace("rate_rps: 2}, duration_s: 5", "rate_rps: 0.01}, duration_s: 0.001"))
        ),
        "plan-token-in-settings": lambda d: run_cmd(plan(d, "tok", PLAN + "settings: {HF_TOKEN: hf_canary}\n")),
        "plan-bad-emu-hardware": lambda d: run_cmd(plan(d, "hw", PLAN + "settings: {EMU_HARDWARE: z80}\n")),
        "plan-bad-emu-model": lambda d: run_cmd(plan(d, "mc", PLAN + "settings: {EMU_MODEL_CONFIG: nope}\n")),
        "plan-negative-timeout": lambda d: run_cmd(plan(d, "neg", PLAN + "point_timeout_s: -1\n")),
        "plan-deep-yaml": lambda d: run_cmd(plan(d, "deep", "[" * 5000 + "]" * 5000)),
        "plan-missing": lambda d: run_cmd(d / "nope.yaml"),
        # --- traces ---------------------------------------------------------------------------------------------
        "trace-bad-json-line": lambda d: run_cmd(
            trace_plan(d, "a.jsonl", '{"timestamp": 0, "input_length": 8, "output_length": 4}\n{oops\n')
        ),
        "trace-missing-field": lambda d: run_cmd(trace_plan(d, "b.jsonl", '{"timestamp": 0, "input_length": 8}\n')),
        "trace-string-length": lambda d: run_cmd(
            trace_plan(d, "c.jsonl", '{"timestamp": 0, "input_length": "many", "output_length": 4}\n')
        ),
        "trace-short-csv-row": lambda d: run_cmd(trace_plan(d, "d.csv", "timestamp,input_length,output_length\n0,8\n")),
        "trace-empty": lambda d: run_cmd(trace_plan(d, "e.csv", "")),
        "trace-missing": lambda d: run_cmd(trace_plan(d, "f.csv", None)),
        "trace-huge-input": lambda d: run_cmd(
            trace_plan(d, "g.csv", "timestamp,input_length,output_length\n0,100000000,4\n")
        ),
        "trace-nan-timestamp": lambda d: run_cmd(
            trace_plan(d, "h.csv", "timestamp,input_length,output_length\nnan,8,4\n1,8,4\n")
        ),
        "trace-inf-timestamp": lambda d: run_cmd(
            trace_plan(d, "i.csv", "timestamp,input_length,output_length\n0,8,4\ninf,8,4\n")
        ),
        "trace-binary": lambda d: run_cmd(trace_plan(d, "j.csv", b"\xff\xfe\x00\x01")),
        # --- settings files --------------------------------------------------------------------------------------
        "env-missing": lambda d: ["run", "demo", "--validate", "--env-file", str(d / "no.env")],
        "env-directory": lambda d: ["run", "demo", "--validate", "--env-file", str(env_dir(d))],
        "env-binary": lambda d: ["run", "demo", "--validate", "--env-file", metrics_file(d, "b.env", b"\x00\xff\xfe")],
        "env-token": lambda d: [
            "run",
            "demo",
            "--validate",
            "--env-file",
            metrics_file(d, "t.env", "HF_TOKEN=hf_canary\n"),
        ],
        "env-unknown": lambda d: ["run", "demo", "--validate", "--env-file", metrics_file(d, "u.env", "NOPE=1\n")],
        "env-bad-port": lambda d: [
            "run",
            "demo",
            "--validate",
            "--env-file",
            metrics_file(d, "p.env", "ENDPOINT_PORT=x\n"),
        ],
        # --- metrics text and URLs -------------------------------------------------------------------------------
        "metrics-nan-counter": lambda d: ["metrics", metrics_file(d, "nan.prom", COUNTER % "NaN")],
        "metrics-inf-counter": lambda d: ["metrics", metrics_file(d, "inf.prom", COUNTER % "+Inf")],
        "metrics-negative-counter": lambda d: ["metrics", metrics_file(d, "neg.prom", COUNTER % "-3")],
        "metrics-broken-histogram": lambda d: ["metrics", metrics_file(d, "hist.prom", HIST)],
        "metrics-binary": lambda d: ["metrics", metrics_file(d, "bin.prom", b"\x00\xff" * 100)],
        "metrics-huge-file": lambda d: ["metrics", _sparse(d / "huge.prom", 365 << 20)],
        "metrics-directory": lambda d: ["metrics", str(env_dir(d))],
        "metrics-url-malformed": lambda d: ["metrics", "http://[::1"],
        "metrics-url-garbage-status": lambda d: ["metrics", serve_once(b"GARBAGE\r\n\r\n")],
        "metrics-url-huge-body": lambda d: ["metrics", serve_once(b"HTTP/1.0 200 OK\r\n\r\n" + b"# x\n" * (70 << 18))],
        "metrics-url-refused": lambda d: ["metrics", f"http://127.0.0.1:{_closed_port()}/metrics"],
        "metrics-role-bogus": lambda d: [
            "metrics",
            str(ROOT / "tests/fixtures/vllm-0.32-cpu-metrics.txt"),
            "--role",
            "bogus",
        ],
        "metrics-framework-bogus": lambda d: [
            "metrics",
            str(ROOT / "tests/fixtures/vllm-0.32-cpu-metrics.txt"),
            "--framework",
            "trt",
        ],
        # --- model configs ---------------------------------------------------------------------------------------
        "kv-text-config-not-mapping": lambda d: ["kv-size", model_config(d, "tc", {**LLAMA, "text_config": [1]})],
        "kv-layers-true": lambda d: ["kv-size", model_config(d, "lt", {**LLAMA, "num_hidden_layers": True})],
        "kv-head-dim-zero": lambda d: ["kv-size", model_config(d, "hd", {**LLAMA, "head_dim": 0})],
        "kv-dtype-int3": lambda d: ["kv-size", model_config(d, "dt", {**LLAMA, "torch_dtype": "int3"})],
        "kv-flag-dtype-int3": lambda d: ["kv-size", "llama-3.1-8b", "--kv-dtype", "int3"],
        "kv-not-json": lambda d: ["kv-size", model_config(d, "nj", b"{nope")],
        "kv-binary": lambda d: ["kv-size", model_config(d, "bj", b"\xff\xfe\x00")],
        "kv-tokens-bad": lambda d: ["kv-size", "llama-3.1-8b", "--tokens", "12,-4"],
        # --- results trees and report values ---------------------------------------------------------------------
        "report-wrong-column-types": lambda d: [
            "report",
            results_tree(d, "types", _wrong_types),
            "--name",
            "r",
            "--out",
            str(d / "rep"),
        ],
        "report-negative-latency": lambda d: [
            "report",
            results_tree(d, "negl", _negative_latency),
            "--name",
            "r",
            "--out",
            str(d / "rep"),
        ],
        "report-point-without-services": lambda d: [
            "report",
            results_tree(d, "nosvc", _no_services),
            "--name",
            "r",
            "--out",
            str(d / "rep"),
        ],
        "report-bootstrap-negative": lambda d: [
            "report",
            tree_ok(d),
            "--name",
            "r",
            "--out",
            str(d / "rep"),
            "--bootstrap",
            "-1",
        ],
        "report-negative-slo": lambda d: [
            "report",
            tree_ok(d),
            "--name",
            "r",
            "--out",
            str(d / "rep"),
            "--slo",
            "short:-5:10",
        ],
        "report-unwritable-out": lambda d: ["report", tree_ok(d), "--name", "r", "--out", str(a_file(d) / "sub")],
        "report-missing-input": lambda d: ["report", str(d / "nothing"), "--name", "r", "--out", str(d / "rep")],
        # --- load specs (`pdsuite load`) ----------------------------------------------------------------------
        "loadspec-binary": lambda d: ["load", "--spec", metrics_file(d, "bin-spec.yaml", b"\xff\xfe\x00\x01"),
                                      "--model", "m"],
        "loadspec-bad-yaml": lambda d: ["load", "--spec", metrics_file(d, "bad-spec.yaml", "[[[\n"), "--model", "m"],
        "loadspec-missing": lambda d: ["load", "--spec", str(d / "no-spec.yaml"), "--model", "m"],
        # --- CLI values ------------------------------------------------------------------------------------------
        "run-out-is-a-file": lambda d: ["run", "demo", "--validate", "--backend", "emu", "--out", str(a_file(d))],
        "run-bad-backend": lambda d: ["run", "demo", "--backend", "tpu"],
        "emulate-busy-port": lambda d: ["emulate", "--port", os.environ["PDSUITE_TEST_BUSY_PORT"]],
        "emulate-bad-host": lambda d: ["emulate", "--host", "not..a..host", "--port", str(_closed_port())],
        "emulate-bad-hardware-json": lambda d: [
            "emulate",
            "--hardware",
            model_config(d, "hwj", [1, 2]),
            "--port",
            str(_closed_port()),
        ],
        "emulate-bad-role": lambda d: ["emulate", "--role", "bogus"],
    }


def _sparse(path: Path, size: int) -> str:
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = cases()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    d = tmp_path_factory.mktemp("malformed")
    busy = socket.socket()  # held while the corpus runs: `emulate` on a busy port
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    os.environ["PDSUITE_TEST_BUSY_PORT"] = str(busy.getsockname()[1])
    items = {name: make(d) for name, make in CASES.items()}
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    env.pop("HF_TOKEN", None)
    env.pop("PDSUITE_ALLOW_TOKEN_IN_FILE", None)

    def one(argv):
        try:
            return subprocess.run(
                [sys.executable, "-m", "suite.cli", *argv], capture_output=True, text=True, timeout=120, cwd=d, env=env
            )
        except subprocess.TimeoutExpired:
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(items, pool.map(one, items.values()), strict=True))
    busy.close()
    return results


def test_corpus_is_large_and_of_every_kind():
    assert len(CASES) >= 40
    for kind in ("plan", "trace", "env", "metrics", "kv", "report", "run", "emulate"):
        assert any(n.startswith(kind) for n in CASES), kind


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_ends_in_exit_2_and_one_line(outcomes, case):
    r = outcomes[case]
    assert r is not None, f"{case}: did not end within 120 s"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, f"{case}: exit {r.returncode}\n{r.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("pdsuite: error: "), f"{case}: {r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr and "hf_canary" not in r.stderr + r.stdout
