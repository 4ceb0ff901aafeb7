"""The Locust web UI as a person uses it, over HTTP: start from the form (/swarm), read per-class rows, change rate
and mix while running, see EMULATED, stop, records written. Master + 2 workers against the SSE test server."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from suite.load.testserver import free_port, running

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
REPLAN_BASE = 10_000_000  # suite.load.locust_glue's (importing it here would import Locust, which patches gevent)
CLASSES = {"long_prefill": {"input": {"min": 200, "max": 400}, "output": {"min": 2, "max": 4}},
           "short_decode": {"input": {"min": 20, "max": 40}, "output": {"min": 8, "max": 16}}}


def get(url: str, data: dict | None = None) -> dict | str:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
        text = r.read().decode()
    return json.loads(text) if r.headers.get_content_type() == "application/json" else text


def wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = pred()
            if got:
                return got
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def done(ui: str) -> dict[str, int]:
    return {k: v["done"] for k, v in get(ui + "/pdsuite")["classes"].items()}


def test_web_ui_swarm_rows_live_rate_and_mix(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"classes": CLASSES, "arrival": {"kind": "poisson", "rate_rps": 1},
                                    "duration_s": 600}))
    port, web = free_port(), free_port()
    ui = f"http://127.0.0.1:{web}"
    base = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "pd_mix.py"), "--skip-log-setup"]
    with running(ttft_ms=5, itl_ms=2, emulated=True) as url:
        procs = [subprocess.Popen([*base, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port",
                                   str(port), "--web-host", "127.0.0.1", "--web-port", str(web), "--host", url,
                                   "--pd-model", "m", "--pd-spec", str(spec), "--pd-out", str(tmp_path)],
                                  stdout=(tmp_path / "master.log").open("wb"), stderr=subprocess.STDOUT)]
        procs += [subprocess.Popen([*base, "--worker", "--master-port", str(port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) for _ in range(2)]
        try:
            wait(lambda: get(ui + "/pdsuite")["workers_connected"] == 2, 60, "2 workers")
            page = get(ui + "/")
            assert "pdsuite-bar" in page and "pd-emu" in page  # the bar (rate, mix, EMULATED) on Locust's page
            # in the page's flow, first in the body: it pushes Locust's app down instead of covering a field
            bar = page[page.index('<div id="pdsuite-bar"'):]
            assert "position:static" in bar[:200] and "position:fixed" not in bar.split("</div>")[0]
            assert page.index("pdsuite-bar") < page.index('id="root"')
            # the start form: users, ramp-up, host, and our fields (rate 4/s, long_prefill only)
            r = get(ui + "/swarm", {"user_count": 2, "spawn_rate": 2, "host": url, "pd_rate": "4",
                                    "pd_mix": "long_prefill=1,short_decode=0"})
            assert r["success"], r
            wait(lambda: sum(done(ui).values()) >= 8, 30, "first requests")
            st = get(ui + "/pdsuite")
            assert st["rate_rps"] == 4 and st["emulated"] is True and "short_decode" not in st["classes"]
            t, before = time.monotonic(), sum(done(ui).values())
            time.sleep(3)
            slow = (sum(done(ui).values()) - before) / (time.monotonic() - t)

            # Locust's own table, RPS and response times: one entry per request (tokens are not requests)
            wait(lambda: get(ui + "/stats/requests")["stats"][-1]["num_requests"] >= 4, 15, "Locust's stats")
            stats = get(ui + "/stats/requests")
            rows = {(s["method"], s["name"]) for s in stats["stats"]}
            assert rows == {("E2E", "long_prefill"), ("", "Aggregated")}, rows
            total = stats["stats"][-1]["num_requests"]
            assert total <= sum(done(ui).values()) and stats["total_rps"] < 8, stats["total_rps"]  # 4 req/s offered
            ext = stats["extended_stats"][0]
            assert ext["key"] == "pdsuite" and ext["data"][0]["name"] == "EMULATED"
            assert {(x["name"], x["metric"]) for x in ext["data"][1:]} == {("long_prefill", m) for m in
                                                                          ("TTFT", "ITL", "TPOT", "E2E")} | \
                {("all", "SEND_LAG")}
            itl = next(x for x in ext["data"] if x["metric"] == "ITL")["count"]
            assert itl > total  # per token, in pdsuite's tab only

            # ad hoc: 20 req/s and short_decode only, while running
            assert get(ui + "/pdsuite/rate?rps=20")["rate_rps"] == 20
            assert get(ui + "/pdsuite/mix?long_prefill=0&short_decode=1")["mix"] == {"long_prefill": 0,
                                                                                     "short_decode": 1}
            time.sleep(1)
            t, before = time.monotonic(), done(ui)
            time.sleep(3)
            after = done(ui)
            fast = (sum(after.values()) - sum(before.values())) / (time.monotonic() - t)
            assert fast > 1.5 * slow, (slow, fast)  # completions; the schedule's own rates are checked below
            # the new mix holds (each worker may send the one old request it had prepared when the change came)
            assert after["long_prefill"] - before["long_prefill"] <= 2
            with pytest.raises(urllib.error.HTTPError) as bad:
                get(ui + "/pdsuite/mix?nope=1")  # unknown class: refused, the run goes on
            assert bad.value.code == 400
            wait(lambda: any("TTFT short_decode" in p for p in get(ui + "/pdsuite/history")["history"]), 10,
                 "per-class chart samples")
            charts = get(ui + "/pdsuite/charts")
            assert "'chart-'" in charts and "toLocaleTimeString" in charts  # a clock-time axis per chart

            get(ui + "/stop", {})  # POST, as the Stop button does
            wait(lambda: (tmp_path / "requests.parquet").is_file(), 30, "records on stop")
            df = pd.read_parquet(tmp_path / "requests.parquet")
            assert set(df["request_class"]) == {"long_prefill", "short_decode"} and set(df["worker"]) == {"w0", "w1"}
            assert (df["status"].isin(["ok", "cancelled"])).all()  # a UI run ends where its user stopped it
            index = df["request_id"].str.split("-").str[1].astype(int)
            # the schedule after the change, per worker (a worker starved of CPU on a busy box sends later, but
            # what it sends keeps its own half of the 20 req/s schedule)
            rates = [len(g) / (g["scheduled_s"].max() - g["scheduled_s"].min())
                     for _, g in df[index >= REPLAN_BASE].groupby("worker")]
            assert len(rates) == 2 and 14 < sum(rates) < 28, rates
            assert (df[index >= 2 * REPLAN_BASE]["request_class"] == "short_decode").all()  # after the mix change
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
