"""The link probe behind `pdsuite kvprobe` (needs torch).

Two processes (P = rank 0 sends, D = rank 1 receives) move one request's KV with torch.distributed: NCCL between
two GPUs, or gloo between two CPU processes on loopback (same code; what the tests run).

Timing is taken on P alone, so one clock covers the whole transfer: P sends, D answers with a 1-byte ack once
everything arrived, and the transfer time is that round trip minus half a 1-byte ping-pong (the ack's own
latency). On GPUs P's stream first sleeps (~0.5 ms), so D's receive is already posted when P's clock starts (host
skew after the barrier is not counted, and NCCL cannot pre-stage data in D's buffers before D starts). Clocks:
CUDA events on GPU, perf_counter on CPU. `stream_repeats` K > 0 adds a cross-check that needs no subtraction: K
coalesced sends back to back, one ack, time / K. Plus a same-process GPU-to-GPU copy baseline (torch `copy_`, and
cudaMemcpyPeerAsync pushed from GPU0 or pulled from GPU1), NIXL transfers when nixl is importable, and optionally
pure prefill time (prefill.py). `nccl_env` sets NCCL variables for the workers; the JSON records them and what
NCCL reported it chose (transport, P2P channels, chunk size, buffer registration).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from suite.kvprofile.analysis import PATTERNS, gbps, op_sizes, summarize, timing_stats
from suite.kvprofile.fmt import si_bytes, table
from suite.kvprofile.sizing import kv_size
from suite.modelcfg import ModelConfigError, load

SCHEMA = "pdsuite.kvprobe/1"
SLEEP_CYCLES = 1_000_000  # ~0.5 ms at H100 clocks: longer than host skew after a barrier
SENT, UNSENT = 7, 0  # fill values: the receiver checks the bytes really arrived
COPY_METHODS = ("copy_", "memcpy_peer_push", "memcpy_peer_pull")
ENV_PREFIXES = ("NCCL_", "TORCH_NCCL_")  # what --nccl-env may set
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class ProbeError(RuntimeError):
    """The probe cannot run as asked (no torch, bad option, worker failure, timeout)."""


@dataclass(frozen=True)
class ProbeOptions:
    model: str = "llama-3.1-8b"
    kv_dtype: str = "auto"
    tokens: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
    patterns: tuple[str, ...] = PATTERNS
    block_tokens: int = 16
    max_ops: int = 4096
    iters: int = 30
    warmup: int = 5
    copy_mib: tuple[int, ...] = (64, 256, 1024)
    device: str = "auto"
    prefill: bool = False
    prefill_tokens: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
    prefill_iters: int = 5
    nixl: bool = True
    nixl_point_s: float = 20.0  # NIXL: stop a point after this many seconds of samples (marked truncated)
    nixl_devices: tuple[str, str] = ("cuda:0", "cuda:1")  # P's and D's GPU; ("cuda:0", "cuda:0"): one GPU
    timeout_s: float = 900.0
    nixl_log_dir: str | None = None  # keep the NIXL children's logs (UCX output included) here
    nccl_env: tuple[tuple[str, str], ...] = ()  # (name, value) set for the workers, e.g. NCCL_P2P_NVL_CHUNKSIZE
    stream_repeats: int = 0  # > 0: also K coalesced sends back to back per point (no ack subtraction needed)
    copy_methods: tuple[str, ...] = ("copy_",)
    extra: dict = field(default_factory=dict)


def parse_env(items) -> tuple[tuple[str, str], ...]:
    """`KEY=VAL` strings -> ((KEY, VAL), ...); only NCCL_* / TORCH_NCCL_* names (what the probe is about)."""
    out = []
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.fullmatch(name) or not name.startswith(ENV_PREFIXES):
            raise ProbeError(f"--nccl-env wants NAME=VALUE with NAME starting NCCL_ or TORCH_NCCL_, got {item!r}")
        out.append((name, value.strip()))
    return tuple(out)


def _torch():
    try:
        import torch
    except ImportError:
        raise ProbeError("kvprobe needs torch: pip install '.[probe]' (or run `make kvprobe` in the vLLM image)") \
            from None
    return torch


def _pick_device(torch, want: str) -> str:
    if want not in ("auto", "cuda", "cpu"):
        raise ProbeError(f"--device must be auto, cuda or cpu, got {want!r}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want == "cuda" and n < 2:
        raise ProbeError(f"--device cuda needs 2 visible GPUs, found {n}")
    return "cuda" if want == "cuda" or (want == "auto" and n >= 2) else "cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- worker (one per rank) ----------------------------------------------------------------------------
def _worker(rank: int, opts: ProbeOptions, device: str, port: int, out_path: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # serialising P2P with the barrier is what we want (one transfer at a time): silence torch's warning
    os.environ.setdefault("TORCH_NCCL_SHOW_EAGER_INIT_P2P_SERIALIZATION_WARNING", "false")
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    dev = torch.device(f"cuda:{rank}" if cuda else "cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=2,
                            timeout=dt.timedelta(seconds=max(60, opts.timeout_s)),
                            **({"device_id": dev} if cuda else {}))
    try:
        rows = _run_patterns(torch, dist, rank, opts, dev, cuda)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows))


def _run_patterns(torch, dist, rank: int, opts: ProbeOptions, dev, cuda: bool) -> list[dict]:
    m = load(opts.model)
    peer = 1 - rank
    max_bytes = max(opts.tokens) * m.kv_bytes_per_token(opts.kv_dtype)
    buf = torch.full((max_bytes,), SENT if rank == 0 else UNSENT, dtype=torch.uint8, device=dev)
    ack = torch.zeros(1, dtype=torch.uint8, device=dev)
    op = dist.isend if rank == 0 else dist.irecv

    def sync():
        if cuda:
            torch.cuda.synchronize()
        dist.barrier(**({"device_ids": [rank]} if cuda else {}))
        if cuda:
            torch.cuda.synchronize()

    def post(views, sequential: bool):
        if len(views) == 1 or sequential:  # sequential: one NCCL launch per view, back to back on its stream
            return [op(v, peer) for v in views]
        return dist.batch_isend_irecv([dist.P2POp(op, v, peer) for v in views])

    def round_trip(views, sequential: bool = False) -> tuple[float, float]:
        """P: send views, wait for D's ack; D: receive, ack. Returns (seconds, host issue seconds) on P."""
        sync()
        if rank == 1:
            works = post(views, sequential)
            for w in works:
                w.wait()
            dist.send(ack, peer)
            return 0.0, 0.0
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(SLEEP_CYCLES)
            start.record()
        t0 = time.perf_counter()
        works = post(views, sequential)
        t_issue = time.perf_counter() - t0
        for w in works:
            w.wait()
        dist.recv(ack, peer)
        if cuda:
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3, t_issue
        return time.perf_counter() - t0, t_issue

    def measure(views, sequential: bool = False) -> tuple[list[float], list[float]]:
        out, issue = [], []
        for i in range(opts.warmup + opts.iters):
            t, ti = round_trip(views, sequential)
            if i >= opts.warmup:
                out.append(t)
                issue.append(ti)
        return out, issue

    ping, _ = measure([buf[:1]])
    coalesced_sizes = {t: sum(op_sizes(m, t, "coalesced", opts.block_tokens, opts.kv_dtype)) for t in opts.tokens}
    ack_s = statistics.median(ping) / 2  # one-way latency of a 1-byte message
    # subtract it only under CUDA events; on a busy CPU box the ping-pong is scheduler noise (ms), not a link
    sub_s = ack_s if cuda else 0.0
    rows = [{"pattern": "ack", "tokens": 0, "bytes": 1, "ops": 1, "one_way_ms": ack_s * 1e3,
             "subtracted_ms": sub_s * 1e3}] if rank == 0 else []
    for pattern in opts.patterns:
        for tokens in opts.tokens:
            sizes = op_sizes(m, tokens, pattern, opts.block_tokens, opts.kv_dtype)
            row = {"pattern": pattern, "tokens": tokens, "bytes": sum(sizes), "ops": len(sizes)}
            if len(sizes) > opts.max_ops:
                rows.append({**row, "skipped": f"{len(sizes)} ops > --max-ops {opts.max_ops}"})
                continue
            views, off = [], 0
            for n in sizes:
                views.append(buf[off:off + n])
                off += n
            if rank == 1:
                buf[:off].fill_(UNSENT)
            samples, issue_s = measure(views)
            if rank == 1:
                got = {int(views[0][0]), int(views[-1][-1])}
                if got != {SENT}:
                    raise ProbeError(f"{pattern} {tokens} tokens: received bytes {got}, expected {SENT}")
                continue
            st = timing_stats([max(t - sub_s, 1e-9) for t in samples])
            rows.append({**row, **st, "gbps": gbps(row["bytes"], st["median_ms"]),
                         "rtt_median_ms": statistics.median(samples) * 1e3,
                         "issue_ms": statistics.median(issue_s) * 1e3})
    k = opts.stream_repeats
    for tokens in (opts.tokens if k > 0 and "coalesced" in opts.patterns else ()):
        n = coalesced_sizes[tokens]
        if rank == 1:
            buf[:n].fill_(UNSENT)
        samples, _ = measure([buf[:n]] * k, sequential=True)
        if rank == 1:
            if {int(buf[0]), int(buf[n - 1])} != {SENT}:
                raise ProbeError(f"stream {tokens} tokens: the bytes did not arrive")
            continue
        # per send: (round trip - one ack) / K; the ack's error shrinks K-fold
        st = timing_stats([max((t - sub_s) / k, 1e-9) for t in samples])
        rows.append({"pattern": "stream", "tokens": tokens, "bytes": n, "ops": k, **st,
                     "gbps": gbps(n, st["median_ms"])})
    return rows


