"""Why does NIXL/UCX move KV over TCP between two processes on ONE GPU? Three checks, each in fresh processes:

1. CUDA IPC itself: a tensor shared from one process to another on the same GPU (torch.multiprocessing uses
   cudaIpcGetMemHandle / cudaIpcOpenMemHandle, what UCX's cuda_ipc transport needs).
2. UCX's view: `ucx_info -d` (where the binary exists) lists the transports UCX built and found usable.
3. NIXL between two spawned processes on the same GPU (the suite's own NIXL probe, P and D both on cuda:0), once per
   UCX_TLS setting, with UCX_PROTO_INFO=y: which transport carried the reads and at what bandwidth; the UCX lines
   of both processes that name a CUDA transport are kept, and one run at UCX_LOG_LEVEL=debug says why cuda_ipc
   was (not) chosen.
4. The host: what the GPU reports about virtualisation/addressing, the GPU topology, the UCX modules the wheel
   bundles, /dev/shm, and the ptrace scope (UCX's cma and cuda_ipc both depend on the processes seeing each other).

    python bench/ucx_one_gpu.py --out results/ucx-one-gpu.json                       # UCX's default (auto)
    python bench/ucx_one_gpu.py --get-zcopy y --tls "(unset)" --no-debug --out ...   # as the suite's engines run

Prints one JSON document; the docs quote it (docs/kv-transfer.md, "One GPU").
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IPC_CHILD = """
import torch, torch.multiprocessing as mp
def child(q, r):
    t = q.get()
    r.put(float(t.sum().item()))
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    q, r = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=child, args=(q, r))
    p.start()
    x = torch.ones(1 << 20, device="cuda:0")
    q.put(x)
    print("sum", r.get(timeout=60))
    p.join(30)
"""

NIXL_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
import torch
from suite.kvprofile.nixlprobe import nixl_probe
from suite.kvprofile.probe import ProbeOptions
from suite.modelcfg import load as load_model
opts = ProbeOptions(tokens={tokens!r}, iters=5, warmup=2, nixl_point_s=8.0, timeout_s=120.0,
                    nixl_devices=("cuda:0", "cuda:0"), nixl_log_dir={logs!r})
r = nixl_probe(torch, load_model("llama-3.1-8b"), opts, "cuda")
print("NIXL_JSON " + json.dumps(r))
"""


def run(cmd: list[str], env: dict | None = None, timeout: float = 180) -> dict:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"rc": None, "error": f"timed out after {timeout:.0f}s"}
    return {"rc": p.returncode, "stdout_tail": p.stdout.splitlines()[-15:], "stderr_tail": p.stderr.splitlines()[-15:],
            "stdout": p.stdout}


UCX_LINE = re.compile(r"cuda_ipc|cuda_copy|cuda|tcp/|sysv|posix|cma|unreachable|not reachable|ucp_get|rndv|"
                      r"\bWARN\b|\bERROR\b", re.I)


def ucx_lines(log_dir: Path, limit: int = 80) -> dict:
    """Per child (P, D): the UCX/NIXL lines of its log that bear on the transport choice (bounded)."""
    out = {}
    for f in sorted(log_dir.glob("nixl-*.log")):
        hits = [ln.rstrip()[:300] for ln in f.read_text(errors="replace").splitlines() if UCX_LINE.search(ln)]
        out[f.stem] = {"lines": len(hits), "head": hits[:limit // 2], "tail": hits[-limit // 2:]}
    return out


def host_facts() -> dict:
    facts: dict = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = run([smi, "-q"]).get("stdout", "")
        facts["nvidia_smi_q"] = [ln.strip() for ln in q.splitlines()
                                 if re.search(r"Virtualization|Host VGPU|Addressing|MIG|Persistence|Product Name|"
                                              r"Driver Version|CUDA Version|Compute Mode|Confidential", ln)]
        facts["topo"] = run([smi, "topo", "-m"]).get("stdout", "").splitlines()[:12]
    libs = sorted({os.path.basename(p) for p in glob.glob(os.path.join(sys.prefix, "**", "libuct_*.so*"),
                                                           recursive=True)})
    for path in sys.path:
        libs += sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "nixl*.libs", "ucx", "*.so*")))
    facts["ucx_modules"] = sorted(set(libs))
    for name, path in {"ptrace_scope": "/proc/sys/kernel/yama/ptrace_scope",
                       "container": "/proc/1/cgroup"}.items():
        try:
            facts[name] = Path(path).read_text().strip()[:300]
        except OSError as e:
            facts[name] = f"unreadable: {e}"
    facts["dockerenv"] = os.path.exists("/.dockerenv")
    with contextlib.suppress(OSError):
        st = os.statvfs("/dev/shm")
        facts["dev_shm_gb"] = round(st.f_blocks * st.f_frsize / 1e9, 2)
    facts["ulimit_memlock"] = run(["bash", "-c", "ulimit -l"]).get("stdout", "").strip()
    facts["cap_eff"] = next((ln.split()[1] for ln in Path("/proc/self/status").read_text().splitlines()
                             if ln.startswith("CapEff")), None)
    return facts


