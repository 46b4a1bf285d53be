"""Create-to-routed latency of a personal copy, through real Traefik.

Real parts on loopback: the Kubernetes emulator (tests/support/kube.py),
Traefik reading it through its kubernetesCRD provider, a ``devstack agent``
process, and two upstream HTTP servers (baseline and copy).

Each run creates a personal Service (and its EndpointSlice) for a new owner
and polls Traefik every 2 ms with that owner's routing key until the copy
answers; then deletes the Service and polls until the baseline answers
again. Prints the median, p90 and max of both over the runs.

Usage: .venv/bin/python bench/agent_route_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent_common import http_ok, start_agent, stop, wait

from tests.support.kube import running_emulator
from tests.support.traefik import CrdTraefik


def upstream(answer: bytes) -> int:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def who(url: str, owner: str) -> str:
    req = urllib.request.Request(
        url, headers={"Host": "shop.localtest.me", "x-devstack-route": owner}
    )
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return str(r.read().decode())
    except (urllib.error.URLError, OSError):
        return ""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    base_port, copy_port = upstream(b"baseline"), upstream(b"copy")
    with tempfile.TemporaryDirectory() as tmp, running_emulator() as kube:
        workdir = Path(tmp)
        emu = kube.emulator
        services = emu.resource("v1", "services")
        emu.register_service(
            namespace="dev", name="shop", port=base_port, labels={"devstack.dev/service": "shop"}
        )
        traefik = CrdTraefik(workdir, kube.url).start()
        proc, port = start_agent(kube, workdir)
        try:
            wait(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 60)
            wait(lambda: who(traefik.url, "nobody") == "baseline", 60)
            routed: list[float] = []
            fallback: list[float] = []
            for i in range(args.runs):
                owner = f"u{i}"
                t0 = time.perf_counter()
                emu.register_service(
                    namespace="dev",
                    name=f"shop-{owner}",
                    port=copy_port,
                    labels={"devstack.dev/service": "shop", "devstack.dev/owner": owner},
                )
                t1 = wait(lambda o=owner: who(traefik.url, o) == "copy", 30, 0.002)
                routed.append(t1 - t0)
                t2 = time.perf_counter()
                emu.delete(services, "dev", f"shop-{owner}")
                t3 = wait(lambda o=owner: who(traefik.url, o) == "baseline", 30, 0.002)
                fallback.append(t3 - t2)
        finally:
            stop(proc)
            traefik.stop()
    print(f"runs: {args.runs}")
    print("| step | median | p90 | max |")
    print("|---|---|---|---|")
    for name, values in (
        ("create Service -> first request routed to the copy", routed),
        ("delete Service -> traffic back on the baseline", fallback),
    ):
        print(
            f"| {name} | {statistics.median(values) * 1000:.0f} ms "
            f"| {pct(values, 0.9) * 1000:.0f} ms | {max(values) * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
