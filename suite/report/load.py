"""Read results trees (and imported `vllm bench serve` JSON) into columnar frames.

Columnar on purpose: a million requests must load in seconds, so nothing here makes a Python object per request.
Problems (missing/corrupt files, unknown schema or metrics versions, partial runs) become messages, not crashes;
only "no usable data at all" is fatal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from suite.schema import SCHEMA_VERSION, PointResult
from suite.stats.histogram import HistAcc

COLUMNS = ["request_class", "input_tokens", "prompt_tokens", "completion_tokens", "sent_s", "first_token_s",
           "done_s", "token_times_s", "status"]


MAX_JSON_BYTES = 64 * 1024 * 1024  # manifest.json and point.json are a few KB; never load a runaway file whole


class ReportInputError(ValueError):
    """Nothing usable in the inputs."""


@dataclass
class Dataset:
    points: pd.DataFrame  # one row per repetition of a point
    requests: pd.DataFrame  # one row per request: pidx, cls, input_tokens, ttft, tpot, e2e, ok, status ...
    itl: dict  # (pidx, class code) -> HistSample of its inter-token gaps (suite.stats.histogram)
    metrics: pd.DataFrame  # normalised server metrics: pidx, service, role, metric, kind, value, count, sum ...
    hist: dict = field(default_factory=dict)  # (pidx, metric, role) -> Series (bucket deltas, for quantiles)
    manifests: list[dict] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)  # (level, text): level = error | warning | info

    @property
    def emulated(self) -> bool:
        return bool(self.points["emulated"].any()) if len(self.points) else False

    @property
    def mixed(self) -> bool:
        return self.emulated and not bool(self.points["emulated"].all())

    @property
    def partial(self) -> bool:
        return bool((self.points["status"] != "ok").any()) or any(
            m.get("status") not in (None, "complete") for m in self.manifests)


def _major(v: str) -> str:
    return str(v).split(".")[0]


def _is(col, value: str) -> np.ndarray:
    return pc.fill_null(pc.equal(col, value), False).to_numpy(zero_copy_only=False)


def _codes(table: pa.Table, name: str, default: str, classes: dict[str, int]) -> np.ndarray:
    """Class names -> global int codes via arrow's dictionary encoding (no per-row Python strings)."""
    if name not in table.column_names:
        return np.full(table.num_rows, classes.setdefault(default, len(classes)), dtype=np.int16)
    enc = pc.dictionary_encode(table.column(name).combine_chunks().fill_null(default))
    remap = np.array([classes.setdefault(str(v), len(classes)) for v in enc.dictionary.to_pylist()] or [0],
                     dtype=np.int16)
    return remap[enc.indices.to_numpy(zero_copy_only=False)]


ITL_BATCH_ROWS = 65_536  # token_times_s is read in row batches of this many requests


def itl_gaps(tt: pa.ListArray, tag: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, owner) of a batch of token-time lists: consecutive differences within each request. owner is the
    request's row, or tag[row] when a per-row tag (the class code) is given - cheaper than indexing later."""
    lens = pc.list_value_length(tt).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(tt).to_numpy(zero_copy_only=False).astype(float, copy=False)
    if len(flat) < 2:
        return np.zeros(0), np.zeros(0, dtype=np.int64 if tag is None else tag.dtype)
    gaps = np.diff(flat)
    keep = np.isfinite(gaps)
    starts = np.cumsum(lens)[:-1]
    starts = starts[(starts > 0) & (starts < len(flat))]
    keep[starts - 1] = False  # the gap across two requests is not an ITL
    owner = np.repeat(np.arange(len(lens)) if tag is None else tag, lens)[1:]
    return gaps[keep], owner[keep]


def _tt_batches(table: pa.Table, path: Path | None):
    """token_times_s in row batches: straight from the parquet file when there is one (never all in memory)."""
    if path is not None:
        pf = pq.ParquetFile(path)
        if "token_times_s" in pf.schema_arrow.names:
            for batch in pf.iter_batches(batch_size=ITL_BATCH_ROWS, columns=["token_times_s"]):
                yield batch.column(0)
        return
    if "token_times_s" in table.column_names:
        col = table.column("token_times_s")
        for start in range(0, table.num_rows, ITL_BATCH_ROWS):
            yield col.slice(start, ITL_BATCH_ROWS).combine_chunks()


