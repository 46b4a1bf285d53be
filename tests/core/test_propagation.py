"""The propagation helpers carry the routing key, and the whole baggage, from
the inbound request to outbound calls, against a real echo server on loopback."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
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
    current_baggage,
    current_owner,
    httpx_async_hook,
    httpx_hook,
    install_requests,
    outbound_headers,
    routing_context,
)
from devstack.core.routing import RouteSettings

REPO = Path(__file__).resolve().parents[2]
#: What a traced caller sends: the routing key among other members (one with
#: a property, one percent-encoded).
TAGGED = "tenant=t1,devstack-route=alice;p=1,user=a%20b"
JAEGER = RouteSettings(baggage_style="jaeger")


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


@pytest.mark.parametrize(
    ("owner", "inbound", "own", "settings", "headers"),
    [
        pytest.param(None, None, None, None, {}, id="untagged-nothing"),
        pytest.param(None, None, "a=1", None, {}, id="untagged-own-left-alone"),
        pytest.param(
            "alice", TAGGED, None, None,
            {"baggage": TAGGED, "x-devstack-route": "alice"},
            id="inbound-forwarded-verbatim",
        ),
        pytest.param(
            "alice", None, None, None,
            {"baggage": "devstack-route=alice", "x-devstack-route": "alice"},
            id="plain-header-only-inbound",
        ),
        pytest.param(
            "alice", "tenant=t1;p, b=2", None, None,
            {"baggage": "devstack-route=alice,tenant=t1;p,b=2", "x-devstack-route": "alice"},
            id="key-added-to-inbound",
        ),
        pytest.param(
            "bob", TAGGED, None, None,
            {"baggage": "tenant=t1,devstack-route=bob,user=a%20b", "x-devstack-route": "bob"},
            id="key-replaced-in-place",
        ),
        pytest.param(
            "alice", "tenant=t1,devstack-route=alice", "devstack-route=bob,tenant=t2,k=v", None,
            {"baggage": "tenant=t2,devstack-route=alice,k=v", "x-devstack-route": "alice"},
            id="apps-own-members-merged",
        ),
        pytest.param(
            "alice", None, "tenant=t1,devstack-route=bob", None,
            {"baggage": "tenant=t1,devstack-route=alice", "x-devstack-route": "alice"},
            id="apps-own-baggage-tagged",
        ),
        pytest.param(
            None, "tenant=t1,user=a%20b", "k=v", None,
            {"baggage": "tenant=t1,user=a%20b,k=v"},
            id="untagged-baggage-passed-on-untagged",
        ),
        pytest.param(
            "alice", TAGGED, None, JAEGER,
            {"baggage": TAGGED, "uberctx-devstack-route": "alice", "x-devstack-route": "alice"},
            id="jaeger-key-and-baggage-as-it-came",
        ),
        pytest.param(
            "alice", None, "a=1", JAEGER,
            {"uberctx-devstack-route": "alice", "x-devstack-route": "alice"},
            id="jaeger-own-left-alone",
        ),
        pytest.param(
            "alice", ",".join(f"m{i}=v" for i in range(300)), None, None,
            {
                # the key goes first when it is new: the limits drop the tail, never it
                "baggage": ",".join(["devstack-route=alice", *(f"m{i}=v" for i in range(179))]),
                "x-devstack-route": "alice",
            },
            id="w3c-limits",
        ),
        pytest.param(
            "alice", ",".join([*(f"m{i}=v" for i in range(190)), "devstack-route=alice;p"]), None,
            None,
            {
                # the routing member, beyond the limits, is kept where it stands
                "baggage": ",".join([*(f"m{i}=v" for i in range(179)), "devstack-route=alice;p"]),
                "x-devstack-route": "alice",
            },
            id="w3c-limits-key-kept-in-place",
        ),
    ],
)  # fmt: skip
def test_outbound_headers(
    owner: str | None,
    inbound: str | None,
    own: str | None,
    settings: RouteSettings | None,
    headers: dict[str, str],
) -> None:
    existing = {"Baggage": own} if own is not None else {}
    with routing_context(owner, baggage=inbound):
        assert outbound_headers(existing, settings=settings or RouteSettings()) == headers
    assert (current_owner(), current_baggage()) == (None, None)


def test_outbound_headers_owner_argument_overrides_the_request() -> None:
    with routing_context("alice", baggage=TAGGED):
        assert outbound_headers(owner="bob")["baggage"] == "tenant=t1,devstack-route=bob,user=a%20b"
    assert outbound_headers(owner="bob") == {
        "baggage": "devstack-route=bob",
        "x-devstack-route": "bob",
    }


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
            # every inbound member, then the app's own
            assert _routing(seen) == {
                "baggage": "foo=1,devstack-route=alice;p=1,tenant=t1",
                "x-devstack-route": "alice",
            }
            two = [("baggage", "foo=1"), ("baggage", "devstack-route=alice,user=a%20b")]
            async with s.get(url, headers=two) as r:  # several headers: one list, in order
                assert _routing(await r.json()) == {
                    "baggage": "foo=1,devstack-route=alice,user=a%20b,tenant=t1",
                    "x-devstack-route": "alice",
                }
            async with s.get(url) as r:  # untagged stays untagged
                assert _routing(await r.json()) == {
                    "baggage": "tenant=t1",
                    "x-devstack-route": None,
                }
            async with s.get(url, headers={"baggage": "foo=1"}) as r:  # ...its baggage kept
                assert _routing(await r.json()) == {
                    "baggage": "foo=1,tenant=t1",
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
    scope = {"type": "http", "headers": [(b"baggage", TAGGED.encode())]}
    await RoutingASGIMiddleware(app)(scope, receive, send)
    assert _routing(seen) == {"baggage": TAGGED, "x-devstack-route": "alice"}
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
    # The inbound baggage is passed on whole, the key in it.
    environ["HTTP_BAGGAGE"] = "tenant=t1, user=a%20b"
    await asyncio.to_thread(wrapped, environ, lambda s, h: None)
    for client in ("requests", "httpx"):
        assert _routing(results[client]) == {
            "baggage": "devstack-route=dave,tenant=t1,user=a%20b",
            "x-devstack-route": "dave",
        }, client
    # A request without a key leaves outbound calls untagged.
    environ.pop("HTTP_X_DEVSTACK_ROUTE")
    environ.pop("HTTP_BAGGAGE")
    await asyncio.to_thread(wrapped, environ, lambda s, h: None)
    assert _routing(results["requests"]) == {"baggage": None, "x-devstack-route": None}


def _shop_app(name: str, monkeypatch: pytest.MonkeyPatch, router: str) -> Any:
    """examples/shop/<name>/app.py, imported as its process would run it,
    calling the services it calls through ``router``."""
    monkeypatch.setenv("DEVSTACK_ROUTER_URL", router)
    path = REPO / "examples" / "shop" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"shop_{name}_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["web", "api"])
async def test_the_shops_apps_pass_the_whole_baggage_on(
    echo: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """web and api use only RoutingWSGIMiddleware and outbound_headers(): what
    they send the next service (here the echo server, as the router) carries
    every inbound member."""
    module = _shop_app(name, monkeypatch, echo)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_BAGGAGE": TAGGED,
        "wsgi.input": io.BytesIO(),
    }
    wrapped = module.RoutingWSGIMiddleware(module.app)
    body = await asyncio.to_thread(lambda: b"".join(wrapped(environ, lambda s, h: None)))
    answer = json.loads(body)
    assert answer["routing_key"] == "alice"
    sent = answer["api" if name == "web" else "stock"]  # the echo: the headers it received
    assert _routing(sent) == {"baggage": TAGGED, "x-devstack-route": "alice"}
