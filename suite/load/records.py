"""requests.parquet: one row per RequestRecord. Columns are documented in docs/load.md.

Stored: every RequestRecord field (token_times_s as list<double>), plus derived convenience columns
(send_lag_s, ttft_s, e2e_s, tpot_s) so pandas users need not recompute them. read_records ignores the derived ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from suite.schema import RequestRecord

SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("request_class", pa.string()),
    ("api", pa.string()),
    ("worker", pa.string()),
    ("input_tokens", pa.int64()),
    ("max_tokens", pa.int64()),
    ("scheduled_s", pa.float64()),
    ("sent_s", pa.float64()),
    ("first_token_s", pa.float64()),
    ("done_s", pa.float64()),
    ("token_times_s", pa.list_(pa.float64())),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("status", pa.string()),
    ("http_status", pa.int64()),
    ("error", pa.string()),
    ("response_id", pa.string()),
    # derived
    ("send_lag_s", pa.float64()),
    ("ttft_s", pa.float64()),
    ("e2e_s", pa.float64()),
    ("tpot_s", pa.float64()),
])
DERIVED = ("send_lag_s", "ttft_s", "e2e_s", "tpot_s")


def _row(r: RequestRecord) -> dict:
    d = r.model_dump(mode="json")
    for k in DERIVED:
        d[k] = getattr(r, k)
    return d


def write_records(path: str | Path, records: Iterable[RequestRecord | dict]) -> int:
    """Write all records (dicts are validated as RequestRecord first). Returns the row count."""
    rows = [_row(r if isinstance(r, RequestRecord) else RequestRecord.model_validate(r)) for r in records]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return len(rows)


def read_records(path: str | Path) -> list[RequestRecord]:
    table = pq.read_table(path)
    keep = [c for c in table.column_names if c not in DERIVED]
    return [RequestRecord.model_validate(row) for row in table.select(keep).to_pylist()]
