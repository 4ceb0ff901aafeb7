"""Free loopback ports for servers the suite and its tests start.

Chosen below the kernel's ephemeral range: a port taken from the ephemeral range (bind to port 0) can be handed
to another process's outgoing or ZMQ socket before our server binds it ("Address already in use", seen with vLLM
engines that open many sockets while a router waits to start).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

FALLBACK_RANGE = (20000, 32000)


def _range() -> tuple[int, int]:
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return FALLBACK_RANGE
    return (10000, lo - 1) if lo > 12000 else FALLBACK_RANGE


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that are free now, outside the ephemeral range."""
    lo, hi = _range()
    picked: list[int] = []
    for port in random.sample(range(lo, hi), k=min(hi - lo, 50 * n + 100)):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        picked.append(port)
        if len(picked) == n:
            return picked
    raise OSError(f"no {n} free ports in {lo}-{hi}")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