def nixl_run(tls: str, tokens: tuple, level: str, tmp: Path, get_zcopy: str) -> dict:
    logs = tmp / f"logs-{re.sub(r'[^A-Za-z0-9]+', '_', tls)}-{level}"
    env = dict(os.environ, UCX_PROTO_INFO="y", UCX_LOG_LEVEL=level, UCX_CUDA_IPC_ENABLE_GET_ZCOPY=get_zcopy)
    if tls != "(unset)":
        env["UCX_TLS"] = tls
    r = run([sys.executable, "-c", NIXL_CHILD.format(root=str(ROOT), tokens=tokens, logs=str(logs))], env=env,
            timeout=240)
    line = next((ln for ln in r.get("stdout", "").splitlines() if ln.startswith("NIXL_JSON ")), None)
    probe = json.loads(line[len("NIXL_JSON "):]) if line else None
    rows = [{k: x.get(k) for k in ("pattern", "tokens", "bytes", "gbps", "median_ms", "note") if k in x}
            for x in (probe or {}).get("results", [])]
    return {"rc": r.get("rc"), "ucx_log_level": level, "get_zcopy": get_zcopy,
            "transports": (probe or {}).get("ucx_transports"),
            "warning": (probe or {}).get("warning"), "note": (probe or {}).get("note"), "results": rows,
            "stderr_tail": r.get("stderr_tail", [])[-6:], "ucx_lines": ucx_lines(logs) if logs.exists() else {}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tls", nargs="*",
                    default=["(unset)", "all", "cuda_ipc,cuda_copy,sm,self,tcp", "cuda_ipc,cuda_copy,self"])
    ap.add_argument("--get-zcopy", choices=("auto", "y", "n"), default="auto",
                    help="UCX_CUDA_IPC_ENABLE_GET_ZCOPY: auto = UCX's default (cuda_ipc reads off without NVLink)")
    ap.add_argument("--no-debug", dest="debug", action="store_false", help="skip the UCX_LOG_LEVEL=debug run")
    a = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:  # spawn re-imports __main__: the child must live in a file
        script = Path(tmp) / "cuda_ipc_check.py"
        script.write_text(IPC_CHILD)
        ipc = run([sys.executable, str(script)])
    out["cuda_ipc_torch"] = {"ok": ipc.get("rc") == 0 and "sum 1048576.0" in ipc.get("stdout", ""),
                             **{k: v for k, v in ipc.items() if k != "stdout"}}
    ucx_info = shutil.which("ucx_info")
    if ucx_info:
        d = run([ucx_info, "-d"])
        out["ucx_info_d"] = [ln for ln in d.get("stdout", "").splitlines() if "Transport:" in ln or "Device:" in ln]
    else:
        out["ucx_info_d"] = "ucx_info not on PATH (the nixl wheel bundles UCX libraries only)"
    out["host"] = host_facts()
    out["nixl"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tls in a.tls:
            out["nixl"][tls] = nixl_run(tls, (512, 2048, 8192), "info", Path(tmp), a.get_zcopy)
        if a.debug:  # one small point, every UCX decision logged: why cuda_ipc was or was not taken
            out["nixl_debug"] = nixl_run("(unset)", (512,), "debug", Path(tmp), a.get_zcopy)
    text = json.dumps(out, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
