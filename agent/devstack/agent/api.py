"""The agent's own HTTP API (aiohttp; does network I/O).

``/healthz``  200 while the watch loops run.
``/readyz``   200 once every cache has synced (leader or not), else 503.
``/metrics``  Prometheus text format (prometheus_client's exposition).
``/v1/routes`` JSON: every service, its host, baseline, preview URL and
              owners (with their preview URLs and TTLs), plus problems.
``/v1/usage`` JSON: usage per owner or team (``?since=7d&by=owner``), from
              the day records plus what the leader has not written yet
              (docs/usage.md); 400 ``{"error": ...}`` for a bad query.
``/version``  JSON: ``{"version": <devstack's version>, "protocol": <the
              devstack protocol version it speaks>}``, which ``devstack
              doctor`` compares with its own.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Protocol

from aiohttp import web

from devstack.agent.metrics import CONTENT_TYPE, Metrics
from devstack.core import protocol
from devstack.core.errors import DevstackError


class Status(Protocol):
    """What the API reads from the controller."""

    @property
    def ready(self) -> bool: ...

    def healthy(self) -> bool: ...

    def routes(self) -> dict[str, Any]: ...


class UsageReport(Protocol):
    """What the API reads from the usage service."""

    async def report(self, *, since: str, by: str) -> dict[str, Any]: ...


def build_version() -> str:
    """The installed devstack distribution's version (``unknown`` if none)."""
    try:
        return importlib.metadata.version("devstack")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def make_app(status: Status, metrics: Metrics, usage: UsageReport | None = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok = status.healthy()
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok = status.ready
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=metrics.render().encode("utf-8"),
            headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"},
        )

    async def routes(_: web.Request) -> web.Response:
        return web.json_response(status.routes())

    async def version(_: web.Request) -> web.Response:
        return web.json_response(
            {"version": build_version(), "protocol": protocol.PROTOCOL_VERSION}
        )

    async def usage_handler(request: web.Request) -> web.Response:
        if usage is None:
            return web.json_response({"error": "usage is not tracked by this agent"}, status=404)
        try:
            report = await usage.report(
                since=request.query.get("since", "7d"), by=request.query.get("by", "owner")
            )
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        except DevstackError as e:
            return web.json_response({"error": f"usage records: {e}"}, status=503)
        return web.json_response(report)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/routes", routes)
    app.router.add_get("/v1/usage", usage_handler)
    app.router.add_get("/version", version)
    return app


def parse_listen(value: str) -> tuple[str, int]:
    """``"0.0.0.0:8080"`` / ``"[::1]:8080"`` / ``":8080"`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen address {value!r}: use HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
