#!/usr/bin/env python3
"""Offline install of an engine (vLLM + its router + NIXL) and the suite for a GPU host without registry access.

Standard library only, so the `install` step runs on a bare target host with nothing but its Python.

    wheelhouse.py lock    --out locks/X.txt [--engine vllm==0.26.0 ...]   # on a host with registry access
    wheelhouse.py build   --lock locks/X.txt --out WHEELS                  # download + verify sha256 (pip)
    wheelhouse.py split   WHEELS --out CHUNKS [--chunk-bytes 60000000]     # tar, cut into pieces, manifest
    wheelhouse.py install CHUNKS --prefix PREFIX                           # on the target: verify, join, install

The lock list is a pip requirements file, one `name==version --hash=sha256:...` per line, with the target in its
header (`# target-python:`, `# target-platform:`); pip itself checks every hash (`--require-hashes`). Packages the
target already has (torch and its CUDA libraries on a GPU image) are named in `# provided:` and left out. The
install step puts everything under PREFIX with `pip install --target` and writes PREFIX/env.sh (PATH, PYTHONPATH).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path

CHUNK_BYTES = 60_000_000  # a size-limited transfer path (e.g. a 64 MiB upload) carries one piece at a time
MANIFEST = "wheelhouse.parts.json"
# pip matches platform tags exactly: name every manylinux level a wheel may carry (incl. the legacy aliases)
PLATFORMS = [*(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)), "manylinux2014_x86_64",
             "manylinux1_x86_64", "linux_x86_64"]
SUMS = "SHA256SUMS"
LINE = re.compile(r"^([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)((?:\s+--hash=sha256:[0-9a-f]{64})+)\s*$")


class WheelhouseError(RuntimeError):
    """One clear line for the user."""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- lock list -------------------------------------------------------------------------------------------------
def read_lock(path: Path) -> tuple[dict[str, list[str]], dict[str, tuple[str, list[str]]]]:
    """(header fields, {name: (version, [sha256...])}). Raises WheelhouseError on any malformed line."""
    if not path.is_file():
        raise WheelhouseError(f"{path}: no such lock list")
    header: dict[str, list[str]] = {}
    pins: dict[str, tuple[str, list[str]]] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].strip().partition(":")
            if sep and key.strip().startswith(("target-", "provided", "engine")):
                header.setdefault(key.strip(), []).extend(value.split())
            continue
        m = LINE.match(line)
        if not m:
            raise WheelhouseError(f"{path}:{n}: not `name==version --hash=sha256:<64 hex>`: {line[:80]}")
        name = norm(m.group(1))
        if name in pins:
            raise WheelhouseError(f"{path}:{n}: {name} is pinned twice")
        pins[name] = (m.group(2), re.findall(r"sha256:([0-9a-f]{64})", m.group(3)))
    for key in ("target-python", "target-platform"):
        if not header.get(key):
            raise WheelhouseError(f"{path}: header line `# {key}: ...` missing")
    provided = {norm(p.split("==")[0]) for p in header.get("provided", [])}
    both = sorted(provided & set(pins))
    if both:
        raise WheelhouseError(f"{path}: {both[0]} is both provided by the target and pinned")
    return header, pins


def pip_target_args(header: dict[str, list[str]]) -> list[str]:
    py = header["target-python"][0]
    args = ["--only-binary=:all:", "--python-version", py, "--implementation", "cp",
            "--abi", f"cp{py.replace('.', '')}"]
    for plat in header["target-platform"]:
        args += ["--platform", plat]
    return args


def cmd_lock(a: argparse.Namespace) -> None:
    """Resolve the engine and the suite's runtime for the target with pip's own resolver (a dry run with a report),
    treating `--provided` packages as installed (stub metadata), and write the lock list with sha256 hashes."""
    header = {"target-python": [a.python], "target-platform": a.platform, "engine": a.engine,
              "provided": a.provided}
    with tempfile.TemporaryDirectory() as tmp:
        env_dir = Path(tmp) / "venv"
        venv.create(env_dir, with_pip=True)
        py = env_dir / "bin" / "python"
        subprocess.run([py, "-m", "pip", "install", "-q", "-U", "pip"], check=True)
        site = Path(subprocess.check_output([py, "-c", "import site; print(site.getsitepackages()[0])"],
                                            text=True).strip())
        for spec in a.provided:  # pip sees these as installed and resolves nothing of theirs
            name, _, version = spec.partition("==")
            if version:
                d = site / f"{norm(name).replace('-', '_')}-{version}.dist-info"
                d.mkdir()
                (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
                (d / "RECORD").write_text("")
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join([*a.engine, *a.extra, *(p for p in a.provided if "==" in p)]) + "\n")
        report = Path(tmp) / "report.json"
        subprocess.run([py, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                        *pip_target_args(header), "-r", str(reqs)], check=True)
        installs = json.loads(report.read_text())["install"]
    provided = {norm(p.split("==")[0]) for p in a.provided}
    skip = provided | {norm(x) for x in a.exclude}
    lines = [f"# Offline wheelhouse lock list: {' '.join(a.engine)} + the suite's runtime, for the target below.",
             "# Generated by scripts/wheelhouse.py lock; pip checks every hash (--require-hashes).",
             f"# target-python: {a.python}", f"# target-platform: {' '.join(a.platform)}",
             f"# engine: {' '.join(a.engine)}", f"# provided: {' '.join(sorted(provided))}",
             f"# excluded: {' '.join(sorted(norm(x) for x in a.exclude))}", ""]
    for item in sorted(installs, key=lambda i: norm(i["metadata"]["name"])):
        name = norm(item["metadata"]["name"])
        if name in skip:
            continue
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if not digest:
            raise WheelhouseError(f"{name}: the index gave no sha256")
        lines.append(f"{name}=={item['metadata']['version']} --hash=sha256:{digest}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    read_lock(Path(a.out))  # what we write must read back
    print(f"wrote {a.out}: {len(lines) - 8} wheels")


# ---- build / split / install ------------------------------------------------------------------------------------
def cmd_build(a: argparse.Namespace) -> None:
    header, pins = read_lock(Path(a.lock))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet",
                    *pip_target_args(header), "-d", str(out), "-r", a.lock], check=True)
    write_sums(out, pins)
    print(f"{out}: {len(pins)} wheels, {sum(p.stat().st_size for p in out.glob('*.whl')) / 1e6:.0f} MB, verified")


def wheel_name(path: Path) -> str:
    return norm(path.name.split("-")[0])


def write_sums(folder: Path, pins: dict[str, tuple[str, list[str]]]) -> None:
    """SHA256SUMS of exactly the locked wheels; any wheel whose digest is not the lock's is an error."""
    rows, seen = [], set()
    for whl in sorted(folder.glob("*.whl")):
        name = wheel_name(whl)
        if name not in pins:
            continue  # a leftover of another lock in the same folder
        digest = sha256(whl)
        if digest not in pins[name][1]:
            raise WheelhouseError(f"{whl.name}: sha256 {digest[:12]}... is not the lock's")
        rows.append(f"{digest}  {whl.name}")
        seen.add(name)
    missing = sorted(set(pins) - seen)
    if missing:
        raise WheelhouseError(f"{folder}: {len(missing)} locked wheels missing, e.g. {missing[0]}")
    (folder / SUMS).write_text("\n".join(rows) + "\n")