def _nccl_report(log_text: str) -> dict:
    """What NCCL said it chose (NCCL_DEBUG=INFO of one rank): P2P transport, channels to the peer, chunk size,
    whether user buffers were registered (zero-copy P2P)."""
    via = re.findall(r"Channel (\d+)/(\d+) : \d+\[\d+\] -> \d+\[\d+\] via (\S+)", log_text)
    p2p = sorted({int(c) for c, conn, _ in via if conn == "1"})  # connIndex 1 carries send/recv
    chunk = re.search(r"P2P Chunksize set to (\d+)", log_text)
    version = re.search(r"NCCL version (\S+)", log_text)
    return {
        "version": version.group(1) if version else None,
        "p2p_transports": sorted({t for _, conn, t in via if conn == "1"}),
        "p2p_channels": len(p2p),
        "p2p_chunksize": int(chunk.group(1)) if chunk else None,
        "buffer_registrations": len(re.findall(r"IPC (?:register|reuse)", log_text)),
        "warnings": [ln.strip() for ln in log_text.splitlines() if " WARN " in ln][:10],
    }


def _run_workers(opts: ProbeOptions, device: str) -> list[dict]:
    import torch.multiprocessing as mp

    env_set = dict(opts.nccl_env)
    if device == "cpu" and "GLOO_SOCKET_IFNAME" not in os.environ:
        env_set["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only; the hostname may resolve to another interface
    with tempfile.TemporaryDirectory(prefix="kvprobe-") as tmp:
        if device == "cuda" and "NCCL_DEBUG" not in os.environ and "NCCL_DEBUG" not in env_set:
            # INFO to a file (not the console): the JSON then says which transport/channels NCCL really used
            env_set.update(NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS="INIT,P2P,REG",
                           NCCL_DEBUG_FILE=os.path.join(tmp, "nccl.%p.log"))
        saved = {k: os.environ.get(k) for k in env_set}
        os.environ.update(env_set)
        out = os.path.join(tmp, "rows.json")
        ctx = mp.start_processes(_worker, args=(opts, device, _free_port(), out), nprocs=2, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + opts.timeout_s
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise ProbeError(f"probe workers still running after {opts.timeout_s:.0f} s; stopped them")
        except mp.ProcessRaisedException as e:
            last = str(e).strip().splitlines()[-1]
            raise ProbeError(f"probe worker failed: {last}") from None
        except mp.ProcessExitedException as e:
            raise ProbeError(f"probe worker died: {e}") from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
                    p.join(5)
                    if p.is_alive():
                        p.kill()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        rows = json.loads(Path(out).read_text())
        logs = sorted(Path(tmp).glob("nccl.*.log"))
        if logs:  # one log per rank; the sender's (rank 0) names its channels "0[..] -> 1[..]"
            texts = [p.read_text(errors="replace") for p in logs]
            text = next((t for t in texts if re.search(r": 0\[\d+\] -> 1\[", t)), texts[0])
            rows.append({"pattern": "nccl_report", **_nccl_report(text)})
        return rows


# ---- same-process baselines ---------------------------------------------------------------------------
def _cudart():
    """The CUDA runtime torch loaded (dlopen by soname returns the loaded copy), for cudaMemcpyPeerAsync."""
    import ctypes

    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        with contextlib.suppress(OSError):
            rt = ctypes.CDLL(name)
            rt.cudaMemcpyPeerAsync.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                               ctypes.c_size_t, ctypes.c_void_p]
            return rt
    raise ProbeError("cannot load libcudart for the memcpy_peer copy baselines")


def _copy_once(torch, method: str, src, dst, rt) -> float:
    """One GPU0 -> GPU1 copy timed with CUDA events on the stream that runs it."""
    torch.cuda.synchronize(0)
    torch.cuda.synchronize(1)
    on = 1 if method == "memcpy_peer_pull" else 0  # torch's copy_ runs on the source device's current stream
    with torch.cuda.device(on):
        stream = torch.cuda.current_stream(on)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        if method == "copy_":
            dst.copy_(src)
        else:
            err = rt.cudaMemcpyPeerAsync(dst.data_ptr(), 1, src.data_ptr(), 0, src.numel(), stream.cuda_stream)
            if err:
                raise ProbeError(f"cudaMemcpyPeerAsync failed with CUDA error {err}")
        end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def copy_bandwidth(torch, device: str, mib: tuple[int, ...], iters: int, warmup: int,
                   methods: tuple[str, ...] = ("copy_",)) -> list[dict]:
    """GPU0 -> GPU1 copy (peer copy over NVLink/PCIe) per method, or a CPU memcpy on CPU. Methods: torch `copy_`
    (cudaMemcpyAsync on GPU0's stream), cudaMemcpyPeerAsync on GPU0's stream (push) or GPU1's (pull)."""
    bad = [m for m in methods if m not in COPY_METHODS]
    if bad or not methods:
        raise ProbeError(f"copy methods must be among {', '.join(COPY_METHODS)}, got {', '.join(bad) or 'none'}")
    cuda = device == "cuda"
    methods = methods if cuda else ("copy_",)  # peer memcpy means nothing on CPU
    rt, rt_error = None, None
    if any(m != "copy_" for m in methods):
        try:
            rt = _cudart()
        except ProbeError as e:  # a baseline we cannot run is noted, not fatal: copy_ still measures the link
            rt_error = str(e)
    rows = []
    for size in mib:
        n = size * 2**20
        src = torch.ones(n, dtype=torch.uint8, device="cuda:0" if cuda else "cpu")
        dst = torch.empty(n, dtype=torch.uint8, device="cuda:1" if cuda else "cpu")
        for method in methods:
            if method != "copy_" and rt is None:
                rows.append({"mib": size, "bytes": n, "method": method, "skipped": rt_error})
                continue
            samples = []
            for i in range(warmup + iters):
                if cuda:
                    t = _copy_once(torch, method, src, dst, rt)
                else:
                    t0 = time.perf_counter()
                    dst.copy_(src)
                    t = time.perf_counter() - t0
                if i >= warmup:
                    samples.append(t)
            st = timing_stats(samples)
            rows.append({"mib": size, "bytes": n, "method": method, **st, "gbps": gbps(n, st["median_ms"])})
        del src, dst
    return rows


def best_copy(rows: list[dict]) -> list[dict]:
    """Per size, the fastest method's row: the copy peak the NCCL sends are judged against."""
    best: dict[int, dict] = {}
    for r in rows:
        if "gbps" not in r:
            continue
        if r["bytes"] not in best or r["gbps"] > best[r["bytes"]]["gbps"]:
            best[r["bytes"]] = r
    return [best[b] for b in sorted(best)]


def _environment(torch, device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
           "cpu_count": os.cpu_count(), "device": device,
           "env": {k: v for k, v in os.environ.items() if k.startswith((*ENV_PREFIXES, "UCX_", "CUDA_VISIBLE"))}}
    if device == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        env["cuda"] = torch.version.cuda
        env["peer_access_0_1"] = torch.cuda.can_device_access_peer(0, 1)
        with contextlib.suppress(Exception):
            env["nvidia_smi_topo"] = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True,
                                                    timeout=20).stdout
    return env


