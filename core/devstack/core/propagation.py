"""Carry the routing key from an app's inbound request to its outbound calls.

No I/O of its own. Server middleware reads the key from the request that came
in (:func:`devstack.core.routing.owner_from_headers`) and keeps it in a
context variable for the duration of that request; client hooks add it to
every request the app makes meanwhile: the baggage member (other baggage
members kept) and the plain header. Outside a tagged request they add
nothing, so untagged traffic stays untagged.

Server side:
    - ASGI (Starlette, FastAPI, Django ASGI...): ``app = RoutingASGIMiddleware(app)``
    - WSGI (Flask, Django...): ``app.wsgi_app = RoutingWSGIMiddleware(app.wsgi_app)``
    - aiohttp: ``web.Application(middlewares=[aiohttp_middleware()])``

Client side:
    - aiohttp: ``ClientSession(trace_configs=[aiohttp_trace_config()])``
    - httpx: ``httpx.Client(event_hooks={"request": [httpx_hook()]})`` or
      ``httpx.AsyncClient(event_hooks={"request": [httpx_async_hook()]})``
    - requests: ``install_requests(session)`` (mounts a routing adapter)

aiohttp, httpx and requests are imported only when their helper is used.
Apps in other languages get the same from OpenTelemetry's W3C baggage
propagator (see docs/routing.md).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from devstack.core.routing import (
    RouteSettings,
    owner_from_headers,
    route_headers,
    with_owner_in_baggage,
)

_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "devstack_route_owner", default=None
)

DEFAULT_SETTINGS = RouteSettings()


def current_owner() -> str | None:
    """The routing key of the request being handled, if it carried one."""
    return _owner.get()


@contextlib.contextmanager
def routing_context(owner: str | None) -> Iterator[None]:
    """Run a block as if handling a request tagged with ``owner``
    (also how a worker or a test tags its outbound calls)."""
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)


def outbound_headers(
    existing: MutableMapping[str, str] | None = None,
    *,
    settings: RouteSettings = DEFAULT_SETTINGS,
    owner: str | None = None,
) -> dict[str, str]:
    """The headers to set on an outbound request (empty when untagged).

    ``existing`` holds the request's own headers (looked up case-blind): a
    baggage header the app set itself keeps its other members.
    """
    owner = owner or current_owner()
    if owner is None:
        return {}
    headers = route_headers(owner, settings)
    if settings.baggage_style == "w3c" and existing is not None:
        own = next((v for k, v in existing.items() if k.lower() == settings.baggage_header), None)
        if own:
            headers[settings.baggage_header] = with_owner_in_baggage(
                own, owner, key=settings.baggage_key
            )
    return headers


def _set_headers(target: MutableMapping[str, str], add: dict[str, str]) -> None:
    for name, value in add.items():
        for existing in [k for k in target if k.lower() == name and k != name]:
            del target[existing]
        target[name] = value


# --- server middleware ----------------------------------------------------------------

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class RoutingASGIMiddleware:
    """ASGI middleware: tags the request's context with its routing key."""

    def __init__(self, app: ASGIApp, *, settings: RouteSettings = DEFAULT_SETTINGS) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers") or []]
        with routing_context(owner_from_headers(pairs, self.settings)):
            await self.app(scope, receive, send)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RoutingWSGIMiddleware:
    """WSGI middleware: tags the request's context with its routing key.

    The key is set while the app is called (when it makes its outbound
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
        with routing_context(owner_from_headers(pairs, self.settings)):
            return self.app(environ, start_response)


def aiohttp_middleware(*, settings: RouteSettings = DEFAULT_SETTINGS) -> Any:
    """An aiohttp server middleware (``web.Application(middlewares=[...])``)."""
    from aiohttp import web

    @web.middleware
    async def devstack_routing(request: Any, handler: Any) -> Any:
        with routing_context(owner_from_headers(request.headers.items(), settings)):
            return await handler(request)

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