def _itl(table: pa.Table, path: Path | None, cls: np.ndarray) -> tuple[np.ndarray, dict[int, HistAcc]]:
    """Token counts per request and ITL histograms per class, batch by batch (bounded memory)."""
    lens_parts, acc, row0 = [], {}, 0
    for tt in _tt_batches(table, path):
        n = len(tt)
        lens_parts.append(pc.list_value_length(tt).fill_null(0).to_numpy(zero_copy_only=False))
        gaps, gcls = itl_gaps(tt, cls[row0:row0 + n])
        row0 += n
        if not len(gaps):
            continue
        present = np.unique(cls[row0 - n:row0])
        if len(present) == 1:
            acc.setdefault(int(present[0]), HistAcc()).add(gaps)
            continue
        for c in present:  # few classes: one masked pass each
            sel = gcls == c
            acc.setdefault(int(c), HistAcc()).add(gaps[sel])
    lens = np.concatenate(lens_parts) if lens_parts else np.zeros(table.num_rows, dtype=np.int64)
    return lens, acc


def _derive(table: pa.Table, pidx: int, classes: dict[str, int], path: Path | None = None) -> tuple[dict, dict]:
    """Request-level columns (arrow/numpy only) and the ITL histograms of one point repetition."""
    def col(name, fill=np.nan):
        if name not in table.column_names:
            return np.full(table.num_rows, fill)
        return table.column(name).to_numpy(zero_copy_only=False).astype(float)

    sent, first, done = col("sent_s"), col("first_token_s"), col("done_s")
    cls = _codes(table, "request_class", "default", classes)
    lens, acc = _itl(table, path, cls)
    completion = col("completion_tokens")
    n_out = np.where(np.isnan(completion), lens, completion)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(n_out >= 2, (done - first) / (n_out - 1), np.nan)
    status = table.column("status") if "status" in table.column_names else pa.array(["ok"] * table.num_rows)
    req = {"pidx": np.full(table.num_rows, pidx, dtype=np.int32), "cls": cls,
           "input_tokens": col("input_tokens"), "prompt_tokens": col("prompt_tokens"), "n_out": n_out,
           "sent": sent, "done": done, "ttft": first - sent, "e2e": done - sent, "tpot": tpot,
           "ok": _is(status, "ok"), "err": _is(status, "error"), "tmo": _is(status, "timeout")}
    return req, {(pidx, c): a.sample() for c, a in acc.items()}


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _point_row(pr: PointResult, path: Path, run: str, manifest: dict) -> dict:
    w = pr.workload
    return {"run": run, "plan": manifest.get("plan", ""), "deployment": pr.deployment, "framework": pr.framework,
            "topology": pr.topology, "backend": pr.backend, "emulated": pr.emulated or manifest.get("emulated", False),
            "point": pr.point, "rep": pr.repetition, "status": pr.status, "failure": pr.failure,
            "rate_rps": w.rate_rps if w.rate_rps is not None else math.nan,
            "concurrency": w.concurrency if w.concurrency is not None else math.nan,
            "arrival": w.arrival, "load_wall_s": pr.load_wall_s, "path": str(path), "n_requests": 0,
            "seed": w.seed, "duration_s": w.duration_s if w.duration_s is not None else math.nan,
            "offered_rps": _num((pr.native.get("load_summary") or {}).get("offered_rps")),
            "classes": json.dumps(w.classes), "services": json.dumps(pr.services),
            "engine_versions": json.dumps(pr.engine_versions, sort_keys=True), "driver": pr.driver or "",
            "caveat": pr.caveat or ""}


class _Builder:
    def __init__(self) -> None:
        self.points: list[dict] = []
        self.req: list[dict] = []
        self.itl: dict = {}
        self.metric_rows: list[dict] = []
        self.hist: dict = {}
        self.manifests: list[dict] = []
        self.messages: list[tuple[str, str]] = []
        self.classes: dict[str, int] = {}

    def msg(self, level: str, text: str) -> None:
        self.messages.append((level, text))

    def add_point(self, row: dict, table: pa.Table | None, path: Path | None = None) -> int:
        pidx = len(self.points)
        if table is not None:
            try:
                req, itl = _derive(table, pidx, self.classes, path)
            except (OSError, pa.ArrowInvalid) as e:  # a row group of token_times_s unreadable
                self.msg("error", f"{path}: unreadable token_times_s ({type(e).__name__}: {e}); no ITL for it")
                req, itl = _derive(table.drop_columns([c for c in table.column_names if c == "token_times_s"]),
                                   pidx, self.classes, None)
            self.req.append(req)
            self.itl |= itl
            row["n_requests"] = table.num_rows
        self.points.append(row)
        return pidx

    def build(self) -> Dataset:
        if not self.points:
            raise ReportInputError("; ".join(t for lvl, t in self.messages if lvl == "error") or "no results found")

        def cat(parts, key):
            return np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)

        if not self.req:  # points without one readable record: nothing to compute (and say why)
            why = [t for lvl, t in _collapse(self.messages) if lvl == "error"] or \
                [t for lvl, t in _collapse(self.messages) if lvl == "warning"]
            raise ReportInputError("no request records to report" + (f": {why[0]}" if why else ""))
        req = pd.DataFrame({k: cat(self.req, k) for k in self.req[0]})
        names = sorted(self.classes, key=self.classes.get)
        if "cls" in req:
            req["cls"] = pd.Categorical.from_codes(req["cls"].to_numpy().astype(np.int16), categories=names)
        return Dataset(pd.DataFrame(self.points), req, self.itl, pd.DataFrame(self.metric_rows), self.hist,
                       self.manifests, _collapse(self.messages))


