"""stock: the last of the shop's three services (web -> api -> stock).

It answers how many of an item are left and records each reservation on its
SQS queue, `reservations`, which `devstack provision` creates (declared under
`devstack.aws` in ../helmfile.yaml). Your copy gets its own queue, named
`<you>-reservations`: the environment says which (DEVSTACK_SQS_RESERVATIONS_URL).

Edit MESSAGE while `make up` runs: the sidecar syncs the change and restarts
your copy; a request tagged with your routing key, sent to web, shows it two
hops deep.
"""

import json
import os
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import boto3

from devstack.core.propagation import RoutingWSGIMiddleware, current_owner

MESSAGE = "stock from the shop example"
SERVICE = os.environ.get("DEVSTACK_SERVICE", "stock")
OWNER = os.environ.get("DEVSTACK_OWNER") or "baseline"
QUEUE_URL = os.environ.get("DEVSTACK_SQS_RESERVATIONS_URL", "")


def reserve(item: str) -> dict[str, object]:
    """Record the reservation on this copy's queue."""
    if not QUEUE_URL:
        return {"queue": None}
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=QUEUE_URL, MessageBody=json.dumps({"item": item, "by": OWNER}))
    return {"queue": os.environ.get("DEVSTACK_SQS_RESERVATIONS_NAME", QUEUE_URL), "sent": True}


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
            "left": 7,
            **reserve(path.strip("/") or "teapot"),
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
