"""tests/ports.py: N distinct ports, really held while the block runs, free again after it (no Ray)."""

from __future__ import annotations

import errno
import socket

import pytest

import ports  # tests/ports.py (tests/ is on sys.path: pytest inserts the rootdir conftest's folder)


def _try_bind(port: int, host: str) -> int:
    """0 if ``port`` could be bound on ``host`` now, else the errno."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return 0
        except OSError as e:
            return e.errno


@pytest.mark.parametrize("below_ephemeral", [True, False])
def test_ports_are_distinct_held_and_released(below_ephemeral):
    for _ in range(20):  # the flaky case was a repeat among 9 ports: try many draws
        with ports.reserved_ports(9, below_ephemeral=below_ephemeral) as got:
            assert len(got) == 9 and len(set(got)) == 9
            assert all(1024 <= p <= 65535 for p in got)
            for p in got:  # held: nobody else can bind them, on loopback or on all addresses
                assert _try_bind(p, "127.0.0.1") == errno.EADDRINUSE
                assert _try_bind(p, "") == errno.EADDRINUSE
        assert [_try_bind(p, "127.0.0.1") for p in got] == [0] * 9  # released at the block's end


def test_below_ephemeral_range_by_default():
    lo, _ = ports.ephemeral_range()
    with ports.reserved_ports(9) as got:
        assert all(ports.LOW <= p < lo for p in got), (got, lo)


def test_falls_back_to_kernel_ports_when_the_range_is_too_small(monkeypatch):
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (ports.LOW + 10, 65535))
    with ports.reserved_ports(9) as got:
        assert len(set(got)) == 9 and all(p >= ports.LOW + 10 for p in got)  # the kernel's range
