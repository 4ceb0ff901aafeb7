"""Raw /metrics snapshots of every engine and router, taken before and after each load point.

The text is stored as-is (`<out_dir>/<service>.prom`) so normalisation can be redone later with a newer table;
a failed scrape is recorded in `<out_dir>/scrape.json`, never fatal: a point without server metrics is still a point.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_BYTES = 64 * 1024 * 1024  # a /metrics page larger than this is a bug on the other side


@dataclass
class ScrapeResult:
    service: str
    url: str
    ok: bool
    path: str | None = None  # where the text was written
    bytes: int = 0
    elapsed_s: float = 0.0
    error: str | None = None


def fetch_text(url: str, timeout: float = 5.0) -> str:
    """GET one exposition page; raises OSError/ValueError with a readable message on failure."""
    req = urllib.request.Request(url, headers={"Accept": "text/plain; version=0.0.4"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # loopback URLs from our own catalog
        body = resp.read(MAX_BYTES + 1)
    if len(body) > MAX_BYTES:
        raise ValueError(f"{url}: /metrics larger than {MAX_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


def _one(service: str, url: str, out_dir: Path, timeout: float) -> ScrapeResult:
    t0 = time.monotonic()
    try:
        text = fetch_text(url, timeout)
    except (OSError, ValueError, urllib.error.URLError) as e:  # timeouts are OSError too
        return ScrapeResult(service, url, False, elapsed_s=time.monotonic() - t0, error=f"{type(e).__name__}: {e}")
    path = out_dir / f"{service}.prom"
    path.write_text(text)
    return ScrapeResult(service, url, True, str(path), len(text), time.monotonic() - t0)


def snapshot(urls: dict[str, str], out_dir: str | Path, timeout: float = 5.0) -> dict[str, ScrapeResult]:
    """Fetch every service's /metrics at once (threads: the pages are small, the waits are network)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
        futures = {s: pool.submit(_one, s, u, out, timeout) for s, u in urls.items()}
        results = {s: f.result() for s, f in futures.items()}
    (out / "scrape.json").write_text(json.dumps({s: asdict(r) for s, r in results.items()}, indent=1))
    return results


__all__ = ["ScrapeResult", "fetch_text", "snapshot"]
