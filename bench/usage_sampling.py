"""The agent's usage sampling at scale: OWNERS owners with PODS Pods each.

Real parts on loopback: the Kubernetes emulator (tests/support/kube.py) and
two ``devstack agent`` processes, measured one after the other in the same
run: one over an empty namespace (the peer: what the agent costs with
nothing to attribute) and one over OWNERS x PODS running Pods. The emulator
rather than the testbed's API server for the same reason as agent_scale.py:
this measures the agent, and 5,000 Pods through the real API server measure
its write rate.

Measures, per agent:

1. its RSS once every Pod is in the usage records;
2. its CPU time per sampling interval, steady (nothing changes);
3. the same while CHURN Pods are deleted and CHURN new ones start each
   interval (Pods coming and going between samples);

and checks the records against the integral the benchmark computes itself
from the Pods' start and deletion times since the agent started
(pod-seconds; the records begin when the first agent leads, a moment
after it starts, so the records hold slightly less).

Usage: .venv/bin/python bench/usage_sampling.py [--owners 1000] [--pods 5]
       [--interval 2] [--intervals 10] [--churn 50]
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent_common import cpu_seconds, http_ok, rss_kib, start_agent, stop, wait

from tests.support.kube import EmulatorThread, running_emulator

NAMESPACE = "dev"


def rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(owner: int, index: int, started: float) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"o{owner}-p{index}",
            "namespace": NAMESPACE,
            "labels": {
                "devstack.dev/service": f"svc{index}",
                "devstack.dev/owner": f"o{owner}",
                "devstack.dev/team": f"team{owner % 10}",
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "app",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                },
                {
                    "name": "devstack-sidecar",
                    "image": "sidecar",
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                },
            ]
        },
        "status": {"phase": "Running", "startTime": rfc3339(started)},
    }


def usage(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/v1/usage?since=1d&by=owner", timeout=30
    ) as r:
        doc: dict[str, Any] = json.loads(r.read())
        return doc


def measure(
    kube: EmulatorThread, workdir: Path, args: argparse.Namespace, *, owners: int, label: str
) -> dict[str, str]:
    emu = kube.emulator
    pods = emu.resource("v1", "pods")
    started = time.time() - 3600
    spans: dict[str, tuple[float, float | None]] = {}
    for o in range(owners):
        for i in range(args.pods):
            obj = pod(o, i, started)
            emu.create(pods, obj)
            spans[obj["metadata"]["name"]] = (float(int(started)), None)
    flags = ["--namespace", NAMESPACE, "--usage-interval", f"{args.interval}s", "--no-sleep"]
    t0, wall0 = time.perf_counter(), time.time()
    proc, port = start_agent(kube, workdir, identity=f"bench-{label}", args=flags)
    out: dict[str, str] = {}
    try:
        wait(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 300, 0.05)
        if owners:
            wait(lambda: len(usage(port)["rows"]) >= owners, 600, 0.2)
        else:
            wait(lambda: "rows" in usage(port), 60, 0.2)
        out["ready"] = f"{time.perf_counter() - t0:.2f} s"
        time.sleep(args.interval)  # one more flush, so the window starts in steady state
        c0, w0 = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(args.interval * args.intervals)
        c1, w1 = cpu_seconds(proc.pid), time.perf_counter()
        per = (c1 - c0) / ((w1 - w0) / args.interval)
        out["steady"] = f"{per * 1000:.0f} ms"
        out["rss"] = f"{rss_kib(proc.pid)[0] / 1024:.0f} MiB"
        if owners and args.churn:
            c2, w2 = cpu_seconds(proc.pid), time.perf_counter()
            serial = 0
            for _ in range(args.intervals):
                tick = time.perf_counter()
                for k in range(args.churn):
                    victim = f"o{(serial + k) % owners}-p{(serial // owners) % args.pods}"
                    if spans.get(victim, (0.0, 0.0))[1] is None and emu.get(
                        pods, NAMESPACE, victim
                    ):
                        emu.delete(pods, NAMESPACE, victim)
                        spans[victim] = (spans[victim][0], time.time())
                    now = time.time()
                    obj = pod((serial + k) % owners, 1000 + serial + k, now)
                    emu.create(pods, obj)
                    spans[obj["metadata"]["name"]] = (float(int(now)), None)
                serial += args.churn
                time.sleep(max(0.0, args.interval - (time.perf_counter() - tick)))
            c3, w3 = cpu_seconds(proc.pid), time.perf_counter()
            per = (c3 - c2) / ((w3 - w2) / args.interval)
            out["churn"] = f"{per * 1000:.0f} ms"
            out["rss_churn"] = f"{rss_kib(proc.pid)[0] / 1024:.0f} MiB"
            doc = usage(port)
            until = datetime.datetime.fromisoformat(doc["until"]).timestamp()
            # The records begin when the first agent led (just after wall0).
            want = sum(
                max(0.0, min(until if end is None else end, until) - max(start, wall0))
                for start, end in spans.values()
            )
            got = doc["totals"]["pod_seconds"]
            out["pod_seconds"] = f"{got:.0f} (lifetimes since the agent started: {want:.0f})"
    finally:
        stop(proc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="sampling interval (s)")
    parser.add_argument("--intervals", type=int, default=10, help="intervals measured")
    parser.add_argument("--churn", type=int, default=50, help="Pods replaced per interval")
    args = parser.parse_args()
    results = {}
    for label, owners in (("empty", 0), ("full", args.owners)):
        with (
            tempfile.TemporaryDirectory() as tmp,
            running_emulator(history_limit=1000, garbage_collect=False) as kube,
        ):
            results[label] = measure(kube, Path(tmp), args, owners=owners, label=label)
    empty, full = results["empty"], results["full"]
    print(f"owners: {args.owners}, pods each: {args.pods}, interval: {args.interval:g} s")
    print("| measure | no Pods (peer) | with the Pods |")
    print("|---|---|---|")
    print(f"| agent ready, every owner in the records | {empty['ready']} | {full['ready']} |")
    print(f"| agent RSS | {empty['rss']} | {full['rss']} |")
    print(f"| agent CPU per interval, steady | {empty['steady']} | {full['steady']} |")
    if "churn" in full:
        print(f"| agent CPU per interval, {args.churn} Pods replaced each | - | {full['churn']} |")
        print(f"| agent RSS after the churn | - | {full['rss_churn']} |")
        print(f"| pod-seconds in the records | - | {full['pod_seconds']} |")


if __name__ == "__main__":
    main()
