"""api: the middle of the shop's three services (web -> api -> stock).

It asks stock through the router (Traefik) and passes the routing key on with
devstack's propagation helpers: a request tagged for your copies reaches your
copy of stock even when it goes through the baseline of api.

Edit MESSAGE while `make up` runs to see your copy reload.
"""

import json
import os
import urllib.request
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from devstack.core.propagation import RoutingWSGIMiddleware, current_owner, outbound_headers

MESSAGE = "api from the shop example"
SERVICE = os.environ.get("DEVSTACK_SERVICE", "api")
OWNER = os.environ.get("DEVSTACK_OWNER") or "baseline"
#: The router every service calls the others through, and their host names.
ROUTER = os.environ.get("DEVSTACK_ROUTER_URL", "http://127.0.0.1:8088")
STOCK_HOST = os.environ.get("STOCK_HOST", "stock.localtest.me")


def call(host: str, path: str) -> object:
    """GET ``path`` of the service at ``host``, tagged as the request being handled."""
    headers = {"Host": host, **outbound_headers()}
    req = urllib.request.Request(ROUTER + path, headers=headers)  # noqa: S310 (our router)
    with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310
        return json.loads(resp.read())


def app(environ, start_response):  # type: ignore[no-untyped-def]
    path = environ.get("PATH_INFO", "/")
    if path == "/healthz":
        body: dict[str, object] = {"ok": True}
    else:
        body = {
            "service": SERVICE,
            "owner": OWNER,
            "message": MESSAGE,
            "routing_key": current_owner() or "",
            "stock": call(STOCK_HOST, path),
        }
    data = json.dumps(body, indent=2).encode() + b"\n"
    start_response("200 OK", [("content-type", "application/json")])
    return [data]


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, fmt: str, *args: object) -> None:
        print(f"[{SERVICE} {OWNER}] " + fmt % args, flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    host = "127.0.0.1" if os.environ.get("LOCAL") else "0.0.0.0"
    server = make_server(host, port, RoutingWSGIMiddleware(app), Server, Quiet)
    print(f"{SERVICE} ({OWNER}) listening on {port}", flush=True)
    server.serve_forever()
