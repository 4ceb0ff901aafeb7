import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from suite.scrape import snapshot

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32-cpu-metrics.txt"
pytestmark = pytest.mark.skipif(not FIXTURE.is_file(), reason="shared fixtures not present")


@pytest.fixture
def server():
    body = FIXTURE.read_bytes()

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            if self.path == "/metrics":
                self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    t.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_snapshot_writes_text_and_records_failures(server, tmp_path):
    urls = {"engine": f"{server}/metrics", "gone": f"http://127.0.0.1:{_closed_port()}/metrics",
            "notfound": f"{server}/nope"}
    res = snapshot(urls, tmp_path / "before", timeout=2)
    assert res["engine"].ok and (tmp_path / "before" / "engine.prom").read_bytes() == FIXTURE.read_bytes()
    assert not res["gone"].ok and "Connection refused" in res["gone"].error
    assert not res["notfound"].ok and "404" in res["notfound"].error
    recorded = json.loads((tmp_path / "before" / "scrape.json").read_text())
    assert recorded["gone"]["ok"] is False and recorded["engine"]["bytes"] == len(FIXTURE.read_text())
    assert not (tmp_path / "before" / "gone.prom").exists()
