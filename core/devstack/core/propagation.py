"""Carry the routing key, and the whole baggage, from an app's inbound
request to its outbound calls.

No I/O of its own. Server middleware reads the request that came in: its
routing key (:func:`devstack.core.routing.owner_from_headers`) and its W3C
``baggage``; it keeps both in a context variable for the duration of that
request. Client hooks add them to every request the app makes meanwhile, as
W3C Baggage and OpenTelemetry propagate baggage: the outbound ``baggage`` is
the inbound one, every member with its properties and in order, with the
routing key set in it (one member, never two), within the W3C limits
(:func:`devstack.core.routing.with_owner_in_baggage`); and the plain header.
A request that carried baggage but no routing key passes its baggage on
as it came, untagged; outside a request the hooks add nothing, so untagged
traffic stays untagged.

Server side:
    - ASGI (Starlette, FastAPI, Django ASGI...): ``app = RoutingASGIMiddleware(app)``
    - WSGI (Flask, Django...): ``app.wsgi_app = RoutingWSGIMiddleware(app.wsgi_app)``
    - aiohttp: ``web.Application(middlewares=[aiohttp_middleware()])``

Client side:
    - aiohttp: ``ClientSession(trace_configs=[aiohttp_trace_config()])``
    - httpx: ``httpx.Client(event_hooks={"request": [httpx_hook()]})`` or
      ``httpx.AsyncClient(event_hooks={"request": [httpx_async_hook()]})``
    - requests: ``install_requests(session)`` (mounts a routing adapter)
    - anything else (urllib...): ``headers.update(outbound_headers())``

aiohttp, httpx and requests are imported only when their helper is used.
Apps in other languages get the same from OpenTelemetry's W3C baggage
propagator (see docs/routing.md).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from devstack.core.routing import (
    W3C_BAGGAGE_HEADER,
    RouteSettings,
    baggage_of,
    merge_baggage,
    owner_from_headers,
    route_headers,
    with_owner_in_baggage,
)


@dataclass(frozen=True)
class _Inbound:
    """What the request being handled came with."""

    owner: str | None = None
    baggage: str | None = None


_NOTHING = _Inbound()
_inbound: contextvars.ContextVar[_Inbound | None] = contextvars.ContextVar(
    "devstack_route_inbound", default=None
)

DEFAULT_SETTINGS = RouteSettings()


def current_owner() -> str | None:
    """The routing key of the request being handled, if it carried one."""
    return (_inbound.get() or _NOTHING).owner


def current_baggage() -> str | None:
    """The W3C ``baggage`` the request being handled came with (several
    headers as one list), if it carried any."""
    return (_inbound.get() or _NOTHING).baggage


@contextlib.contextmanager
def routing_context(owner: str | None, *, baggage: str | None = None) -> Iterator[None]:
    """Run a block as if handling a request tagged with ``owner`` that came
    with ``baggage`` (also how a worker or a test tags its outbound calls)."""
    token = _inbound.set(_Inbound(owner, baggage or None))
    try:
        yield
    finally:
        _inbound.reset(token)


def _inbound_of(
    headers: Mapping[str, str] | Iterable[tuple[str, str]], settings: RouteSettings
) -> _Inbound:
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    return _Inbound(owner_from_headers(pairs, settings), baggage_of(pairs))


def outbound_headers(
    existing: MutableMapping[str, str] | None = None,
    *,
    settings: RouteSettings = DEFAULT_SETTINGS,
    owner: str | None = None,
) -> dict[str, str]:
    """The headers to set on an outbound request made while handling one
    (empty outside a request, or for one that carried neither a routing key
    nor baggage).

    ``baggage``: the inbound baggage, every member kept, with the routing
    key set in it (W3C style); the plain route header (and, Jaeger style,
    ``uberctx-<key>``) with the key. ``existing`` holds the request's own
    headers (looked up case-blind): the members of a ``baggage`` header the
    app set itself are merged in (replacing an inbound member of the same
    key). ``owner`` overrides the routing key of the request being handled.
    """
    owner = owner or current_owner()
    inbound = current_baggage()
    own = None
    if existing is not None and (owner is not None or inbound):
        own = next((v for k, v in existing.items() if k.lower() == W3C_BAGGAGE_HEADER), None)
    headers: dict[str, str] = {}
    if owner is not None:
        headers = route_headers(owner, settings)
        if settings.baggage_style == "w3c":
            headers[W3C_BAGGAGE_HEADER] = with_owner_in_baggage(
                merge_baggage(inbound, own, limit=False), owner, key=settings.baggage_key
            )
            return headers
    if inbound:
        forwarded = merge_baggage(inbound, own)
        if forwarded:
            headers[W3C_BAGGAGE_HEADER] = forwarded
    return headers


def _set_headers(target: MutableMapping[str, str], add: dict[str, str]) -> None:
    for name, value in add.items():
        for existing in [k for k in target if k.lower() == name and k != name]:
            del target[existing]
        target[name] = value


# --- server middleware ----------------------------------------------------------------

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class RoutingASGIMiddleware:
    """ASGI middleware: tags the request's context with its routing key and
    baggage."""

    def __init__(self, app: ASGIApp, *, settings: RouteSettings = DEFAULT_SETTINGS) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers") or []]
        token = _inbound.set(_inbound_of(pairs, self.settings))
        try:
            await self.app(scope, receive, send)
        finally:
            _inbound.reset(token)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RoutingWSGIMiddleware:
    """WSGI middleware: tags the request's context with its routing key and
    baggage (the server joins several ``baggage`` headers into one).

    They are set while the app is called (when it makes its outbound
    calls), not while a streamed response body is iterated.
    """

    def __init__(self, app: WSGIApp, *, settings: RouteSettings = DEFAULT_SETTINGS) -> None:
        self.app = app
        self.settings = settings

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        pairs = [
            (k[5:].replace("_", "-").lower(), str(v))
            for k, v in environ.items()
            if k.startswith("HTTP_")
        ]
        token = _inbound.set(_inbound_of(pairs, self.settings))
        try:
            return self.app(environ, start_response)
        finally:
            _inbound.reset(token)


def aiohttp_middleware(*, settings: RouteSettings = DEFAULT_SETTINGS) -> Any:
    """An aiohttp server middleware (``web.Application(middlewares=[...])``)."""
    from aiohttp import web

    @web.middleware
    async def devstack_routing(request: Any, handler: Any) -> Any:
        token = _inbound.set(_inbound_of(request.headers.items(), settings))
        try:
            return await handler(request)
        finally:
            _inbound.reset(token)

    return devstack_routing


# --- client hooks -------------------------------------------------------------------------


def aiohttp_trace_config(*, settings: RouteSettings = DEFAULT_SETTINGS) -> Any:
    """An ``aiohttp.TraceConfig`` that tags every request of a ClientSession."""
    import aiohttp

    async def on_request_start(session: Any, context: Any, params: Any) -> None:
        add = outbound_headers(params.headers, settings=settings)
        for name, value in add.items():
            params.headers[name] = value

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_request_start)
    return config


def httpx_hook(*, settings: RouteSettings = DEFAULT_SETTINGS) -> Callable[[Any], None]:
    """A request event hook for ``httpx.Client``."""

    def hook(request: Any) -> None:
        for name, value in outbound_headers(request.headers, settings=settings).items():
            request.headers[name] = value

    return hook


def httpx_async_hook(
    *, settings: RouteSettings = DEFAULT_SETTINGS
) -> Callable[[Any], Awaitable[None]]:
    """A request event hook for ``httpx.AsyncClient``."""
    sync = httpx_hook(settings=settings)

    async def hook(request: Any) -> None:
        sync(request)

    return hook


def install_requests(session: Any, *, settings: RouteSettings = DEFAULT_SETTINGS) -> Any:
    """Mount an adapter on a ``requests.Session`` that tags every request it
    sends (http and https); returns the session."""
    from requests.adapters import HTTPAdapter

    class RoutingAdapter(HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            _set_headers(request.headers, outbound_headers(request.headers, settings=settings))
            return super().send(request, *args, **kwargs)

    adapter = RoutingAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
