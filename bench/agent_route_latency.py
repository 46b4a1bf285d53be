"""Create-to-routed and delete-to-baseline latency of a personal copy,
through real Traefik.

Real parts on loopback: the Kubernetes emulator (tests/support/kube.py),
Traefik reading it through its kubernetesCRD provider, a ``devstack agent``
process, and two upstream HTTP servers (baseline and copy). The emulator's
garbage collector is off, so after a delete the agent itself must remove
the copy's routes: the second figure measures the agent's path (Service
deleted -> watch event -> reconcile -> DELETE -> Traefik reloads).
(On the real API server, the same story is told, as tests, in
tests/cluster/test_routing_traefik.py; the benchmark stays on the emulator
so that its figures are the agent's and Traefik's, not the API server's.)

Each run creates a personal Service (and its EndpointSlice) for a new owner
and polls Traefik every 2 ms with that owner's routing key until the copy
answers; then deletes the Service and polls until the baseline answers
again, and until the agent has deleted the copy's IngressRoute (Traefik may
fall back before that, since it drops a route whose Service is gone).
Prints the median, p90 and max of each over the runs.

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
from collections.abc import Callable
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


def first_times(conditions: dict[str, Callable[[], bool]], timeout: float) -> tuple[float, ...]:
    """Poll every condition each 2 ms; the moment each first held, in order."""
    seen: dict[str, float] = {}
    deadline = time.perf_counter() + timeout
    while len(seen) < len(conditions):
        for name, condition in conditions.items():
            if name not in seen and condition():
                seen[name] = time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not within {timeout}s: {sorted(set(conditions) - set(seen))}")
        time.sleep(0.002)
    return tuple(seen[name] for name in conditions)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    base_port, copy_port = upstream(b"baseline"), upstream(b"copy")
    with tempfile.TemporaryDirectory() as tmp, running_emulator(garbage_collect=False) as kube:
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
            routes = emu.resource("traefik.io/v1alpha1", "ingressroutes")
            routed: list[float] = []
            fallback: list[float] = []
            cleaned: list[float] = []
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
                back, gone = first_times(
                    {
                        "back": lambda o=owner: who(traefik.url, o) == "baseline",
                        "gone": lambda o=owner: (
                            emu.get(routes, "dev", f"devstack-shop--{o}") is None
                        ),
                    },
                    30,
                )
                fallback.append(back - t2)
                cleaned.append(gone - t2)
        finally:
            stop(proc)
            traefik.stop()
    print(f"runs: {args.runs}")
    print("| step | median | p90 | max |")
    print("|---|---|---|---|")
    for name, values in (
        ("Service created -> first request routed through Traefik to the copy", routed),
        ("Service deleted -> traffic back on the baseline", fallback),
        ("Service deleted -> its IngressRoute deleted by the agent", cleaned),
    ):
        print(
            f"| {name} | {statistics.median(values) * 1000:.0f} ms "
            f"| {pct(values, 0.9) * 1000:.0f} ms | {max(values) * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
