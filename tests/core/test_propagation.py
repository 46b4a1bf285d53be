"""The propagation helpers carry the routing key from the inbound request to
outbound calls, against a real echo server on loopback."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
import requests
from aiohttp import web

from devstack.core.propagation import (
    RoutingASGIMiddleware,
    RoutingWSGIMiddleware,
    aiohttp_middleware,
    aiohttp_trace_config,
    current_owner,
    httpx_async_hook,
    httpx_hook,
    install_requests,
    outbound_headers,
    routing_context,
)
from devstack.core.routing import RouteSettings


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """A server that answers with the headers it received."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({k.lower(): v for k, v in request.headers.items()})

    app = web.Application()
    app.router.add_get("/", handle)
    runner, url = await _start(app)
    yield url
    await runner.cleanup()


def _routing(headers: dict[str, str]) -> dict[str, str | None]:
    return {k: headers.get(k) for k in ("baggage", "x-devstack-route")}


def test_outbound_headers_outside_a_request_are_empty() -> None:
    assert current_owner() is None
    assert outbound_headers() == {}


def test_outbound_headers_merge_the_apps_own_baggage() -> None:
    with routing_context("alice"):
        assert outbound_headers({"Baggage": "tenant=t1,devstack-route=bob"}) == {
            "baggage": "devstack-route=alice,tenant=t1",
            "x-devstack-route": "alice",
        }
        jaeger = RouteSettings(baggage_style="jaeger")
        assert outbound_headers(settings=jaeger) == {
            "uberctx-devstack-route": "alice",
            "x-devstack-route": "alice",
        }
    assert current_owner() is None


async def test_aiohttp_server_middleware_and_client_trace(echo: str) -> None:
    async def handle(request: web.Request) -> web.Response:
        async with (
            aiohttp.ClientSession(trace_configs=[aiohttp_trace_config()]) as s,
            s.get(echo, headers={"baggage": "tenant=t1"}) as r,
        ):
            return web.json_response(await r.json())

    app = web.Application(middlewares=[aiohttp_middleware()])
    app.router.add_get("/", handle)
    runner, url = await _start(app)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers={"baggage": "foo=1,devstack-route=alice;p=1"}) as r:
                seen = await r.json()
            assert _routing(seen) == {
                "baggage": "devstack-route=alice,tenant=t1",
                "x-devstack-route": "alice",
            }
            async with s.get(url) as r:  # untagged stays untagged
                assert _routing(await r.json()) == {
                    "baggage": "tenant=t1",
                    "x-devstack-route": None,
                }
            async with s.get(url, headers={"X-Devstack-Route": "bob"}) as r:
                assert _routing(await r.json())["x-devstack-route"] == "bob"
    finally:
        await runner.cleanup()


async def test_asgi_middleware_with_httpx_async_hook(echo: str) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with httpx.AsyncClient(
            event_hooks={"request": [httpx_async_hook()]}, trust_env=False
        ) as client:
            seen.update((await client.get(echo)).json())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"baggage", b"devstack-route=carol")]}
    await RoutingASGIMiddleware(app)(scope, receive, send)
    assert _routing(seen) == {"baggage": "devstack-route=carol", "x-devstack-route": "carol"}
    assert sent[0]["status"] == 204
    # Lifespan and other scopes pass straight through.
    called: list[str] = []

    async def lifespan(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    await RoutingASGIMiddleware(lifespan)({"type": "lifespan"}, receive, send)
    assert called == ["lifespan"]


async def test_wsgi_middleware_with_requests_and_httpx(echo: str) -> None:
    results: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        plain = requests.Session()
        plain.trust_env = False
        session = install_requests(plain)
        results["requests"] = session.get(echo, timeout=5).json()
        with httpx.Client(event_hooks={"request": [httpx_hook()]}, trust_env=False) as client:
            results["httpx"] = client.get(echo).json()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = RoutingWSGIMiddleware(app)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_X_DEVSTACK_ROUTE": "dave",
        "wsgi.input": io.BytesIO(),
    }
    statuses: list[str] = []
    body = await asyncio.to_thread(wrapped, environ, lambda s, h: statuses.append(s))
    assert list(body) == [b"ok"] and statuses == ["200 OK"]
    for client in ("requests", "httpx"):
        assert _routing(results[client]) == {
            "baggage": "devstack-route=dave",
            "x-devstack-route": "dave",
        }, client
    # A request without a key leaves outbound calls untagged.
    environ.pop("HTTP_X_DEVSTACK_ROUTE")
    await asyncio.to_thread(wrapped, environ, lambda s, h: None)
    assert _routing(results["requests"]) == {"baggage": None, "x-devstack-route": None}
