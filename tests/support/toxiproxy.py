"""toxiproxy, the network fault injector, between a client and a server on
127.0.0.1: latency, bandwidth, timeouts, reset connections (docs/testing.md).

:class:`Toxiproxy` runs ``toxiproxy-server`` (built by ``scripts/testbed
build``) with its API on a free loopback port; :meth:`Toxiproxy.proxy` opens
a TCP proxy to an upstream, and :class:`Proxy` adds and removes toxics or
cuts the link. TCP only: TLS passes through untouched, so a kubeconfig that
names the proxy's port still verifies the API server's certificate (it is
valid for 127.0.0.1).

Does I/O: starts a process, talks HTTP to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port, wait_until
from tests.support.testbed import binary_paths, missing_message


@dataclass(frozen=True)
class Proxy:
    """One proxy: clients connect to ``127.0.0.1:port``; it forwards to its upstream."""

    api: httpx.Client
    name: str
    port: int

    def toxic(self, kind: str, *, stream: str = "downstream", **attributes: Any) -> str:
        """Add a toxic (``latency`` with ``latency``/``jitter`` ms,
        ``bandwidth`` with ``rate`` KB/s, ``timeout``, ``reset_peer``, ...);
        returns its name."""
        name = f"{kind}_{stream}"
        r = self.api.post(
            f"/proxies/{self.name}/toxics",
            json={"name": name, "type": kind, "stream": stream, "attributes": attributes},
        )
        r.raise_for_status()
        return name

    def remove(self, toxic: str) -> None:
        self.api.delete(f"/proxies/{self.name}/toxics/{toxic}").raise_for_status()

    def enabled(self, on: bool) -> None:
        """Cut the link (``False``: open connections are closed, new ones
        refused) or restore it."""
        self.api.post(f"/proxies/{self.name}", json={"enabled": on}).raise_for_status()


class Toxiproxy:
    """A running ``toxiproxy-server``; :meth:`stop` ends it."""

    def __init__(self, binary: Path, log: Path) -> None:
        self.port = free_port()
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(binary), "-host", "127.0.0.1", "-port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

        def up() -> bool:
            assert self.process.poll() is None, log.read_text(errors="replace")[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                return self.api.get("/version").status_code == 200
            return False

        wait_until(up, timeout=30, interval=0.05)

    def proxy(self, name: str, upstream: str) -> Proxy:
        """A proxy from a free port on 127.0.0.1 to ``upstream`` (``host:port``)."""
        port = free_port()
        r = self.api.post(
            "/proxies",
            json={"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream},
        )
        r.raise_for_status()
        return Proxy(self.api, name, port)

    def stop(self) -> None:
        self.api.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def running_toxiproxy(workdir: Path) -> Iterator[Toxiproxy]:
    """A started :class:`Toxiproxy`; an :class:`AssertionError` that says how
    to build it when its binary is missing."""
    binary = binary_paths().get("toxiproxy-server")
    assert binary is not None and binary.is_file(), missing_message(["toxiproxy-server"])
    proxy = Toxiproxy(binary, workdir / "toxiproxy.log")
    try:
        yield proxy
    finally:
        proxy.stop()