def run_probe(opts: ProbeOptions) -> dict:
    for p in opts.patterns:
        if p not in PATTERNS:
            raise ProbeError(f"unknown pattern {p!r}; known: {', '.join(PATTERNS)}")
    try:
        model = load(opts.model)
        size = kv_size(model, opts.kv_dtype, opts.tokens)
    except ModelConfigError as e:
        raise ProbeError(str(e)) from None
    if opts.stream_repeats < 0:
        raise ProbeError(f"--stream-repeats must be >= 0, got {opts.stream_repeats}")
    bad = [m for m in opts.copy_methods if m not in COPY_METHODS]
    if bad or not opts.copy_methods:
        raise ProbeError(f"--copy-methods must be among {', '.join(COPY_METHODS)}, got {', '.join(bad) or 'none'}")
    parse_env(f"{k}={v}" for k, v in opts.nccl_env)  # same check as the CLI's, for API callers
    torch = _torch()
    device = _pick_device(torch, opts.device)
    started = dt.datetime.now(dt.UTC)
    result = {
        "schema": SCHEMA, "created": started.isoformat(timespec="seconds"), "command": sys.argv,
        "device": device, "backend": "nccl" if device == "cuda" else "gloo",
        "timer": "cuda_event" if device == "cuda" else "perf_counter",
        "environment": _environment(torch, device),
        "nccl_env": dict(opts.nccl_env),
        "options": {k: v for k, v in asdict(opts).items() if k != "extra"},
        "model": size.to_dict(),
    }
    rows = _run_workers(opts, device)
    ack = next(r for r in rows if r["pattern"] == "ack")
    result["ack_one_way_ms"], result["ack_subtracted_ms"] = ack["one_way_ms"], ack["subtracted_ms"]
    result["p2p"] = [r for r in rows if r["pattern"] in PATTERNS]
    result["p2p_stream"] = [r for r in rows if r["pattern"] == "stream"]
    result["nccl_report"] = next(({k: v for k, v in r.items() if k != "pattern"} for r in rows
                                  if r["pattern"] == "nccl_report"), None)
    copies = copy_bandwidth(torch, device, opts.copy_mib, max(opts.iters, 5), opts.warmup, opts.copy_methods)
    result["copy"] = best_copy(copies)  # per size the fastest method: the honest peak
    result["copy_all"] = copies
    if opts.nixl:
        from suite.kvprofile.nixlprobe import nixl_probe
        result["nixl"] = nixl_probe(torch, model, opts, device)
    if opts.prefill:
        from suite.kvprofile.prefill import time_prefill
        try:
            result["prefill"] = time_prefill(torch, model, opts.prefill_tokens, device, iters=opts.prefill_iters)
        except ValueError as e:
            result["prefill"] = {"skipped": str(e)}
    result["summary"] = summarize(result)
    result["elapsed_s"] = (dt.datetime.now(dt.UTC) - started).total_seconds()
    return result


