"""Free TCP ports for tests that start servers in subprocesses (importable: tests/ is on sys.path).

Asking the kernel for port 0 once per server and closing the socket at once can hand out the same
port twice (a fresh `ray start` once got object_manager == runtime_env_agent). ``reserved_ports``
holds *every* socket bound until all ports are chosen, so they are distinct, and releases them only
when its ``with`` block ends: build the command inside the block, start the server right after it.

By default the ports come from below the kernel's ephemeral range (and above Ray's default worker
ports 10002..19999): the kernel never picks those for ``bind(port 0)`` nor as the source port of an
outgoing connection, so in the moment between release and the server's own bind, only a process
that names the same port explicitly could take it. If that range is too small, port 0 is used.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOW = 20000  # above Ray's default worker ports (10002..19999)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux); the usual default where it cannot be read."""
    try:
        lo, hi = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _bind(port: int, host: str) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind((host, port))
        return s
    except OSError:
        s.close()
        return None


@contextmanager
def reserved_ports(n: int, host: str = "", below_ephemeral: bool = True) -> Iterator[list[int]]:
    """Yield ``n`` distinct free ports, each held by a bound (not listening) socket until the block ends.

    ``host=""`` binds on all IPv4 addresses, so a port someone holds on any address is skipped.
    """
    socks: list[socket.socket] = []
    try:
        lo = ephemeral_range()[0]
        if below_ephemeral and lo - LOW >= 50 * n:
            for port in random.sample(range(LOW, lo), min(lo - LOW, 200 * n)):
                if len(socks) == n:
                    break
                if (s := _bind(port, host)) is not None:
                    socks.append(s)
        while len(socks) < n:  # fallback: the kernel's choice; distinct because the others stay bound
            s = _bind(0, host)
            if s is None:
                raise OSError(f"no free port on {host!r}")
            socks.append(s)
        yield [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
