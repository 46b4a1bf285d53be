"""Ports for servers devstack starts itself on loopback (the local stack's
services, copies, sidecars, Traefik and LocalStack; the tests' servers).

Such a port is chosen before the server that will listen on it starts, so
something else may take it in between. The usual way, binding port 0 and
closing the socket, has two such races:

- the port comes from the kernel's ephemeral range
  (``net.ipv4.ip_local_port_range``), the one every outgoing connection on
  the machine takes its source port from: any client (a gRPC channel, a
  probe, a test) can take it before the server binds it;
- asking again may return the same port, as the first socket is closed: two
  servers of one stack then meet on one port.

:func:`free_ports` draws ports below the ephemeral range, where no outgoing
connection goes, checks each by binding it, and holds every socket until all
of them are drawn, so one call never returns a port twice. Where the range
below is too small (a machine that set it so), it falls back to port 0.
Nothing here reaches beyond the host asked for.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

#: The lowest port drawn: below are well-known and registered servers'
#: ports (LocalStack's 4566, toxiproxy's 8474, ...).
LOWEST = 10_000
#: The fewest ports below the ephemeral range that make it worth drawing from.
MIN_SPAN = 2_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL = (32_768, 60_999)
#: Draws in a row that find their port taken before the rest come from
#: port 0 (a range below that is nearly full).
_TRIES = 200

_rng = random.SystemRandom()


def ephemeral_range(text: str | None = None) -> tuple[int, int]:
    """The kernel's ephemeral port range, from ``text`` (the range file's
    content) or the file itself; Linux's default when unreadable."""
    if text is None:
        try:
            text = _RANGE_FILE.read_text()
        except OSError:
            return _DEFAULT_EPHEMERAL
    parts = text.split()
    try:
        lo, hi = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return _DEFAULT_EPHEMERAL
    return (lo, hi) if 0 < lo <= hi <= 65_535 else _DEFAULT_EPHEMERAL


def draw_span(ephemeral: tuple[int, int]) -> tuple[int, int] | None:
    """The ports to draw from, below ``ephemeral`` (inclusive bounds); None
    if fewer than ``MIN_SPAN`` are there."""
    top = ephemeral[0] - 1
    return (LOWEST, top) if top - LOWEST + 1 >= MIN_SPAN else None


def _bound(host: str, port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
    except OSError:
        s.close()
        return None
    return s


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different TCP ports on ``host`` that nothing had bound a
    moment ago, below the ephemeral range when it leaves room (see the
    module)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    span = draw_span(ephemeral_range())
    try:
        misses = 0  # draws in a row that found the port taken
        while len(ports) < count:
            if span is not None and misses < _TRIES:
                port = _rng.randint(*span)
                s = None if port in ports else _bound(host, port)
                if s is None:
                    misses += 1
                    continue
                misses = 0
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((host, 0))  # the kernel's choice; raises if none is left
                except OSError:
                    s.close()
                    raise
            held.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in held:
            with contextlib.suppress(OSError):
                s.close()
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One port, as :func:`free_ports` draws them."""
    return free_ports(1, host)[0]