def _collapse(messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The same problem in many files is one message: 'text (N files, e.g. path)'."""
    groups: dict[tuple[str, str], list[str]] = {}
    for level, text in messages:
        path, sep, rest = text.partition(": ")
        key = (level, rest if sep and "/" in path else text)
        groups.setdefault(key, []).append(path if sep and "/" in path else "")
    out = []
    for (level, rest), paths in groups.items():
        if len(paths) == 1:
            out.append((level, f"{paths[0]}: {rest}" if paths[0] else rest))
        else:
            out.append((level, f"{rest} ({len(paths)} files, e.g. {paths[0]})"))
    return out


NUMERIC = ("input_tokens", "prompt_tokens", "completion_tokens", "sent_s", "first_token_s", "done_s")
TEXT = ("request_class", "status")


def check_table(table: pa.Table) -> str | None:
    """Why a requests table cannot be reported, or None: wrong column types, NaN/Inf/negative values where they
    are meaningless, or responses that end before their request was sent (negative latencies)."""
    for name in table.column_names:
        t = table.schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if name in NUMERIC and not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
            return f"column {name} has type {t}, expected a number"
        if name in TEXT and not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            return f"column {name} has type {t}, expected text"
    cols = {n: table.column(n).to_numpy(zero_copy_only=False).astype(float) for n in NUMERIC
            if n in table.column_names}
    for name, v in cols.items():
        with np.errstate(invalid="ignore"):
            bad = np.isinf(v) | (v < 0)
        if bad.any():
            return f"column {name} holds {int(bad.sum())} infinite or negative values (e.g. {v[bad][0]!r})"
    sent = cols.get("sent_s")
    if sent is not None:
        for name in ("first_token_s", "done_s"):
            if name in cols:
                with np.errstate(invalid="ignore"):
                    bad = cols[name] < sent
                if bad.any():
                    return (f"{int(bad.sum())} records have {name} before sent_s (negative latency, e.g. "
                            f"{cols[name][bad][0] - sent[bad][0]:.3g} s)")
    return None


def _read_table(path: Path, b: _Builder) -> pa.Table | None:
    try:
        schema = pq.read_schema(path)
        # token_times_s is streamed in batches later (_tt_batches), never held whole
        table = pq.read_table(path, columns=[c for c in COLUMNS if c in schema.names and c != "token_times_s"])
    except (OSError, pa.ArrowInvalid) as e:
        b.msg("error", f"{path}: unreadable requests.parquet ({type(e).__name__}: {e}); its requests are missing")
        return None
    problem = check_table(table)
    if problem:
        b.msg("error", f"{path}: {problem}; its requests are left out")
        return None
    return table


def _server_metrics(rep: Path, pr: PointResult, pidx: int, b: _Builder) -> None:
    from suite.normalise import MetricsError, delta, normalise_text

    after_dir = rep / "metrics" / "after"
    if not after_dir.is_dir():
        b.msg("warning", f"{rep}: no server metrics (metrics/after missing)")
        return
    for prom in sorted(after_dir.glob("*.prom")):
        service = prom.stem
        role = pr.services.get(service, "unknown")
        before_path = rep / "metrics" / "before" / prom.name
        try:
            after = normalise_text(prom.read_text(errors="replace"), pr.framework, role)
            before = normalise_text(before_path.read_text(errors="replace"), pr.framework, role) \
                if before_path.is_file() else None
        except (MetricsError, ValueError) as e:
            b.msg("warning", f"{prom}: {e}")
            continue
        if before is None:
            b.msg("warning", f"{rep}: no 'before' snapshot of {service}: totals since engine start, not this point")
        d = delta(before, after)
        for w in d.warnings:
            b.msg("warning", f"{prom}: {w}")
        _cache_overlap(d.series, pr, service, rep, b)
        for s in d.series.values():
            b.metric_rows.append({"pidx": pidx, "service": service} | s.row())
            if s.kind == "histogram":
                key = (pidx, s.name, s.role)
                prev = b.hist.get(key)
                b.hist[key] = s if prev is None else _merge_hist(prev, s)


# Above this share of prompt tokens served from a prefix cache on a workload that asked for no shared prefix, the
# prompts overlap and TTFT understates prefill (random prompts share no 16-token block by chance).
CACHE_OVERLAP_WARN = 0.05


def _cache_overlap(series: dict, pr: PointResult, service: str, rep: Path, b: _Builder) -> None:
    """Warn when the engine served a workload's unshared prompts from its prefix cache."""
    def total(name: str) -> float:
        return sum(getattr(s, "value", 0.0) or 0.0 for s in series.values() if s.name == name)

    cached, computed = total("prompt_tokens_cached"), total("prompt_tokens_computed")
    if cached + computed <= 0 or pr.topology == "disagg-kvpool":
        return
    try:  # the point's load spec (a workload with a shared prefix is meant to hit the cache)
        shared = json.loads((rep / "loadspec.json").read_text()[:1_000_000]).get("shared_prefix_tokens", 0)
    except (OSError, ValueError, AttributeError):
        shared = 0
    if shared:
        return
    share = cached / (cached + computed)
    if share > CACHE_OVERLAP_WARN:
        b.msg("warning", f"{rep} ({service}): {share:.0%} of prompt tokens came from the prefix cache although the "
                         "workload shares no prefix: the prompts overlap and TTFT understates prefill")


def _merge_hist(a, s):
    """Two engines of the same role (dp2 replicas): add their bucket deltas."""
    from dataclasses import replace

    from suite.normalise.metrics import _step

    bounds = tuple(sorted(set(a.le) | set(s.le)))
    cum = tuple(_step(a.le, a.cum, x) + _step(s.le, s.cum, x) for x in bounds)
    return replace(a, le=bounds, cum=cum, count=(a.count or 0) + (s.count or 0), sum=(a.sum or 0) + (s.sum or 0))


def _load_tree(root: Path, b: _Builder) -> None:
    manifest: dict = {}
    mpath = root / "manifest.json"
    if mpath.is_file():
        try:
            if mpath.stat().st_size > MAX_JSON_BYTES:
                raise ValueError(f"larger than {MAX_JSON_BYTES >> 20} MiB")
            manifest = json.loads(mpath.read_bytes().decode("utf-8", errors="replace"))
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
            manifest["_path"] = str(root)
            b.manifests.append(manifest)
            if _major(manifest.get("schema_version", "?")) != _major(SCHEMA_VERSION):
                b.msg("error", f"{mpath}: schema {manifest.get('schema_version')} but this report reads "
                               f"{SCHEMA_VERSION}: numbers may be misread")
            if manifest.get("status") not in (None, "complete"):
                b.msg("warning", f"{root}: run status is {manifest.get('status')!r}: reported as PARTIAL")
        except (OSError, ValueError) as e:
            manifest = {}
            b.msg("error", f"{mpath}: corrupt manifest ({e}); environment section incomplete")
    else:
        b.msg("warning", f"{root}: no manifest.json; environment unknown")
    point_files = sorted(root.glob("*/*/rep*/point.json"))
    if not point_files:
        b.msg("error", f"{root}: no <deployment>/<point>/rep<k>/point.json found")
    for pj in point_files:
        rep = pj.parent
        try:
            if pj.stat().st_size > MAX_JSON_BYTES:
                raise ValueError(f"larger than {MAX_JSON_BYTES >> 20} MiB")
            pr = PointResult.model_validate_json(pj.read_bytes())
        except (OSError, ValueError) as e:
            b.msg("error", f"{pj}: corrupt point.json ({str(e).splitlines()[0]}); repetition skipped")
            continue
        if _major(pr.schema_version) != _major(SCHEMA_VERSION):
            b.msg("error", f"{pj}: schema {pr.schema_version}, expected {SCHEMA_VERSION}")
        rq = rep / "requests.parquet"
        table = _read_table(rq, b) if rq.is_file() else None
        if not rq.is_file():
            b.msg("warning", f"{rep}: no requests.parquet ({pr.status}: {pr.failure or 'no records'})")
        if pr.status != "ok":
            b.msg("warning", f"{rep}: point {pr.status}: {pr.failure or '?'}")
        pidx = b.add_point(_point_row(pr, rep, str(root), manifest), table, rq if table is not None else None)
        _server_metrics(rep, pr, pidx, b)


def load(inputs: list[str | Path]) -> Dataset:
    """Results trees (results/<plan>/<stamp>) and/or `vllm bench serve` result JSON files."""
    from suite.report.importers import import_vllm_bench

    b = _Builder()
    for item in map(Path, inputs):
        if item.is_file() and item.suffix == ".json":
            try:
                pr, table = import_vllm_bench(item)
            except (OSError, ValueError) as e:
                b.msg("error", f"{item}: {e}")
                continue
            b.add_point(_point_row(pr, item, str(item), {}), table)
            b.msg("info", f"{item}: imported `vllm bench serve` results ({table.num_rows} requests)")
        elif item.is_dir():
            _load_tree(item, b)
        else:
            b.msg("error", f"{item}: no such results directory or JSON file")
    ds = b.build()
    if ds.mixed:
        ds.messages.insert(0, ("error", "inputs MIX emulated and real runs: compare them only with that in mind"))
    return ds
