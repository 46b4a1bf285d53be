"""A small fault-injecting HTTPS proxy in front of the testbed's real API
server (docs/testing.md): what toxiproxy cannot do, since it sees only TCP.

:func:`running_fault_proxy` serves HTTPS on a free loopback port with a
leaf certificate of the testbed's own CA (the API server's serving
certificate, valid for 127.0.0.1), so a kubeconfig made with
``service_account_kubeconfig(..., server=proxy.url)`` verifies it as it
would the API server. Every request is forwarded as it came (method, path,
query, body, the client's ``Authorization``), its answer streamed back as
it arrives (watches included), unless a :class:`Rule` picks it:

- ``status=429`` (with ``retry_after``): answered by the proxy with a
  ``Status`` body and a ``Retry-After`` header, as kube-apiserver's
  priority-and-fairness filter answers; the server never sees it;
- ``status=500`` (or any 5xx): answered with an ``InternalError`` Status, the
  server never sees it; with ``after=True`` the request *is* forwarded and
  done, and only its answer is replaced by the 500 (a server that fails
  after it wrote: the client cannot tell);
- ``delay``: forwarded after that many seconds (a slow server).

When the API server cannot be reached (it is restarting), the proxy
answers 502, as a gateway would.

A rule acts on the first ``times`` requests it matches (``None``: all).
The proxy records each request it forwarded (:attr:`FaultProxy.forwarded`:
method, path, watch or not, the created object's name, the status the
server answered) and each answer it made up (:attr:`FaultProxy.injected`),
so a test can prove a fault happened and that nothing was written twice.

Does I/O: listens on 127.0.0.1 and talks to the API server on 127.0.0.1,
from an event loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.net import free_port
from tests.support.testbed import Testbed, tls_context

#: Headers that belong to one hop, not to the request or answer.
_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
    "accept-encoding",  # the server answers uncompressed: passed through as is
    "content-encoding",
}


@dataclass
class Rule:
    """Which requests to act on (``method``; ``path``: a regular expression
    the whole path must match; ``watch``: only watches, only the rest, or
    either with ``None``), what to do and how many times."""

    method: str | None = None
    path: str = ".*"
    watch: bool | None = None
    status: int | None = None
    retry_after: float | None = None
    after: bool = False
    delay: float = 0.0
    times: int | None = 1
    #: how many requests it acted on so far
    hits: int = 0

    def matches(self, method: str, path: str, watch: bool) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        if self.watch is not None and self.watch != watch:
            return False
        return re.fullmatch(self.path, path) is not None

    @property
    def spent(self) -> bool:
        """Whether it acted on as many requests as it was meant to."""
        return self.times is not None and self.hits >= self.times


@dataclass(frozen=True)
class Seen:
    """One request the proxy forwarded (``status``: the server's answer) or
    answered itself (``status``: the one it made up)."""

    method: str
    path: str
    watch: bool
    name: str | None  # metadata.name of the body of a POST
    status: int


@dataclass
class FaultProxy:
    """The running proxy: point clients at :attr:`url`."""

    url: str
    rules: list[Rule] = field(default_factory=list)
    forwarded: list[Seen] = field(default_factory=list)
    injected: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rule: Rule) -> Rule:
        """Start applying ``rule`` (after the rules added before it)."""
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def counts(self, *, succeeded: bool = False) -> Counter[tuple[str, str]]:
        """Forwarded requests per (method, path); with ``succeeded``, only
        those the server answered with a 2xx."""
        with self.lock:
            return Counter(
                (s.method, s.path) for s in self.forwarded if not succeeded or 200 <= s.status < 300
            )

    def writes(self, method: str, path: str, *, name: str | None = None) -> list[int]:
        """The server's answers to every ``method`` on ``path`` the proxy
        forwarded (for a POST, only those creating ``name`` if given)."""
        with self.lock:
            return [
                s.status
                for s in self.forwarded
                if (s.method, s.path) == (method, path) and (name is None or s.name == name)
            ]

    def made_up(self, method: str, path: str) -> list[int]:
        """The answers the proxy made up for ``method`` on ``path``."""
        with self.lock:
            return [s.status for s in self.injected if (s.method, s.path) == (method, path)]

    def _pick(self, method: str, path: str, watch: bool) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path, watch):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, seen: Seen, *, injected: bool) -> None:
        with self.lock:
            (self.injected if injected else self.forwarded).append(seen)


def _status_body(code: int, message: str, retry_after: float | None) -> bytes:
    reason = {429: "TooManyRequests", 502: "BadGateway", 503: "ServiceUnavailable"}.get(
        code, "InternalError"
    )
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if retry_after is not None:
        body["details"] = {"retryAfterSeconds": int(retry_after)}
    return json.dumps(body).encode()


def _made_up(rule: Rule) -> web.Response:
    assert rule.status is not None
    headers = {"Content-Type": "application/json"}
    if rule.retry_after is not None:
        headers["Retry-After"] = str(int(rule.retry_after))
    message = "the fault proxy says: try again later"
    return web.Response(
        status=rule.status, body=_status_body(rule.status, message, rule.retry_after),
        headers=headers,
    )  # fmt: skip


def _app(
    proxy: FaultProxy, upstream: str, session_box: list[aiohttp.ClientSession]
) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        watch = request.query.get("watch") in ("true", "1")
        body = await request.read()
        name = None
        if method == "POST" and body:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                name = json.loads(body).get("metadata", {}).get("name")
        rule = proxy._pick(method, path, watch)
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.status is not None and not rule.after:
            proxy._record(Seen(method, path, watch, name, rule.status), injected=True)
            return _made_up(rule)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        session = session_box[0]
        try:
            async with session.request(
                method, upstream + request.path_qs, headers=headers, data=body or None,
                allow_redirects=False,
            ) as answer:  # fmt: skip
                proxy._record(Seen(method, path, watch, name, answer.status), injected=False)
                if rule is not None and rule.status is not None:  # after=True: done, then fail
                    await answer.read()
                    proxy._record(Seen(method, path, watch, name, rule.status), injected=True)
                    return _made_up(rule)
                out = web.StreamResponse(
                    status=answer.status,
                    headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP},
                )
                out.enable_chunked_encoding()
                try:
                    await out.prepare(request)
                    async for chunk in answer.content.iter_any():
                        await out.write(chunk)
                    await out.write_eof()
                except (aiohttp.ClientError, ConnectionError):
                    pass  # the server or the client went away: end this stream
                return out
        except (aiohttp.ClientError, ConnectionError) as e:
            # the API server could not be reached (a restart): as a gateway says it
            return web.Response(
                status=502, body=_status_body(502, f"the fault proxy: {e}", None),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@contextlib.contextmanager
def running_fault_proxy(testbed: Testbed) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of ``testbed``'s API server, stopped on
    the way out (stop its clients first)."""
    port = free_port()
    proxy = FaultProxy(url=f"https://127.0.0.1:{port}")
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(str(testbed.pki.serving_cert), str(testbed.pki.serving_key))
    upstream_tls = tls_context(testbed.pki.ca_cert)
    loop = asyncio.new_event_loop()
    session_box: list[aiohttp.ClientSession] = []
    runner_box: list[web.AppRunner] = []
    started = threading.Event()
    failure: list[BaseException] = []

    async def start() -> None:
        session_box.append(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=upstream_tls),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                auto_decompress=False,
            )
        )
        runner = web.AppRunner(
            _app(proxy, testbed.server, session_box), handle_signals=False, shutdown_timeout=1
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=serving).start()
        runner_box.append(runner)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as e:  # reported to the caller
            failure.append(e)
            started.set()
            return
        started.set()
        loop.run_forever()

    async def stop() -> None:
        for runner in runner_box:
            await runner.cleanup()
        for session in session_box:
            await session.close()

    thread = threading.Thread(target=serve, name="fault-proxy", daemon=True)
    thread.start()
    started.wait(30)
    if failure:
        raise failure[0]
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