# ---- output -------------------------------------------------------------------------------------------
def render(r: dict) -> str:
    env = r["environment"]
    where = ", ".join(env.get("gpus") or [f"CPU x{env['cpu_count']}"])
    out = [f"kvprobe {r['created']}: {r['model']['model']} ({r['model']['bytes_per_token']:,} B/token), "
           f"{r['backend']} on {where}, torch {env['torch']}" + (f", NCCL {env['nccl']}" if "nccl" in env else ""),
           "", "copy baseline (GPU0 -> GPU1)" if r["device"] == "cuda" else "copy baseline (CPU memcpy)",
           table(["MiB", "method", "median ms", "p99 ms", "GB/s"],
                 [[c["mib"], c.get("method", "copy_"), f"{c['median_ms']:.3f}", f"{c['p99_ms']:.3f}",
                   f"{c['gbps']:.1f}"] if "gbps" in c else [c["mib"], c["method"], "-", "-", c.get("skipped", "")]
                  for c in r.get("copy_all") or r["copy"]]),
           "", f"point-to-point (P -> D), one request's KV: round trip to D's 1-byte ack minus "
               f"{r['ack_subtracted_ms'] * 1e3:.1f} us (the ack's one-way latency; 0 on CPU)"]
    rows = []
    for p in r["p2p"]:
        if "skipped" in p:
            rows.append([p["pattern"], p["tokens"], si_bytes(p["bytes"]), p["ops"], "-", "-", "-", p["skipped"]])
        else:
            rows.append([p["pattern"], p["tokens"], si_bytes(p["bytes"]), p["ops"], f"{p['median_ms']:.3f}",
                         f"{p['p99_ms']:.3f}", f"{p['gbps']:.1f}", f"issue {p['issue_ms']:.3f} ms"])
    out.append(table(["pattern", "tokens", "bytes", "ops", "median ms", "p99 ms", "GB/s", "note"], rows))
    if r.get("p2p_stream"):
        out += ["", "coalesced sends back to back (ops = K sends, one ack): ms and GB/s per send",
                table(["tokens", "bytes", "K", "median ms", "p99 ms", "GB/s"],
                      [[x["tokens"], si_bytes(x["bytes"]), x["ops"], f"{x['median_ms']:.3f}", f"{x['p99_ms']:.3f}",
                        f"{x['gbps']:.1f}"] for x in r["p2p_stream"]])]
    nr = r.get("nccl_report")
    if nr:
        out += ["", f"NCCL: P2P via {', '.join(nr['p2p_transports']) or '?'}, {nr['p2p_channels']} channels to the "
                    f"peer, chunk {nr['p2p_chunksize']} B, {nr['buffer_registrations']} buffer registrations"
                    + (f"; set: {' '.join(f'{k}={v}' for k, v in r['nccl_env'].items())}" if r.get("nccl_env") else "")]
    nixl = r.get("nixl")
    if nixl:
        out += ["", f"NIXL: {nixl.get('note', '')}"]
        if nixl.get("ucx_transports"):
            out.append(f"UCX transports for the reads: {', '.join(nixl['ucx_transports'])}")
        if nixl.get("results"):
            vs = {v["tokens"]: v for v in r["summary"].get("nixl_coalesced_vs_copy") or []}
            out.append(table(["pattern", "tokens", "bytes", "descs", "median ms", "p99 ms", "GB/s", "% copy same size",
                              "% copy peak", "data", "note"], [_nixl_row(x, vs) for x in nixl["results"]]))
        if nixl.get("warning"):
            out += [f"WARNING: {nixl['warning']}"]
    pf = r.get("prefill")
    if pf and pf.get("points"):
        out += ["", f"pure prefill ({pf['method']})",
                table(["tokens", "median ms", "p99 ms", "TFLOP/s"],
                      [[x["tokens"], f"{x['median_ms']:.2f}", f"{x['p99_ms']:.2f}", f"{x['tflops']:.0f}"]
                       for x in pf["points"]])]
    s = r["summary"]
    if s["copy_peak_gbps"]:
        verdict = {True: "meets", False: "MISSES", None: "n/a for"}[s["coalesced_big_meets_target"]]
        low = s["coalesced_big_min_ratio_peak"]
        out += ["", f"copy peak {s['copy_peak_gbps']:.1f} GB/s; coalesced >= 256 MB: worst "
                    f"{'-' if low is None else f'{low:.1%}'} of copy peak ({verdict} the 95% target)"]
    fit = s.get("link_fit_coalesced")
    if fit:
        out.append(f"coalesced fit: {fit['latency_us']:.1f} us + bytes / {fit['bandwidth_gbps']:.1f} GB/s")
    if s["copy_peak_gbps"] and s.get("nixl_coalesced_vs_copy"):
        verdict = {True: "meets", False: "MISSES", None: "n/a for"}[s["nixl_big_meets_target"]]
        low, same = s["nixl_big_min_ratio_peak"], s["nixl_big_min_ratio_same_size"]
        out.append(f"NIXL coalesced >= {s['target']['min_bytes'] / 1e6:.0f} MB: worst "
                   f"{'-' if low is None else f'{low:.1%}'} of copy peak, "
                   f"{'-' if same is None else f'{same:.1%}'} of the same-size copy ({verdict} the "
                   f"{s['target']['ratio']:.0%} target)")
        nfit = s.get("link_fit_nixl_coalesced")
        if nfit:
            out.append(f"NIXL coalesced fit: {nfit['latency_us']:.1f} us + bytes / {nfit['bandwidth_gbps']:.1f} GB/s")
    return "\n".join(out)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _nixl_row(x: dict, vs: dict) -> list:
    head = [x["pattern"], x["tokens"], si_bytes(x["bytes"]), x["ops"]]
    if "median_ms" not in x:
        return [*head, "-", "-", "-", "-", "-", "-", x.get("skipped", "")]
    v = vs.get(x["tokens"]) if x["pattern"] == "coalesced" else None
    return [*head, f"{x['median_ms']:.3f}", f"{x['p99_ms']:.3f}", f"{x['gbps']:.1f}",
            _pct(v and v["ratio_same_size"]), _pct(v and v["ratio_peak"]),
            {True: "ok", False: "WRONG", None: "?"}[x.get("data_ok")],
            f"truncated: {x['n']} samples" if x.get("truncated") else ""]