def verify_sums(folder: Path) -> list[Path]:
    sums = folder / SUMS
    if not sums.is_file():
        raise WheelhouseError(f"{folder}: no {SUMS}")
    wheels = []
    for row in sums.read_text().splitlines():
        digest, _, name = row.partition("  ")
        path = folder / name
        if not path.is_file() or sha256(path) != digest:
            raise WheelhouseError(f"{path}: missing or corrupt (sha256 differs from {SUMS})")
        wheels.append(path)
    return wheels


def cmd_split(a: argparse.Namespace) -> None:
    split(Path(a.wheels), Path(a.out), a.chunk_bytes)


def split(wheels: Path, out: Path, chunk_bytes: int = CHUNK_BYTES) -> list[Path]:
    """One uncompressed tar (wheels are zips already) cut into pieces of at most chunk_bytes, plus a manifest of
    every piece's size and sha256, so each piece travels on its own and a lost or damaged one is named."""
    files = verify_sums(wheels)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("wheelhouse.tar.*"):
        old.unlink()
    tar_path = out / "wheelhouse.tar"
    with tarfile.open(tar_path, "w") as tar:
        for f in [*files, wheels / SUMS]:
            tar.add(f, arcname=f.name)
    parts = []
    with open(tar_path, "rb") as src:
        for i in range(10_000):
            block = src.read(chunk_bytes)
            if not block:
                break
            part = out / f"wheelhouse.tar.{i:03d}"
            part.write_bytes(block)
            parts.append({"name": part.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    tar_path.unlink()
    (out / MANIFEST).write_text(json.dumps({"parts": parts, "chunk_bytes": chunk_bytes}, indent=1) + "\n")
    print(f"{out}: {len(parts)} pieces of <= {chunk_bytes} bytes")
    return [out / p["name"] for p in parts]


def join(chunks: Path, into: Path) -> list[Path]:
    """Verify every piece against the manifest, reassemble, unpack, verify every wheel against SHA256SUMS."""
    manifest = chunks / MANIFEST
    if not manifest.is_file():
        raise WheelhouseError(f"{chunks}: no {MANIFEST} (made by `wheelhouse.py split`)")
    parts = json.loads(manifest.read_text())["parts"]
    tar_path = into / "wheelhouse.tar"
    into.mkdir(parents=True, exist_ok=True)
    with open(tar_path, "wb") as dst:
        for p in parts:
            path = chunks / p["name"]
            if not path.is_file():
                raise WheelhouseError(f"{path}: piece missing ({len(parts)} pieces expected)")
            data = path.read_bytes()
            if len(data) != p["bytes"] or hashlib.sha256(data).hexdigest() != p["sha256"]:
                raise WheelhouseError(f"{path}: piece damaged (size or sha256 differs from the manifest)")
            dst.write(data)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    tar_path.unlink()
    return verify_sums(into)


def cmd_install(a: argparse.Namespace) -> None:
    prefix = Path(a.prefix).resolve()
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        wheels = join(Path(a.chunks), Path(tmp))
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "-q",
                        "--no-cache-dir", "--upgrade", "--target", str(prefix), *map(str, wheels)], check=True)
    (prefix / "env.sh").write_text(f'export PATH="{prefix}/bin:$PATH"\nexport PYTHONPATH="{prefix}'
                                   '${PYTHONPATH:+:$PYTHONPATH}"\n')
    print(f"installed {len(wheels)} wheels into {prefix}; use it with `source {prefix}/env.sh` "
          f"or ENGINE_PREFIX={prefix}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lock = sub.add_parser("lock", help="resolve and write a lock list (needs the package index)")
    lock.add_argument("--out", required=True)
    lock.add_argument("--engine", nargs="+", default=["vllm==0.26.0", "vllm-router==0.1.17", "nixl==1.5.1",
                                                       "nixl-cu13==1.5.1"])
    lock.add_argument("--extra", nargs="*", default=[], help="more requirements (the suite's runtime)")
    lock.add_argument("--python", default="3.12")
    lock.add_argument("--platform", nargs="+", default=PLATFORMS)
    lock.add_argument("--provided", nargs="*", default=[], help="name[==version] the target already has")
    lock.add_argument("--exclude", nargs="*", default=[], help="optional packages left out on purpose")
    build = sub.add_parser("build", help="download the locked wheels and verify their hashes")
    build.add_argument("--lock", required=True)
    build.add_argument("--out", required=True)
    sp = sub.add_parser("split", help="cut a built wheelhouse into pieces for a size-limited transfer")
    sp.add_argument("wheels")
    sp.add_argument("--out", required=True)
    sp.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES)
    inst = sub.add_parser("install", help="on the target: verify, reassemble and install into a prefix")
    inst.add_argument("chunks")
    inst.add_argument("--prefix", required=True)
    inst.add_argument("--tmp", default=None, help="scratch folder for the reassembled wheels (needs ~2x the size)")
    a = ap.parse_args(argv)
    if getattr(a, "chunk_bytes", 1) < 1:
        ap.error("--chunk-bytes must be positive")
    try:
        {"lock": cmd_lock, "build": cmd_build, "split": cmd_split, "install": cmd_install}[a.cmd](a)
    except WheelhouseError as e:
        print(f"wheelhouse: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"wheelhouse: error: `{' '.join(map(str, e.cmd[:4]))} ...` failed with exit {e.returncode}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
