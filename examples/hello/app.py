"""The example service `make up` runs: a tiny HTTP app with no dependencies.

Edit MESSAGE below while `make up` runs: the sidecar syncs the change,
restarts this process (the `supervise` reload strategy) and the next request
through your routing key shows it.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGE = "hello from the example service"
RESOURCE_PREFIXES = ("DEVSTACK_S3_", "DEVSTACK_SQS_", "DEVSTACK_SNS_", "DEVSTACK_DYNAMODB_")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (
            json.dumps(
                {
                    "service": os.environ.get("DEVSTACK_SERVICE", "hello"),
                    "owner": os.environ.get("DEVSTACK_OWNER") or "baseline",
                    "message": MESSAGE,
                    "routing_key": self.headers.get("x-devstack-route", ""),
                    "baggage": self.headers.get("baggage", ""),
                    # What `devstack provision` created for this copy (names and
                    # ARNs only: a secret's _VALUE never goes into a response).
                    "resources": {
                        k: v
                        for k, v in sorted(os.environ.items())
                        if k.startswith(RESOURCE_PREFIXES) and not k.endswith("_VALUE")
                    },
                },
                indent=2,
            ).encode()
            + b"\n"
        )
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"[{os.environ.get('DEVSTACK_OWNER') or 'baseline'}] " + fmt % args, flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(
        ("127.0.0.1" if os.environ.get("LOCAL") else "0.0.0.0", port), Handler
    )
    print(f"listening on {port}", flush=True)
    server.serve_forever()
