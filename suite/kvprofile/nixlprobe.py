"""NIXL/UCX transfer timing, the data path vLLM's NixlConnector uses (D READs P's KV blocks).

Runs only where `nixl` is importable (the vLLM image ships it; the CI box and bare GPU hosts usually do not).
P and D are two spawned processes, as in vLLM's P/D: P (target) fills its buffer on GPU0 and registers it, D
(initiator, GPU1) adds P's agent and READs from it, one descriptor per op of each pattern, host-timed (NIXL
completion is polled from the CPU). Both agents in one process do not measure that path: UCX cannot use cuda_ipc
within a process and falls back to TCP over loopback (0.4 GB/s on the H100 pair, vs ~250+ GB/s with two processes).

D checks every byte it read (P's buffer holds a period-251 pattern, so a descriptor landing at the wrong offset
shows), stops a point after `nixl_point_s` seconds of samples (marked `truncated`; larger points are then
skipped), and records the UCX transports it saw (D runs with UCX_PROTO_INFO=y, its output goes to a log file).
The caller keeps the clock: P and D are killed at `timeout_s`. Any failure is reported, not raised: the NCCL
numbers stand without it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from suite.kvprofile.analysis import gbps, op_sizes, timing_stats
from suite.kvprofile.attribution import TCP_REMEDY

DIRECTION = "READ"  # vLLM's NixlConnector: D pulls P's blocks
PERIOD = 251  # byte pattern period (prime: no power-of-two block offset is a multiple of it)
TILE = PERIOD * 4096
POINT_LIMIT_S = 20.0  # default per-point sample budget
SETUP_S = 300.0  # P/D start: import torch + nixl, CUDA init, allocate, register
# Below this a >= 64 MB point on GPUs did not go over NVLink/CUDA IPC (~250+ GB/s) or RDMA; TCP moves ~0.4-5 GB/s.
SLOW_GBPS = 20.0
SLOW_MIN_BYTES = 64 * 10**6
GET_ZCOPY = "UCX_CUDA_IPC_ENABLE_GET_ZCOPY"
FALLBACK_ADVICE = "run P and D with ipc/pid host, see docs/kv-transfer.md"
_PROTO_HDR = re.compile(r"remote memory read|ucp_get", re.I)  # the table of ucp_get*, what a NIXL READ posts
_TL = re.compile(r"\b([a-z][a-z0-9_]*)/([A-Za-z0-9_.:\-]+)")


def nixl_probe(torch, model, opts, device: str) -> dict:
    """The probe's NIXL part: {available, version, direction, results, note, ...}; never raises."""
    try:
        found = importlib.util.find_spec("nixl") is not None
    except (ImportError, ValueError) as e:
        found, why = False, str(e)
    else:
        why = "no module named 'nixl'"
    if not found:
        return {"available": False, "note": f"skipped: nixl not importable ({why})"}
    try:
        return _run(model, opts, device)
    except Exception as e:  # report, do not fail the probe: the NCCL numbers stand on their own
        return {"available": True, "version": "unknown", "direction": DIRECTION, "results": [],
                "note": f"failed: {type(e).__name__}: {e}"}


# ---- parent: plan, spawn, collect, kill -------------------------------------------------------------------
def _plan(model, opts) -> list[dict]:
    points = []
    for pattern in opts.patterns:
        for tokens in opts.tokens:
            sizes = op_sizes(model, tokens, pattern, opts.block_tokens, opts.kv_dtype)
            pt = {"pattern": pattern, "tokens": tokens, "bytes": sum(sizes), "ops": len(sizes), "sizes": sizes}
            if len(sizes) > opts.max_ops:
                pt["skip"] = f"{len(sizes)} descriptors > --max-ops {opts.max_ops}"
            points.append(pt)
    return points


