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

MAX_BYTES = 16 * 1024 * 1024  # a /metrics page larger than this is a bug on the other side (real ones: < 1 MB)
MAX_SECONDS = 30.0  # a page that trickles in slower than this is refused too


class ScrapeError(OSError):
    """One /metrics GET failed: refused, timed out, malformed URL or response, too large. One line."""


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
    """GET one exposition page; raises ScrapeError (an OSError) with a one-line message on any failure."""
    import http.client

    deadline = time.monotonic() + MAX_SECONDS
    try:
        req = urllib.request.Request(url, headers={"Accept": "text/plain; version=0.0.4"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # loopback URLs from our own catalog
            chunks, size = [], 0
            while size <= MAX_BYTES:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if time.monotonic() > deadline:
                    raise ScrapeError(f"{url}: /metrics took longer than {MAX_SECONDS:g} s")
    except ScrapeError:
        raise
    except urllib.error.HTTPError as e:
        raise ScrapeError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise ScrapeError(f"{e.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, bad URL, garbage status line
        raise ScrapeError(f"{type(e).__name__}: {e}".splitlines()[0][:300]) from None
    if size > MAX_BYTES:
        raise ScrapeError(f"{url}: /metrics larger than {MAX_BYTES >> 20} MiB")
    return b"".join(chunks).decode("utf-8", errors="replace")


def _one(service: str, url: str, out_dir: Path, timeout: float) -> ScrapeResult:
    t0 = time.monotonic()
    try:
        text = fetch_text(url, timeout)
    except ScrapeError as e:
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


__all__ = ["MAX_BYTES", "ScrapeError", "ScrapeResult", "fetch_text", "snapshot"]
