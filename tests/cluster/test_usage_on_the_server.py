"""Usage attribution on the real control plane, where kwok's simulated node
starts and stops Pods: the agents' totals equal the integral this test
computes itself from the timestamps the API server reports, through a
leader change (the leader killed with SIGKILL) and a restart (the only agent
stopped, a new process started): nothing is lost, nothing counted twice.

Each agent is a process of its own (as in test_leader_on_the_server.py),
with a 1 s sampling interval and a 5 s Lease, watching this test's
namespace with the admin kubeconfig (the chart's RBAC is proven in
test_rbac.py). The testbed has no metrics-server: the API server's
discovery answers 404 for ``metrics.k8s.io`` and the report says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devstack.agent.kube import kube_client
from devstack.agent.metrics import Metrics
from devstack.agent.usage.actual import PodUsage
from devstack.agent.usage.ledger import ActualUsage, Prices
from devstack.agent.usage.model import GIB, parse_quantity
from devstack.agent.usage.service import UsageService, UsageSettings
from devstack.core.routing import OWNER_LABEL, TEAM_LABEL
from devstack.core.timestamps import parse_time
from tests.agent.helpers import fast_config
from tests.cluster.test_leader_on_the_server import AgentProcess
from tests.support.net import free_port
from tests.support.testbed import REPO, Kube, Testbed, wait_condition, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

Obj = dict[str, Any]
LEASE_NAME = "devstack-agent"
PRICES = Prices(core_hour=0.031, gib_hour=0.004, storage_gib_hour=0.0001, currency="EUR")
NUMBERS = (
    "cpu_core_seconds",
    "memory_gib_seconds",
    "pod_seconds",
    "storage_gib_seconds",
    "load_balancer_seconds",
)


def serve(argv: list[str]) -> None:
    """The agent process: ``KUBECONFIG NAMESPACE IDENTITY PORT``."""
    from devstack.agent.service import Agent
    from devstack.core import logging as devstack_logging

    kubeconfig, namespace, identity, port = argv
    devstack_logging.configure(json=True)
    config = fast_config(Path(kubeconfig), identity=identity, namespaces=(namespace,))
    config = dataclasses.replace(
        config,
        lease=dataclasses.replace(
            config.lease,
            namespace=namespace,
            name=LEASE_NAME,
            lease_duration=5.0,
            renew_deadline=4.0,
            retry_period=0.5,
        ),
        usage=UsageSettings(
            interval=1.0, settle=3.0, teams=(("alice", "payments"),), prices=PRICES
        ),
        listen_port=int(port),
    )

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Agent(config) as agent:
            waiter = asyncio.create_task(agent.wait())
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                waiter.result()
            waiter.cancel()

    asyncio.run(main())


@contextmanager
def agent_process(
    testbed: Testbed, namespace: str, identity: str, tmp_path: Path
) -> Iterator[AgentProcess]:
    log = tmp_path / f"{identity}.log"
    port = free_port()
    code = (
        "import sys; from tests.cluster.test_usage_on_the_server import serve; serve(sys.argv[1:])"
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(testbed.admin_kubeconfig), namespace, identity,
             str(port)],
            cwd=REPO,
            env={**os.environ, "DEVSTACK_LOG_FORMAT": "json"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    agent = AgentProcess(identity, port, log, proc)
    try:
        yield agent
    finally:
        killed = proc.poll() is not None
        if not killed:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        print(f"{identity} log ({log}):\n{log.read_text(errors='replace')[-3000:]}")
        if not killed:
            assert proc.returncode == 0, f"{identity} exited {proc.returncode}"


def usage(agent: AgentProcess, **query: str) -> Obj | None:
    r = agent.get("/v1/usage?" + "&".join(f"{k}={v}" for k, v in query.items()))
    return r.json() if r is not None and r.status_code == 200 else None


# --- what the cluster holds, as the API server tells it -----------------------------------


def _labels(owner: str, team: str | None) -> dict[str, str]:
    return {OWNER_LABEL: owner} | ({TEAM_LABEL: team} if team else {})


def _pod(
    namespace: str, name: str, owner: str, cpu: str, memory: str, team: str | None = None
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(owner, team)},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "example.invalid/never-pulled:1",
                    "resources": {"requests": {"cpu": cpu, "memory": memory}},
                }
            ]
        },
    }


@dataclasses.dataclass
class Held:
    """One thing an owner held, from the server's own timestamps."""

    owner: str
    team: str
    kind: str  # pod | pvc | lb
    since: float
    until: float | None = None
    cpu: float = 0.0
    memory: float = 0.0
    storage: float = 0.0