def _stop(proc, grace_s: float) -> None:
    if proc.pid is None:  # never started
        return
    proc.join(grace_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def _run(model, opts, device: str) -> dict:
    cuda = device == "cuda"
    point_s = float(getattr(opts, "nixl_point_s", POINT_LIMIT_S))
    total_s = float(opts.timeout_s)
    spec = {
        "max_bytes": max(opts.tokens) * model.kv_bytes_per_token(opts.kv_dtype),
        # P and D on two GPUs; `nixl_devices` = ("cuda:0", "cuda:0") puts both on one (the one-GPU diagnosis)
        "dev_p": opts.nixl_devices[0] if cuda else "cpu", "dev_d": opts.nixl_devices[1] if cuda else "cpu",
        "points": _plan(model, opts), "warmup": opts.warmup, "iters": opts.iters, "point_s": point_s,
        "xfer_s": max(60.0, 3 * point_s),  # one transfer still in progress after this: give up
        "setup_s": min(SETUP_S, total_s), "total_s": total_s, "op": DIRECTION,
        # as the suite's vLLM P/D engines run (setting UCX_CUDA_IPC_GET_ZCOPY): UCX's own default serves no
        # cuda_ipc READs without NVLink, so a one-GPU or PCIe pair would measure TCP
        "ucx_env": {GET_ZCOPY: os.environ.get(GET_ZCOPY, "y")},
    }
    out = {"available": True, "version": "unknown", "direction": DIRECTION, "results": [], "ucx_env": spec["ucx_env"],
           "processes": f"P on {spec['dev_p']}, D on {spec['dev_d']}: two spawned processes"}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="kvprobe-nixl-") as tmp:
        logs = {"P": os.path.join(tmp, "p.log"), "D": os.path.join(tmp, "d.log")}
        p_end, d_end_p = ctx.Pipe()
        main_end, d_end_main = ctx.Pipe()
        procs = {"P": ctx.Process(target=_p_main, args=(p_end, spec, logs["P"]), daemon=True, name="nixl-P"),
                 "D": ctx.Process(target=_d_main, args=(d_end_p, d_end_main, spec, logs["D"]), daemon=True,
                                  name="nixl-D")}
        end, err, skipped = None, None, None
        try:
            for proc in procs.values():
                proc.start()
            for c in (p_end, d_end_p, d_end_main):  # the children hold these now: EOF reaches us when D dies
                c.close()
            deadline = time.monotonic() + total_s
            while end is None and err is None and skipped is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    err = f"NIXL part still running after {total_s:.0f} s (--timeout); stopped P and D"
                    break
                if not main_end.poll(min(1.0, left)):
                    if not procs["D"].is_alive() and not main_end.poll(0.2):
                        err = _died(procs["D"])
                    continue
                try:
                    kind, payload = main_end.recv()
                except EOFError:
                    err = _died(procs["D"])
                    break
                if kind == "row":
                    out["results"].append(payload)
                elif kind == "info":
                    out.update(payload)
                elif kind == "end":
                    end = payload
                elif kind == "import_error":
                    skipped = payload
                else:
                    err = payload
        finally:
            main_end.close()
            # D ends itself after "end" and tells P; on any failure both are stopped at once
            _stop(procs["D"], 30.0 if end is not None else 0.5)
            _stop(procs["P"], 30.0 if end is not None else 0.5)
        d_log = _read(logs["D"])
        if opts.nixl_log_dir:  # evidence for "which transport, and why": UCX's own lines, kept whole
            os.makedirs(opts.nixl_log_dir, exist_ok=True)
            for who, path in logs.items():
                with contextlib.suppress(OSError):
                    shutil.copyfile(path, os.path.join(opts.nixl_log_dir, f"nixl-{who}.log"))
        tables, tls = ucx_get_protocols(d_log)
        if tls:
            out["ucx_transports"] = tls
            out["ucx_proto_info"] = tables[:60]
        if err is not None or skipped is not None:
            out["log_tail"] = {k: _tail(_read(p)) for k, p in logs.items()}
    if skipped is not None:
        return {**out, "available": False, "note": f"skipped: nixl not importable in the worker ({skipped})"}
    if err is not None:
        out["note"] = f"failed: {err}" + (f" (after {len(out['results'])} points)" if out["results"] else "")
    else:
        out["note"] = (f"nixl {out['version']}, UCX backend, D {DIRECTION}s from P ({out['processes']}), host-timed, "
                       f"<= {point_s:g} s of samples per point")
    warning = fallback_warning(out["results"], device, out.get("ucx_transports"))
    if warning:
        out["warning"] = warning
    return out


def _died(proc) -> str:
    proc.join(5)  # EOF can arrive before the exit is reaped
    return f"D process exited (code {proc.exitcode}) without a result"


def _read(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text(errors="replace")
    return ""


def _tail(text: str, n: int = 15) -> list[str]:
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-n:]


def ucx_get_protocols(log_text: str) -> tuple[list[str], list[str]]:
    """UCX_PROTO_INFO tables of remote reads (ucp_get*, what a NIXL READ posts) in a UCX log, and the transports
    their rows name (e.g. cuda_ipc/cuda, tcp/lo). Returns (table lines, sorted transports)."""
    lines, tls, in_get = [], set(), False
    for raw in log_text.splitlines():
        i = min((raw.find(c) for c in "|+" if c in raw), default=-1)
        if i < 0:
            in_get = False
            continue
        line = raw[i:].rstrip()
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []
        if len(cells) in (1, 2):  # header: | [<ep config> |] <operation and memory> |  (UCX 1.19+: one cell)
            in_get = bool(_PROTO_HDR.search(cells[-1]))
        if not in_get:
            continue
        lines.append(line)
        if len(cells) >= 3:  # | <size range> | <protocol> | <transports> |
            tls.update(f"{a}/{b}" for a, b in _TL.findall(cells[-1]))
    return lines, sorted(tls)


