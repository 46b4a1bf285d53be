"""The agent at scale: OWNERS x SERVICES personal copies plus a baseline each.

Real parts on loopback: the Kubernetes emulator (tests/support/kube.py, which
validates every Traefik object against its CRD schema) and a ``devstack
agent`` process. The emulator's garbage collector is off, so deletions
measure the agent's own path (Service deleted -> watch event -> reconcile
-> DELETE).

Why the emulator and not the testbed's real API server: this measures the
agent, and the emulator answers in-process, faster than the agent asks.
Measured on the shared 2-core machine (2026-12-02) at 20 services x 50
owners: the cold start wrote its 2,020 objects in 3.1 s here (agent CPU
2.3 s) and in 8.5 s on the testbed (agent CPU 3.2 s, kube-apiserver 22 s
of CPU and 480 MiB, counting the 1,020 Services, which one client creates
at about 80-160 a second). The default size, 20 times that, would take
minutes of API server time and measure its write rate, not the agent's.
Measures:

1. cold start: from starting the agent to every IngressRoute and Middleware
   written (2 per copy, 1 per baseline), and the agent's peak RSS;
2. one change at that size: a new copy created -> its objects written;
   a copy deleted -> its objects gone (the median of ``--changes`` of each);
3. warm restart: a new agent process over objects that are already right:
   time until it has looked at every key, how many writes it made (should
   be 0), and its RSS (it lists every object at once).

Usage: .venv/bin/python bench/agent_scale.py [--owners 1000] [--services 20] [--changes 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from agent_common import cpu_seconds, http_ok, metrics, rss_kib, start_agent, stop, wait

from tests.support.kube import running_emulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=1000)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument(
        "--changes", type=int, default=5, help="single changes timed (the median is shown)"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_emulator(history_limit=1000, garbage_collect=False) as kube,
    ):
        workdir = Path(tmp)
        emu = kube.emulator
        services = emu.resource("v1", "services")
        routes = emu.resource("traefik.io/v1alpha1", "ingressroutes")
        middlewares = emu.resource("traefik.io/v1alpha1", "middlewares")
        for s in range(args.services):
            name = f"svc{s}"
            spec = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            emu.create(
                services,
                {
                    "metadata": {
                        "name": name,
                        "namespace": "dev",
                        "labels": {"devstack.dev/service": name},
                    },
                    "spec": spec,
                },
            )
            for o in range(args.owners):
                emu.create(
                    services,
                    {
                        "metadata": {
                            "name": f"{name}-o{o}",
                            "namespace": "dev",
                            "labels": {
                                "devstack.dev/service": name,
                                "devstack.dev/owner": f"o{o}",
                            },
                        },
                        "spec": spec,
                    },
                )
        copies = args.services * args.owners
        want_routes = copies + args.services
        want_mw = copies
        print(f"services: {args.services}, owners: {args.owners}, copies: {copies}")
        print(f"objects to write: {want_routes} IngressRoutes + {want_mw} Middlewares")

        t0 = time.perf_counter()
        proc, port = start_agent(kube, workdir)
        peak_rss = 0

        def done() -> bool:
            nonlocal peak_rss
            peak_rss = max(peak_rss, rss_kib(proc.pid)[1])
            return emu.count(routes) == want_routes and emu.count(middlewares) == want_mw

        try:
            ready_at = wait(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 300, 0.05)
            done_at = wait(done, 1800, 0.05)
            rss_now, peak = rss_kib(proc.pid)
            peak = max(peak, peak_rss)
            print("| measure | value |")
            print("|---|---|")
            print(f"| cold start: agent ready (caches synced) | {ready_at - t0:.2f} s |")
            print(f"| cold start: all objects written (reconcile time) | {done_at - t0:.2f} s |")
            rss = f"{rss_now / 1024:.0f} MiB / {peak / 1024:.0f} MiB"
            print(f"| agent RSS after cold start / peak | {rss} |")
            cpu = cpu_seconds(proc.pid)
            print(f"| agent CPU time for the cold start (rest: the emulator) | {cpu:.1f} s |")

            created, deleted = [], []
            for n in range(args.changes):
                owner = f"newcomer{n}"
                route = f"devstack-svc0--{owner}"
                t1 = time.perf_counter()
                emu.create(
                    services,
                    {
                        "metadata": {
                            "name": f"svc0-{owner}",
                            "namespace": "dev",
                            "labels": {
                                "devstack.dev/service": "svc0",
                                "devstack.dev/owner": owner,
                            },
                        },
                        "spec": {"ports": [{"name": "http", "port": 80}]},
                    },
                )
                t2 = wait(lambda r=route: emu.get(routes, "dev", r) is not None, 60, 0.001)
                created.append((t2 - t1) * 1000)
                t3 = time.perf_counter()
                emu.delete(services, "dev", f"svc0-{owner}")
                t4 = wait(lambda r=route: emu.get(routes, "dev", r) is None, 60, 0.001)
                deleted.append((t4 - t3) * 1000)
                # (its Middleware goes right after; wait for it so the next starts clean)
                wait(lambda r=route: emu.get(middlewares, "dev", f"{r}-route") is None, 60)
            ms = statistics.median(created)
            print(f"| one change at size: copy created -> its IngressRoute written | {ms:.0f} ms |")
            ms = statistics.median(deleted)
            print(f"| one change at size: copy deleted -> its IngressRoute gone | {ms:.0f} ms |")
        finally:
            stop(proc)

        # Warm restart over objects that are already right.
        writes_before = len(
            [
                r
                for r in emu.log
                if r.plural in ("ingressroutes", "middlewares")
                and r.verb in ("create", "patch", "update", "delete")
            ]
        )
        t5 = time.perf_counter()
        proc, port = start_agent(kube, workdir, identity="bench-2")
        keys = copies + args.services
        try:
            wait(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 300, 0.05)
            t6 = wait(
                lambda: (
                    metrics(port).get('devstack_agent_reconciles_total{result="ok"}', 0) >= keys
                ),
                600,
                0.1,
            )
            writes_after = len(
                [
                    r
                    for r in emu.log
                    if r.plural in ("ingressroutes", "middlewares")
                    and r.verb in ("create", "patch", "update", "delete")
                ]
            )
            rss_now, peak = rss_kib(proc.pid)
            print(f"| warm restart: every key checked | {t6 - t5:.2f} s |")
            print(f"| warm restart: writes made | {writes_after - writes_before} |")
            rss = f"{rss_now / 1024:.0f} MiB / {peak / 1024:.0f} MiB"
            print(f"| agent RSS after warm restart / peak | {rss} |")
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