def _started(admin: Kube, path: str, owner: str, team: str) -> Held:
    pod = wait_for(lambda: (p := admin.get(path))["status"].get("startTime") and p, timeout=90)
    (c,) = pod["spec"]["containers"]
    req = c["resources"]["requests"]
    start = parse_time(pod["status"]["startTime"])
    assert start is not None
    return Held(owner, team, "pod", start, cpu=parse_quantity(req["cpu"]),
                memory=parse_quantity(req["memory"]))  # fmt: skip


def _deleted(admin: Kube, path: str, held: Held) -> None:
    """Delete (gracefully: 30 s) and note when, as the server records it."""
    gone = admin.delete(path)
    meta = gone["metadata"]
    requested = parse_time(meta["deletionTimestamp"])
    assert requested is not None
    held.until = requested - float(meta.get("deletionGracePeriodSeconds") or 0)
    wait_for(lambda: admin.maybe(path) is None, timeout=90)


def expected(held: list[Held], until: float) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for h in held:
        seconds = max(0.0, min(until, h.until if h.until is not None else until) - h.since)
        if seconds == 0:
            continue  # nothing held (a Job's pod that completed the second it started)
        row = out.setdefault((h.owner, h.team), dict.fromkeys(NUMBERS, 0.0))
        if h.kind == "pod":
            row["cpu_core_seconds"] += h.cpu * seconds
            row["memory_gib_seconds"] += h.memory / GIB * seconds
            row["pod_seconds"] += seconds
        elif h.kind == "pvc":
            row["storage_gib_seconds"] += h.storage / GIB * seconds
        else:
            row["load_balancer_seconds"] += seconds
    return out


def mismatch(report: Obj | None, held: list[Held]) -> list[str]:
    """How the report differs from the integral (empty: it does not)."""
    if report is None:
        return ["no report"]
    until = parse_time(report["until"])
    assert until is not None
    want = expected(held, until)
    # A row of zeros holds nothing, as ``expected`` leaves such a row out
    # (a Job's pod that completed the second it started, by the server's
    # one-second times, may be in a record whose watermark is that second).
    got = {
        (r["owner"], r["team"]): r for r in report["rows"] if any(r.get(name) for name in NUMBERS)
    }
    problems = []
    if set(got) != set(want):
        problems.append(f"rows {sorted(got)} != {sorted(want)}")
    for key, numbers in want.items():
        for name, value in numbers.items():
            have = got.get(key, {}).get(name)
            if have is None or abs(have - value) > 1e-6 * max(1.0, abs(value)):
                problems.append(f"{key} {name}: {have} != {value}")
    return problems


def converge(
    agent: AgentProcess, held: list[Held], *, after: float = 0.0, timeout: float = 30
) -> Obj:
    """Wait until ``agent``'s report reaches ``after`` and is the integral
    (its informers have seen what the test did); fail with the last
    difference."""
    last: list[list[str]] = [[]]

    def check() -> Obj | None:
        report = usage(agent)
        last[0] = mismatch(report, held)
        if report is not None and (parse_time(report["until"]) or 0.0) < after:
            last[0].append(f"until {report['until']} is before {after}")
        return report if not last[0] else None

    try:
        return dict(wait_for(check, timeout=timeout))
    except AssertionError:
        raise AssertionError(f"{agent.identity}'s report is not the integral: {last[0]}") from None