def fallback_warning(rows: list[dict], device: str, transports: list[str] | None = None) -> str | None:
    """A loud line when a >= 64 MB point on GPUs moved under 20 GB/s: UCX took TCP, not CUDA IPC/NVLink."""
    if device != "cuda":
        return None
    slow = [r for r in rows if "gbps" in r and r["bytes"] >= SLOW_MIN_BYTES and r["gbps"] < SLOW_GBPS]
    if not slow:
        return None
    worst = min(slow, key=lambda r: r["gbps"])
    seen = f" (UCX transports: {', '.join(transports)})" if transports else ""
    if transports and not any(t.startswith("tcp/") for t in transports):
        head = f"NIXL path is slow{seen}"
    else:
        head = f"UCX fell back to TCP{seen}"
    return (f"{head}: {len(slow)} point(s) of >= {SLOW_MIN_BYTES / 1e6:.0f} MB under {SLOW_GBPS:.0f} GB/s, "
            f"worst {worst['gbps']:.2f} GB/s ({worst['pattern']}, {worst['tokens']} tokens); "
            f"{FALLBACK_ADVICE}. Remedy in P/D deployments: {TCP_REMEDY}")


# ---- children ---------------------------------------------------------------------------------------------
def _redirect(log_path: str) -> None:
    """Send this process's stdout/stderr (Python and UCX/NIXL C output alike) to a log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _exit(code: int = 0) -> None:
    """Leave without interpreter teardown (agent destructors at exit can hang; the parent has what it needs)."""
    import sys

    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _tile(torch, dev):
    return (torch.arange(TILE, dtype=torch.int32, device=dev) % PERIOD).to(torch.uint8)


def _views(buf, sizes: list[int]) -> list:
    out, off = [], 0
    for n in sizes:
        out.append(buf[off:off + n])
        off += n
    return out


def _data_ok(region, tile) -> bool:
    """Every byte of `region` (a prefix of D's buffer) equals P's pattern at the same offset."""
    n = region.numel()
    full, rest = divmod(n, TILE)
    if full and not bool((region[:full * TILE].view(full, TILE) == tile).all()):
        return False
    return not rest or bool((region[full * TILE:] == tile[:rest]).all())


def _nixl_version() -> str:
    for dist in ("nixl", "nixl-cu13", "nixl-cu12", "nixl_cu13", "nixl_cu12"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    with contextlib.suppress(Exception):
        import nixl

        return str(getattr(nixl, "__version__", "unknown"))
    return "unknown"


def _open_agent(name: str, dev: str, report, ucx_env: dict):
    """(torch, a UCX nixl agent) with `dev` pinned; None after reporting ("import_error", why) if either is
    missing in this process."""
    os.environ.update(ucx_env)  # before UCX reads its configuration (at agent creation)
    try:
        import torch
        from nixl._api import nixl_agent, nixl_agent_config
    except ImportError as e:
        report.send(("import_error", str(e)))
        return None
    if dev.startswith("cuda"):
        torch.cuda.set_device(dev)
    return torch, nixl_agent(name, nixl_agent_config(backends=["UCX"]))


@contextlib.contextmanager
def _child(report, who: str, conns: tuple, ignore: tuple = ()):
    """The body of a probe child process: an exception (other than `ignore`) is printed to the log, reported as
    ("error", text) on `report` and makes the exit code 1; the connections are closed and the process always exits
    here, without interpreter teardown."""
    code = 0
    try:
        yield
    except ignore:
        pass
    except Exception as e:
        code = 1
        traceback.print_exc()
        with contextlib.suppress(Exception):
            report.send(("error", f"{who}{type(e).__name__}: {e}"))
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
        _exit(code)


def _p_main(conn, spec: dict, log_path: str) -> None:
    """Target: pattern-filled buffer on GPU0, registered; sends D its metadata and each point's descriptors, then
    keeps the buffer exported until D says done (or goes away). Always exits."""
    _redirect(log_path)
    with _child(conn, "P: ", (conn,), ignore=(EOFError,)):  # EOFError: D is gone, nothing left to serve
        opened = _open_agent("P", spec["dev_p"], conn, spec["ucx_env"])
        if opened is None:
            return
        torch, agent = opened
        dev = spec["dev_p"]
        tile = _tile(torch, dev)
        src = tile.repeat(-(-spec["max_bytes"] // TILE))[:spec["max_bytes"]]
        agent.register_memory([src])
        descs = {i: agent.get_serialized_descs(agent.get_xfer_descs(_views(src, pt["sizes"])))
                 for i, pt in enumerate(spec["points"]) if "skip" not in pt}
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        conn.send(("ready", agent.get_agent_metadata(), descs))
        if conn.poll(spec["total_s"] + 60):
            conn.recv()


def _d_main(p_conn, main_conn, spec: dict, log_path: str) -> None:
    """Initiator: READs each point from P, checks the bytes, streams one row per point to the parent."""
    _redirect(log_path)
    os.environ.setdefault("UCX_PROTO_INFO", "y")  # UCX prints the protocol/transport it selects (to the log)
    # closing p_conn also ends P (its wait sees EOF) when D fails before saying done
    with _child(main_conn, "", (p_conn, main_conn)):
        opened = _open_agent("D", spec["dev_d"], main_conn, spec["ucx_env"])
        if opened is None:
            return
        torch, agent = opened
        main_conn.send(("info", {"version": _nixl_version()}))
        dev = spec["dev_d"]
        cuda = dev.startswith("cuda")
        dst = torch.zeros(spec["max_bytes"], dtype=torch.uint8, device=dev)
        tile = _tile(torch, dev)
        agent.register_memory([dst])
        if not p_conn.poll(spec["setup_s"]):
            raise TimeoutError(f"P sent no metadata within {spec['setup_s']:.0f} s")
        msg = p_conn.recv()
        if msg[0] != "ready":
            raise RuntimeError(msg[1] if msg[0] == "error" else f"P: nixl not importable ({msg[1]})")
        _, meta, remote_descs = msg
        remote = agent.add_remote_agent(meta)
        cut_bytes = None  # smallest point that hit the time limit: larger ones would too
        for i, pt in enumerate(spec["points"]):
            row = {"pattern": pt["pattern"], "tokens": pt["tokens"], "bytes": pt["bytes"], "ops": pt["ops"],
                   "direction": spec["op"]}
            if "skip" in pt:
                main_conn.send(("row", {**row, "skipped": pt["skip"]}))
                continue
            if cut_bytes is not None and pt["bytes"] >= cut_bytes:
                main_conn.send(("row", {**row, "skipped": f"a {cut_bytes:,} B point already hit the "
                                                          f"{spec['point_s']:g} s limit"}))
                continue
            region = dst[:pt["bytes"]]
            region.zero_()
            if cuda:
                torch.cuda.synchronize()
            local = agent.get_xfer_descs(_views(dst, pt["sizes"]))
            handle = agent.initialize_xfer(spec["op"], local, agent.deserialize_descs(remote_descs[i]), remote,
                                           b"kvprobe")
            samples, truncated = _time_point(agent, handle, spec, f"{pt['pattern']} {pt['tokens']} tokens")
            agent.release_xfer_handle(handle)
            if truncated:
                cut_bytes = pt["bytes"] if cut_bytes is None else min(cut_bytes, pt["bytes"])
            if cuda:
                torch.cuda.synchronize()
            st = timing_stats(samples)
            main_conn.send(("row", {**row, **st, "gbps": gbps(pt["bytes"], st["median_ms"]),
                                    "data_ok": _data_ok(region, tile), "truncated": truncated}))
        main_conn.send(("end", {}))
        p_conn.send("done")


def _time_point(agent, handle, spec: dict, what: str) -> tuple[list[float], bool]:
    """warmup + iters host-timed transfers; stops once `point_s` has passed (truncated). If that happens during
    warm-up, the last transfer is the one sample."""
    samples, t_point, total = [], time.perf_counter(), spec["warmup"] + spec["iters"]
    for i in range(total):
        t0 = time.perf_counter()
        state = agent.transfer(handle)
        while state not in ("DONE", "ERR"):
            if time.perf_counter() - t0 > spec["xfer_s"]:
                raise TimeoutError(f"NIXL {what}: one transfer still in progress after {spec['xfer_s']:.0f} s")
            state = agent.check_xfer_state(handle)
        t = time.perf_counter() - t0
        if state == "ERR":
            raise RuntimeError(f"NIXL transfer error ({what})")
        if i >= spec["warmup"]:
            samples.append(t)
        if i + 1 < total and time.perf_counter() - t_point > spec["point_s"]:
            return samples or [t], True
    return samples, False
