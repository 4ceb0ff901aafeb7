"""Load generation: LoadSpec -> open/closed-loop streaming requests -> requests.parquet (see docs/load.md).

Light on purpose (suite.load.cli imports this package): the API is loaded on first use.
"""

from __future__ import annotations

__all__ = ["LoadSpec", "LoadSummary", "read_records", "run_load", "write_records"]


def __getattr__(name: str):
    if name == "LoadSpec":
        from suite.load.spec import LoadSpec

        return LoadSpec
    if name in ("run_load", "LoadSummary"):
        from suite.load import run

        return getattr(run, name)
    if name in ("read_records", "write_records"):
        from suite.load import records

        return getattr(records, name)
    raise AttributeError(name)
