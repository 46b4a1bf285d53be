"""A TCP proxy on 127.0.0.1 between `devstack connect` and a sidecar, to
break the connection on purpose: cut every connection once N bytes went
upstream (and refuse new ones until restored), or stall forwarding there.

The byte count makes "mid-way through a large sync" exact instead of a race
against the clock."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future


class TcpProxy:
    """Runs its own event loop in a thread; every method is thread-safe.
    ``restore`` lifts a cut; a stall lasts until its connections end."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        #: Bytes forwarded client -> upstream since start.
        self.sent = 0
        #: Set once an armed cut or stall has happened.
        self.tripped = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._budget: int | None = None
        self._mode = ""
        self._refusing = False
        self._stalled = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, fn: object) -> object:
        fut: Future[object] = asyncio.run_coroutine_threadsafe(fn, self._loop)  # type: ignore[arg-type]
        return fut.result(30)

    def start(self) -> TcpProxy:
        self._thread.start()

        async def listen() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._call(listen())
        return self

    def cut_after(self, nbytes: int) -> None:
        """Once ``nbytes`` more went upstream, reset every connection and
        refuse new ones until ``restore``."""
        self._arm(nbytes, "cut")

    def stall_after(self, nbytes: int) -> None:
        """Once ``nbytes`` more went upstream, forward nothing more upstream:
        connections stay open, what the client sends next is dropped,
        and a client that goes away still ends the upstream connection."""
        self._arm(nbytes, "stall")

    def _arm(self, nbytes: int, mode: str) -> None:
        async def arm() -> None:
            self._budget, self._mode = nbytes, mode
            self.tripped.clear()

        self._call(arm())

    def restore(self) -> None:
        async def restore() -> None:
            self._budget, self._mode, self._refusing = None, "", False

        self._call(restore())

    def stop(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for a, b in list(self._conns):
                a.transport.abort()
                b.transport.abort()

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ------------------------------------------------------------ inside the loop

    def _trip(self) -> None:
        self.tripped.set()
        if self._mode == "cut":
            self._refusing = True
            for a, b in list(self._conns):
                a.transport.abort()
                b.transport.abort()
        else:
            self._stalled = True
        self._budget = None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing:
            client_w.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        pair = (client_w, up_w)
        self._conns.add(pair)
        try:
            await asyncio.gather(
                self._pump(client_r, up_w, upstream=True),
                self._pump(up_r, client_w, upstream=False),
                return_exceptions=True,
            )
        finally:
            self._conns.discard(pair)
            client_w.transport.abort()
            up_w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(64 * 1024)
                if not data:
                    break
                while upstream and data and not self._stalled:
                    n = len(data) if self._budget is None else min(len(data), self._budget)
                    writer.write(data[:n])
                    self.sent += n
                    data = data[n:]
                    if self._budget is not None:
                        self._budget -= n
                        if self._budget <= 0:
                            self._trip()
                            if self._refusing:
                                return
                if not upstream:
                    writer.write(data)
                await writer.drain()
        finally:
            # One side ended: end the other, so the peer notices too.
            writer.transport.abort()
