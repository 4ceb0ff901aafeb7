"""The link probe behind `pdsuite kvprobe` (needs torch).

Two processes (P = rank 0 sends, D = rank 1 receives) move one request's KV with torch.distributed: NCCL between
two GPUs, or gloo between two CPU processes on loopback (same code; what the tests run).

Timing is taken on P alone, so one clock covers the whole transfer: P sends, D answers with a 1-byte ack once
everything arrived, and the transfer time is that round trip minus half a 1-byte ping-pong (the ack's own
latency). On GPUs P's stream first sleeps (~0.5 ms), so D's receive is already posted when P's clock starts (host
skew after the barrier is not counted, and NCCL cannot pre-stage data in D's buffers before D starts). Clocks:
CUDA events on GPU, perf_counter on CPU. Plus a same-process GPU-to-GPU copy baseline, NIXL transfers when nixl
is importable, and optionally pure prefill time (prefill.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
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
    timeout_s: float = 900.0
    extra: dict = field(default_factory=dict)


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

    def round_trip(views) -> tuple[float, float]:
        """P: send views, wait for D's ack; D: receive, ack. Returns (seconds, host issue seconds) on P."""
        sync()
        if rank == 1:
            works = ([op(views[0], peer)] if len(views) == 1 else
                     dist.batch_isend_irecv([dist.P2POp(op, v, peer) for v in views]))
            for w in works:
                w.wait()
            dist.send(ack, peer)
            return 0.0, 0.0
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(SLEEP_CYCLES)
            start.record()
        t0 = time.perf_counter()
        works = ([op(views[0], peer)] if len(views) == 1 else
                 dist.batch_isend_irecv([dist.P2POp(op, v, peer) for v in views]))
        t_issue = time.perf_counter() - t0
        for w in works:
            w.wait()
        dist.recv(ack, peer)
        if cuda:
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3, t_issue
        return time.perf_counter() - t0, t_issue

    def measure(views) -> tuple[list[float], list[float]]:
        out, issue = [], []
        for i in range(opts.warmup + opts.iters):
            t, ti = round_trip(views)
            if i >= opts.warmup:
                out.append(t)
                issue.append(ti)
        return out, issue

    ping, _ = measure([buf[:1]])
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
    return rows


def _run_workers(opts: ProbeOptions, device: str) -> list[dict]:
    import torch.multiprocessing as mp

    env_set = {}
    if device == "cpu" and "GLOO_SOCKET_IFNAME" not in os.environ:
        env_set["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only; the hostname may resolve to another interface
    os.environ.update(env_set)
    with tempfile.TemporaryDirectory(prefix="kvprobe-") as tmp:
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
            for k in env_set:
                os.environ.pop(k, None)
        return json.loads(Path(out).read_text())


# ---- same-process baselines ---------------------------------------------------------------------------
def copy_bandwidth(torch, device: str, mib: tuple[int, ...], iters: int, warmup: int) -> list[dict]:
    """GPU0 -> GPU1 tensor copy (peer copy over NVLink/PCIe), or a CPU memcpy on CPU; CUDA events on GPU0."""
    rows = []
    for size in mib:
        n = size * 2**20
        src = torch.ones(n, dtype=torch.uint8, device="cuda:0" if device == "cuda" else "cpu")
        dst = torch.empty(n, dtype=torch.uint8, device="cuda:1" if device == "cuda" else "cpu")
        samples = []
        for i in range(warmup + iters):
            if device == "cuda":
                torch.cuda.synchronize(0)
                torch.cuda.synchronize(1)
                with torch.cuda.device(0):  # torch runs peer copies on the source device's current stream
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    dst.copy_(src)
                    end.record()
                end.synchronize()
                t = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                dst.copy_(src)
                t = time.perf_counter() - t0
            if i >= warmup:
                samples.append(t)
        st = timing_stats(samples)
        rows.append({"mib": size, "bytes": n, **st, "gbps": gbps(n, st["median_ms"])})
        del src, dst
    return rows


def _environment(torch, device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
           "cpu_count": os.cpu_count(), "device": device,
           "env": {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "UCX_", "CUDA_VISIBLE"))}}
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
    torch = _torch()
    device = _pick_device(torch, opts.device)
    started = dt.datetime.now(dt.UTC)
    result = {
        "schema": SCHEMA, "created": started.isoformat(timespec="seconds"), "command": sys.argv,
        "device": device, "backend": "nccl" if device == "cuda" else "gloo",
        "timer": "cuda_event" if device == "cuda" else "perf_counter",
        "environment": _environment(torch, device),
        "options": {k: v for k, v in asdict(opts).items() if k != "extra"},
        "model": size.to_dict(),
    }
    rows = _run_workers(opts, device)
    ack = next(r for r in rows if r["pattern"] == "ack")
    result["ack_one_way_ms"], result["ack_subtracted_ms"] = ack["one_way_ms"], ack["subtracted_ms"]
    result["p2p"] = [r for r in rows if r["pattern"] != "ack"]
    result["copy"] = copy_bandwidth(torch, device, opts.copy_mib, max(opts.iters, 5), opts.warmup)
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
           table(["MiB", "median ms", "p99 ms", "GB/s"],
                 [[c["mib"], f"{c['median_ms']:.3f}", f"{c['p99_ms']:.3f}", f"{c['gbps']:.1f}"] for c in r["copy"]]),
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
    nixl = r.get("nixl")
    if nixl:
        out += ["", f"NIXL: {nixl.get('note', '')}"]
        if nixl.get("results"):
            out.append(table(["pattern", "tokens", "descs", "median ms", "p99 ms", "GB/s"],
                             [[x["pattern"], x["tokens"], x["ops"], f"{x['median_ms']:.3f}", f"{x['p99_ms']:.3f}",
                               f"{x['gbps']:.1f}"] for x in nixl["results"] if "median_ms" in x]))
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
    return "\n".join(out)