def _record_totals(admin: Kube, namespace: str) -> tuple[float, dict[tuple[str, str], float]]:
    """The watermark and the pod-seconds per (owner, team) of the day records."""
    import json

    items = admin.get(
        f"/api/v1/namespaces/{namespace}/configmaps", labelSelector="devstack.dev/role=usage"
    )["items"]
    totals: dict[tuple[str, str], float] = {}
    until = 0.0
    for cm in items:
        assert cm["metadata"]["name"] == f"{LEASE_NAME}-usage-{cm['data']['day']}"
        assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "devstack-agent"
        until = max(until, parse_time(cm["data"]["complete-until"]) or 0.0)
        for row in json.loads(cm["data"]["rows.json"]):
            key = (row["owner"], row["team"])
            totals[key] = totals.get(key, 0.0) + row["pod_seconds"]
    return until, totals


def _scrape(agent: AgentProcess) -> str:
    r = agent.get("/metrics")
    return r.text if r is not None and r.status_code == 200 else ""


def _leader(admin: Kube, namespace: str) -> str | None:
    lease = admin.maybe(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE_NAME}")
    return (lease or {}).get("spec", {}).get("holderIdentity") or None


def test_usage_is_the_integral_of_lifetimes_through_a_leader_change_and_a_restart(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"
    held: list[Held] = []
    with (
        agent_process(testbed, namespace, "agent-a", tmp_path) as a,
        agent_process(testbed, namespace, "agent-b", tmp_path) as b,
    ):
        wait_for(lambda: a.ready() and b.ready(), timeout=90)
        holder = wait_for(lambda: _leader(admin, namespace))
        leader, standby = (a, b) if holder == "agent-a" else (b, a)
        # the leader counts from when it started: everything below starts later
        first = wait_for(lambda: usage(leader))
        began = parse_time(first["until"])
        assert began is not None
        wait_for(lambda: time.time() > began + 1.5)

        # no metrics-server: discovery says 404, the report says so and guesses nothing
        assert admin.maybe("/apis/metrics.k8s.io/v1beta1") is None
        assert first["actual_usage"] == {
            "available": False,
            "reason": "metrics.k8s.io is not served: no metrics-server",
        }
        assert first["prices"] == dataclasses.asdict(PRICES)
        wait_for(lambda: "\ndevstack_usage_actual_available 0.0\n" in _scrape(leader))

        # alice (team payments by the agent's mapping) and bob (team search by
        # his label) start pods; carol's Job completes; alice has a PVC, bob a
        # LoadBalancer Service
        admin.create(_pod(namespace, "alice-1", "alice", "500m", "256Mi"))
        admin.create(_pod(namespace, "bob-1", "bob", "1", "1Gi", team="search"))
        admin.create(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "carol-once", "namespace": namespace},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "metadata": {"labels": _labels("carol", None)},
                        "spec": {
                            **_pod(namespace, "x", "carol", "250m", "64Mi")["spec"],
                            "restartPolicy": "Never",
                        },
                    },
                },
            }
        )
        pvc = admin.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "alice-data", "namespace": namespace,
                             "labels": _labels("alice", None)},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "2Gi"}}},
            }
        )  # fmt: skip
        lb = admin.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "bob-lb", "namespace": namespace,
                             "labels": _labels("bob", "search")},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": 8080}]},
            }
        )  # fmt: skip
        alice1 = _started(admin, f"{pods}/alice-1", "alice", "payments")
        bob1 = _started(admin, f"{pods}/bob-1", "bob", "search")
        wait_condition(admin, f"/apis/batch/v1/namespaces/{namespace}/jobs/carol-once", "Complete")
        (job_pod,) = admin.get(pods, labelSelector="batch.kubernetes.io/job-name=carol-once")[
            "items"
        ]
        carol = _started(admin, f"{pods}/{job_pod['metadata']['name']}", "carol", "")
        (status,) = admin.get(f"{pods}/{job_pod['metadata']['name']}")["status"][
            "containerStatuses"
        ]
        carol.until = parse_time(status["state"]["terminated"]["finishedAt"])
        held += [alice1, bob1, carol]
        created = parse_time(pvc["metadata"]["creationTimestamp"]) or 0.0
        volume = Held("alice", "payments", "pvc", created, storage=2 * GIB)
        held += [volume, Held("bob", "search", "lb",
                              parse_time(lb["metadata"]["creationTimestamp"]) or 0)]  # fmt: skip

        # the leader's report is the integral, up to its own "until" (now)
        converge(leader, held, after=time.time())

        # a standby answers from the records: complete up to their watermark
        def standby_report() -> Obj | None:
            report = usage(standby)
            until = parse_time((report or {}).get("until"))
            return report if until == _record_totals(admin, namespace)[0] else None

        report = wait_for(standby_report, timeout=30)
        assert not mismatch(report, held), mismatch(report, held)
        # a standby exposes no usage series; the leader does, per owner and team
        assert "devstack_usage_pod_seconds_total" not in _scrape(standby)
        assert "\ndevstack_usage_actual_available 0.0\n" in _scrape(standby)
        # each owner's series appears with the first sample that saw their pods:
        # wait for both owners, as their pods may be seen in different samples
        series = (
            'devstack_usage_pod_seconds_total{owner="alice",team="payments"}',
            'devstack_usage_cost_total{currency="EUR",owner="bob",team="search"}',
        )
        wait_for(lambda: all(s in _scrape(leader) for s in series))
        assert "devstack_usage_cpu_used_core_seconds_total" not in _scrape(leader)

        # alice's pod is deleted between two samples; then the leader dies
        _deleted(admin, f"{pods}/alice-1", alice1)
        wait_for(lambda: _record_totals(admin, namespace)[0] > (alice1.until or 0) + 1, timeout=30)
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        # while nobody leads, alice starts another pod and the PVC goes
        admin.create(_pod(namespace, "alice-2", "alice", "250m", "128Mi"))
        alice2 = _started(admin, f"{pods}/alice-2", "alice", "payments")
        held.append(alice2)
        gone = admin.delete(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/alice-data")
        volume.until = parse_time(gone["metadata"]["deletionTimestamp"])

        # the standby takes over and continues from the dead leader's watermark:
        # its records move past what happened while nobody led
        wait_for(lambda: _leader(admin, namespace) == standby.identity, timeout=90)
        latest = max(volume.until or 0.0, alice2.since)
        wait_for(lambda: _record_totals(admin, namespace)[0] > latest + 0.5, timeout=60)
        converge(standby, held, after=time.time())
        report = usage(standby)
        assert not mismatch(report, held), mismatch(report, held)

    # the only agent stopped (it released its Lease); a new process starts
    watermark, before = _record_totals(admin, namespace)
    with agent_process(testbed, namespace, "agent-c", tmp_path) as c:
        wait_for(lambda: _leader(admin, namespace) == "agent-c", timeout=90)
        # bob's pod is deleted while it leads
        _deleted(admin, f"{pods}/bob-1", bob1)
        wait_for(lambda: _record_totals(admin, namespace)[0] > (bob1.until or 0) + 0.5, timeout=60)
        converge(c, held, after=time.time(), timeout=60)
        report = usage(c)
        assert not mismatch(report, held), mismatch(report, held)

        # its counters hold what it added to the records since it took over
        # (counter semantics: a new process starts from zero), no more
        def counters_match() -> bool:
            until, after = _record_totals(admin, namespace)
            added = sum(after.values()) - sum(before.values())
            scraped = c.metric("devstack_usage_pod_seconds_total")
            return until > watermark and added > 0 and abs(scraped - added) < 1e-6

        wait_for(counters_match, timeout=30)
        # by team, and the cost at the configured prices
        by_team = usage(c, by="team", since="2w")
        assert by_team is not None
        teams = {r["team"]: r for r in by_team["rows"]}
        until = parse_time(by_team["until"]) or 0.0
        assert set(teams) == {team for _, team in expected(held, until)}
        assert {"payments", "search"} <= set(teams)
        assert all("owner" not in r for r in by_team["rows"])
        row = teams["payments"]
        assert row["cost"] == pytest.approx(
            (row["cpu_core_seconds"] * PRICES.core_hour
             + row["memory_gib_seconds"] * PRICES.gib_hour
             + row["storage_gib_seconds"] * PRICES.storage_gib_hour) / 3600, abs=1e-5
        )  # fmt: skip
        assert row["cpu_used_core_seconds"] is None
        costs = [r["cost"] for r in by_team["rows"]]
        assert costs == sorted(costs, reverse=True)
        # a bad query is a 400 that says what to write
        bad = c.get("/v1/usage?since=yesterday")
        assert bad is not None and bad.status_code == 400
        assert "use a duration (30m, 12h, 7d, 2w) or an RFC 3339 time" in bad.json()["error"]


class FakeMetricsServer:
    """Stands in for metrics-server behind the :class:`ActualUsageSource`
    seam: the testbed runs no metrics-server (kwok's node has no kubelet
    cAdvisor to scrape), so the measured rates come from the test. Everything
    else (the Pods, their lifetimes, the records) is the real server's."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.rates: dict[str, tuple[float, float]] = {}  # pod name -> (cores, bytes)
        self.samples = 0

    async def availability(self) -> ActualUsage:
        return ActualUsage(available=True)

    async def sample(self) -> list[PodUsage]:
        self.samples += 1
        return [PodUsage(self.namespace, n, c, m) for n, (c, m) in self.rates.items()]


async def test_actual_use_is_sampled_where_metrics_are_served(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    source = FakeMetricsServer(namespace)
    metrics = Metrics()
    async with kube_client(str(testbed.admin_kubeconfig)) as api:
        service = UsageService(
            api,
            UsageSettings(interval=0.5, settle=1.0),
            namespaces=(namespace,),
            record_namespace=namespace,
            lease_name="usage-test",
            metrics=metrics,
            is_leader=lambda: True,
            actual=source,
        )
        service.on_started_leading()
        task = asyncio.create_task(service.run())
        try:
            await asyncio.to_thread(
                admin.create, _pod(namespace, "dave-1", "dave", "1", "1Gi", team="infra")
            )
            path = f"/api/v1/namespaces/{namespace}/pods/dave-1"
            await asyncio.to_thread(_started, admin, path, "dave", "infra")
            source.rates["dave-1"] = (0.25, 0.5 * GIB)
            first = source.samples

            async def sampled() -> Obj:
                while True:
                    report = await service.report(since="1d", by="owner")
                    rows = report["rows"]
                    if source.samples >= first + 4 and rows and rows[0]["cpu_used_core_seconds"]:
                        return report
                    await asyncio.sleep(0.1)

            report = await asyncio.wait_for(sampled(), timeout=30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert report["actual_usage"] == {"available": True}
    (row,) = report["rows"]
    assert (row["owner"], row["team"]) == ("dave", "infra")
    # the measured rate, held between samples within the pod's life: a
    # quarter core and half a GiB for no longer than the pod lived
    assert row["memory_used_gib_seconds"] == pytest.approx(2 * row["cpu_used_core_seconds"])
    assert 0 < row["cpu_used_core_seconds"] <= 0.25 * row["pod_seconds"] + 1e-9
    text = metrics.render()
    assert "devstack_usage_actual_available 1.0" in text
    assert 'devstack_usage_cpu_used_core_seconds_total{owner="dave",team="infra"}' in text
