"""Ports for loopback servers: drawn below the ephemeral range, never one
twice in a call, never one that is bound (devstack.core.ports)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from devstack.core import ports


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32768\t60999\n", (32768, 60999)),
        ("40000 50000", (40000, 50000)),
        ("", (32768, 60999)),  # unreadable: Linux's default
        ("nonsense here", (32768, 60999)),
        ("50000 40000", (32768, 60999)),  # upside down
        ("0 70000", (32768, 60999)),
    ],
)
def test_the_ephemeral_range_is_read_or_defaulted(text: str, expected: tuple[int, int]) -> None:
    assert ports.ephemeral_range(text) == expected


@pytest.mark.parametrize(
    ("ephemeral", "span"),
    [
        ((32768, 60999), (10_000, 32767)),
        ((12_000, 60999), (10_000, 11_999)),  # exactly MIN_SPAN below
        ((11_999, 60999), None),  # too few below: the kernel's port 0 then
        ((1024, 65535), None),
    ],
)
def test_ports_are_drawn_below_the_ephemeral_range(
    ephemeral: tuple[int, int], span: tuple[int, int] | None
) -> None:
    assert ports.draw_span(ephemeral) == span


def test_one_call_never_returns_a_port_twice_and_each_is_free() -> None:
    got = ports.free_ports(200)
    assert len(set(got)) == 200
    lo, _ = ports.ephemeral_range()
    assert all(ports.LOWEST <= p < lo for p in got), got
    for p in got[:20]:  # free a moment ago: each binds now (nothing else uses this range)
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.free_port()))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_bound_port_is_never_drawn(listening: int, monkeypatch: pytest.MonkeyPatch) -> None:
    class Rigged:
        """Draws the bound port first, then a fixed free one."""

        def __init__(self) -> None:
            self.draws = [listening, listening]

        def randint(self, a: int, b: int) -> int:
            return self.draws.pop(0) if self.draws else a + (listening - a + 7) % (b - a)

    monkeypatch.setattr(ports, "_rng", Rigged())
    got = ports.free_ports(1)
    assert got != [listening]


def test_without_room_below_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    lo, hi = ports.ephemeral_range()  # the machine's own
    monkeypatch.setattr(ports, "ephemeral_range", lambda text=None: (10_500, 60999))
    got = ports.free_ports(30)
    assert len(set(got)) == 30
    assert all(lo <= p <= hi for p in got), got


def test_a_full_range_below_falls_back_to_the_kernel(
    listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stuck:
        """Every draw lands on the bound port."""

        draws = 0

        def randint(self, a: int, b: int) -> int:
            self.draws += 1
            return listening

    rng = Stuck()
    monkeypatch.setattr(ports, "_rng", rng)
    lo, hi = ports.ephemeral_range()
    got = ports.free_ports(3)
    assert len(set(got)) == 3 and all(lo <= p <= hi for p in got), got
    assert rng.draws == ports._TRIES  # the misses in a row, then never again
