"""Runner overhead accounting: a point's load window comes from its records, the ratio from the phases."""

import json
import time
from pathlib import Path

import pytest

import suite.load
import suite.scrape
from suite.config import Settings
from suite.load.cluster import LoadCluster
from suite.load.records import write_records
from suite.plan import Plan
from suite.runner import drivers
from suite.runner.drivers import Driver
from suite.runner.run import run_plan
from suite.runner.timing import PHASES, Timings, Window, load_window, split_call
from suite.schema import RequestRecord, Status


def rec(i: int, sent: float | None, done: float | None, status: Status = Status.OK) -> RequestRecord:
    return RequestRecord(request_id=str(i), request_class="c", input_tokens=8, max_tokens=8, scheduled_s=sent or 0,
                         sent_s=sent, done_s=done, status=status)


def point(tmp: Path, t0: float, records: list[RequestRecord]) -> Path:
    write_records(tmp / "requests.parquet", records)
    (tmp / "load.json").write_text(json.dumps({"t0_wall": t0}))
    return tmp


def test_load_window_is_first_send_to_last_response_including_timeouts(tmp_path):
    d = point(tmp_path, 1000.0, [
        rec(0, 0.5, 1.0),
        rec(1, 0.2, 0.4),  # the first send
        rec(2, 3.0, 9.0, Status.TIMEOUT),  # in flight until given up: load
        rec(3, None, None, Status.ERROR),  # never left the client: not load
        rec(4, 4.0, None, Status.ERROR),  # left, no done time: counts up to its send
    ])
    w = load_window(d)
    assert (w.t0, w.first, w.last) == pytest.approx((1000.0, 1000.2, 1009.0))


def test_load_window_without_records_is_none(tmp_path):
    assert load_window(tmp_path) is None  # nothing written
    (tmp_path / "requests.parquet").write_bytes(b"not parquet")
    (tmp_path / "load.json").write_text('{"t0_wall": 1}')
    assert load_window(tmp_path) is None
    point(tmp_path, 5.0, [rec(0, None, None, Status.ERROR)])
    assert load_window(tmp_path) is None  # nothing was ever sent


def test_split_call_lead_wait_window_tail():
    # call 100.0 .. 112.0; schedule t0 at 100.3, first send at 100.5, last response at 111.7
    parts = split_call(100.0, 12.0, Window(100.3, 100.5, 111.7))
    assert parts == pytest.approx((0.3, 0.2, 11.2, 0.3))
    assert split_call(100.0, 12.0, None) == (12.0, 0.0, 0.0, 0.0)  # no records: all of the call is overhead
    lead, wait, load, tail = split_call(100.0, 2.0, Window(98.0, 99.0, 105.0))  # outside the call: clipped
    assert lead == 0 and wait == 0 and load == pytest.approx(2.0) and tail == pytest.approx(0.0)
    assert sum(split_call(10.0, 3.0, Window(10.5, 11.0, 20.0))) == pytest.approx(3.0)


def test_overhead_ratio_excludes_model_load_and_phases_add_up():
    t = Timings(up_s=20, load_s=76, warmup_s=1.5, point_lead_s=1.0, scrape_s=0.5, down_s=0.5, wall_s=100)
    assert t.overhead_s == pytest.approx(4.0)
    assert t.overhead_ratio == pytest.approx(0.05)  # 4 / (100 - 20), not 4 / 100
    assert t.other_s == pytest.approx(0.5)
    d = t.as_dict()
    assert d["overhead_ratio"] == 0.05 and "schedule t0" in d["definition"]
    assert set(PHASES) <= set(d)


def test_resumed_run_sums_attempts_and_recomputes_the_ratio():
    first = Timings(up_s=10, load_s=40, wall_s=60).as_dict()  # ratio 10/50 = 0.2
    second = Timings(up_s=10, load_s=89, wall_s=100)  # ratio 1/90
    merged = Timings.merged(first, second)
    assert merged.wall_s == 160 and merged.load_s == 129
    assert merged.overhead_ratio == pytest.approx(11 / 140)  # neither attempt's own ratio


class Quiet(Driver):
    def up(self, timeout_s):
        pass

    def dead(self):
        return []

    def logs(self, service, tail=50):
        return ""

    def down(self):
        pass


# each fake point, seconds from the call's start: schedule t0, first send, last response, call length
T0, SENT, DONE, CALL = 0.02, 0.05, 0.15, 0.2


def fake_load(endpoint, model, spec, out_dir, workers=2, timeout_s=60):
    from suite.load.run import LoadSummary

    start = time.time()
    point(Path(out_dir), start + T0, [rec(0, SENT - T0, DONE - T0 - 0.05), rec(1, SENT - T0 + 0.02, DONE - T0)])
    time.sleep(max(0.0, start + CALL - time.time()))
    return LoadSummary(sent=2, ok=2)


def test_runner_counts_record_windows_as_load_and_the_rest_as_phases(tmp_path, monkeypatch):
    monkeypatch.setitem(drivers.DRIVERS, "quiet", Quiet)
    monkeypatch.setitem(vars(suite.load), "run_load", fake_load)
    monkeypatch.setattr(suite.scrape, "snapshot", lambda urls, out, timeout=5.0: Path(out).mkdir(parents=True))
    monkeypatch.setattr(LoadCluster, "spawn", lambda self: None)
    plan = Plan(name="t", deployments=["vllm-colocated"], workload={"duration_s": 1}, points=[{"label": "a"}],
                repetitions=3, warmup_requests=0)
    state = run_plan(plan, Settings(), tmp_path, backend="emu", driver_kind="quiet")
    t = json.loads((state.out / "manifest.json").read_text())["timings"]
    window = DONE - T0  # the arrival process runs from t0: the wait for the first send is load too
    assert t["points"] == 3
    assert t["load_s"] == pytest.approx(3 * window, abs=0.03)  # the records' windows, not the calls
    assert t["point_lead_s"] == pytest.approx(3 * T0, abs=0.03)
    assert t["first_arrival_s"] == 0
    assert t["point_tail_s"] == pytest.approx(3 * (CALL - DONE), abs=0.03)
    assert t["overhead_s"] == pytest.approx(sum(t[k] for k in PHASES) + t["other_s"], abs=0.002)
    assert 0 <= t["other_s"] < 0.2
    assert t["overhead_ratio"] == pytest.approx(t["overhead_s"] / (t["wall_s"] - t["up_s"]), abs=1e-3)
    p = json.loads((state.out / "emu-vllm-colocated/a/rep0/point.json").read_text())
    pt = p["native"]["timings"]
    assert pt["lead_s"] + pt["first_arrival_s"] + pt["load_window_s"] + pt["tail_s"] == pytest.approx(
        pt["load_call_s"], abs=1e-3)
    assert p["load_wall_s"] == pytest.approx(window, abs=0.01)
