import pyarrow.parquet as pq

from suite.load.records import read_records, write_records
from suite.schema import RequestRecord, Status


def test_roundtrip_keeps_errors_and_token_times(tmp_path):
    ok = RequestRecord(request_id="a", request_class="short_decode", input_tokens=64, max_tokens=3, scheduled_s=1.0,
                       sent_s=1.001, first_token_s=1.05, done_s=1.2, token_times_s=[1.05, 1.1, 1.2],
                       prompt_tokens=64, completion_tokens=3, http_status=200)
    bad = RequestRecord(request_id="b", request_class="long_prefill", input_tokens=4096, max_tokens=16,
                        scheduled_s=2.0, sent_s=2.0, status=Status.TIMEOUT, error="no complete response")
    path = tmp_path / "requests.parquet"
    assert write_records(path, [ok, bad]) == 2
    back = read_records(path)
    assert back == [ok, bad]
    table = pq.read_table(path).to_pandas()
    assert list(table["status"]) == ["ok", "timeout"]
    assert abs(table["ttft_s"][0] - 0.049) < 1e-9 and abs(table["send_lag_s"][0] - 0.001) < 1e-9
    assert list(table["token_times_s"][0]) == [1.05, 1.1, 1.2]
