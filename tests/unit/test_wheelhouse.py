"""The offline wheelhouse: the checked-in lock list is well formed, and split -> join -> install round-trips with
every piece and every wheel verified (tiny wheels built here; no engine, no package index)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
wh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wh)
LOCKS = sorted((ROOT / "locks").glob("*.txt"))


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_lock_list_integrity(lock):
    header, pins = wh.read_lock(lock)
    assert header["target-python"] and header["target-platform"]
    for must in ("vllm", "vllm-router", "nixl", "nixl-cu13", "locust", "pydantic"):  # engine, router, NIXL, suite
        assert must in pins, must
    for name, (version, digests) in pins.items():
        assert version and all(len(d) == 64 for d in digests), name
    provided = {wh.norm(p.split("==")[0]) for p in header.get("provided", [])}
    assert "torch" in provided and "torch" not in pins  # the GPU host's own torch is used, never replaced


def test_lock_reader_rejects_bad_lines(tmp_path):
    head = "# target-python: 3.12\n# target-platform: manylinux_2_28_x86_64\n"
    for body, why in (("vllm>=0.26\n", "not `name==version"), ("vllm==0.26.0\n", "not `name==version"),
                      (f"a==1 --hash=sha256:{'0' * 64}\na==2 --hash=sha256:{'1' * 64}\n", "pinned twice")):
        p = tmp_path / "lock.txt"
        p.write_text(head + body)
        with pytest.raises(wh.WheelhouseError, match=why):
            wh.read_lock(p)
    p.write_text(f"a==1 --hash=sha256:{'0' * 64}\n")
    with pytest.raises(wh.WheelhouseError, match="target-python"):
        wh.read_lock(p)


def make_wheel(folder: Path, name: str, version: str, payload: bytes) -> Path:
    """A minimal valid wheel (PEP 427): one module, METADATA, WHEEL, RECORD."""
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    tag = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files = {f"{name}.py": payload, f"{dist}/METADATA": meta, f"{dist}/WHEEL": tag}
    record = "".join(f"{k},,\n" for k in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{dist}/RECORD", record)
    return path


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    pins = {}
    for i in range(3):  # incompressible payloads, so three pieces of 40 kB are needed
        w = make_wheel(folder, f"pkg{i}", "1.0", f"DATA = {list(range(i, i + 3000))!r}\n".encode())
        pins[f"pkg{i}"] = ("1.0", [hashlib.sha256(w.read_bytes()).hexdigest()])
    wh.write_sums(folder, pins)
    return folder, pins


def test_split_join_install_round_trip(wheels, tmp_path):
    folder, _ = wheels
    parts = wh.split(folder, tmp_path / "chunks", chunk_bytes=20_000)
    assert len(parts) >= 3 and all(p.stat().st_size <= 20_000 for p in parts)
    manifest = json.loads((tmp_path / "chunks" / wh.MANIFEST).read_text())
    assert [p["name"] for p in manifest["parts"]] == [p.name for p in parts]
    prefix = tmp_path / "prefix"
    assert wh.main(["install", str(tmp_path / "chunks"), "--prefix", str(prefix)]) == 0
    out = subprocess.run([sys.executable, "-c", "import pkg2; print(pkg2.DATA[0])"], env={"PYTHONPATH": str(prefix)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "2"
    assert f'PYTHONPATH="{prefix}' in (prefix / "env.sh").read_text()


def test_damaged_or_missing_piece_is_named(wheels, tmp_path, capsys):
    folder, _ = wheels
    parts = wh.split(folder, tmp_path / "chunks", chunk_bytes=20_000)
    data = bytearray(parts[1].read_bytes())
    data[100] ^= 0xFF
    parts[1].write_bytes(bytes(data))
    assert wh.main(["install", str(tmp_path / "chunks"), "--prefix", str(tmp_path / "p")]) == 2
    assert f"{parts[1].name}: piece damaged" in capsys.readouterr().err
    parts[1].unlink()
    assert wh.main(["install", str(tmp_path / "chunks"), "--prefix", str(tmp_path / "p")]) == 2
    assert "piece missing" in capsys.readouterr().err


def test_wheel_not_matching_the_lock_is_refused(wheels):
    folder, pins = wheels
    pins["pkg0"] = ("1.0", ["f" * 64])
    with pytest.raises(wh.WheelhouseError, match="is not the lock's"):
        wh.write_sums(folder, pins)
    del pins["pkg0"]
    pins["absent"] = ("1.0", ["0" * 64])
    with pytest.raises(wh.WheelhouseError, match="locked wheels missing"):
        wh.write_sums(folder, pins)
