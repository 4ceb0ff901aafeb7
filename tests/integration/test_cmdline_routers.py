"""Both REAL routers (vllm-router, sglang-router from .venv) accept every generated router command line.

Each unique rendered line runs on free ports, its workers pointed at stub HTTP servers that answer 200 to
everything (the routers wait for healthy workers before they bind their serving port). Proof: the serving port
answers /health 200, the Prometheus port answers /metrics 200, both stubs were probed, the process is still up.
Broken lines (unknown flag, bad policy) must exit non-zero with a usage error.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
import time

import pytest

from suite.config import Settings
from suite.cpu.parsecheck import render, router_executable
from suite.cpu.procs import free_ports, http_status, kill_group, spawn, wait_http
from suite.deploy.catalog import deployments
from suite.frameworks.base import get

pytestmark = pytest.mark.integration
ROUTED = [d for d in deployments().values() if d.router]


def _unique_lines() -> dict[str, list[str]]:
    """One test per distinct router line (gpu/emu/cpu twins render the same line): id -> deployment names."""
    seen: dict[tuple, list[str]] = {}
    for d in ROUTED:
        seen.setdefault(tuple(render(get(d.framework).router_args(d), Settings())), []).append(d.name)
    return {names[0]: names for names in seen.values()}


LINES = _unique_lines()


class _Stub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int):
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", port), _StubHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _StubHandler(http.server.BaseHTTPRequestHandler):
    def _ok(self) -> None:
        self.server.paths.append(self.path)
        body = b'{"object":"list","data":[{"id":"stub"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _ok

    def log_message(self, *args) -> None:
        pass


def _free_settings() -> Settings:
    endpoint, metrics, a, b, boot = free_ports(5)
    return Settings(ENDPOINT_PORT=endpoint, ROUTER_METRICS_PORT=metrics, ENGINE_A_PORT=a, ENGINE_B_PORT=b,
                    SGLANG_BOOTSTRAP_PORT=boot)


def _argv(dep_name: str, s: Settings, extra: tuple[str, ...] = ()) -> list[str]:
    dep = deployments()[dep_name]
    return router_executable([*render(get(dep.framework).router_args(dep), s), *extra])


@pytest.mark.parametrize("dep_name", list(LINES), ids=[f"{k}(+{len(v) - 1} twins)" for k, v in LINES.items()])
def test_router_accepts_generated_line(dep_name, tmp_path):
    s = _free_settings()
    stubs = [_Stub(s.ENGINE_A_PORT), _Stub(s.ENGINE_B_PORT)]
    argv = _argv(dep_name, s)
    proc = spawn(argv, tmp_path / "router.log")
    try:
        up = wait_http(f"http://127.0.0.1:{s.ENDPOINT_PORT}/health", timeout=30, proc=proc)
        log = (tmp_path / "router.log").read_text(errors="replace")[-3000:]
        assert up, f"router did not serve /health: rc={proc.poll()}\n{' '.join(argv)}\n{log}"
        assert http_status(f"http://127.0.0.1:{s.ROUTER_METRICS_PORT}/metrics") == 200, "Prometheus port silent"
        assert all(st.paths for st in stubs), "router never contacted both configured workers"
        time.sleep(1)
        assert proc.poll() is None, f"router exited: {log}"
    finally:
        kill_group(proc, grace=5)
        for st in stubs:
            st.shutdown()
            st.server_close()


BROKEN = {  # extra args appended to a valid line -> the parser's complaint
    "unknown-flag": (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    "bad-policy": (["--policy", "cache-aware"], "invalid choice: 'cache-aware'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("dep_name", ["vllm-disagg", "sglang-disagg"])
def test_router_rejects_broken_line(dep_name, case, tmp_path):
    extra, complaint = BROKEN[case]
    proc = spawn(_argv(dep_name, _free_settings(), tuple(extra)), tmp_path / "router.log")
    try:
        rc = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        kill_group(proc, grace=2)
    log = (tmp_path / "router.log").read_text(errors="replace")
    assert rc not in (None, 0), f"router accepted a broken line ({case}): {log[-2000:]}"
    assert complaint in log, log[-2000:]
