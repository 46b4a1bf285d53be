"""Two agents, one real ``coordination.k8s.io`` Lease on the testbed's API server.

Each agent is a process of its own, so the leader can be killed with
SIGKILL (it gets no chance to give its Lease up, as when its node dies).
The process runs ``devstack.agent.service.Agent``, the object `devstack
agent` runs, through :func:`serve` below rather than the command: the
command has no flag or environment variable for the lease timings (15 s
lease by default), and a short lease (5 s here) keeps the takeover quick.
Both watch one namespace and hold their Lease there, with the admin
kubeconfig (the chart's RBAC is proven in ``test_agent_on_the_server.py``).

What proves who wrote what: the API server's audit log (each agent's
requests carry its identity in their User-Agent, ``devstack-agent/<id>``;
the field manager, ``devstack-agent``, is the same for both), each agent's
own metrics (``devstack_agent_writes_total``) and log (``agent.write``),
and every object's ``resourceVersion``, ``generation`` and
``managedFields`` (one entry: written once, by one create).

The elector's arithmetic (it measures a holder's silence on its own clock
from when it last saw the record change) needs a clock the test moves, and
stays in ``tests/agent/test_leader.py``; the other cases that file had
(a released Lease is taken at once; of concurrent candidates exactly one
wins) run here, on the real server, with the elector alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.agent.desired import ingress_route_name, middleware_name
from devstack.agent.kube import LEASES, kube_client
from devstack.agent.leader import LeaderElector, LeaseSettings
from devstack.agent.service import Agent
from devstack.core import logging as devstack_logging
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL
from tests.agent.helpers import fast_config
from tests.support.net import free_port
from tests.support.testbed import REPO, Kube, Testbed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

Obj = dict[str, Any]
LEASE_NAME = "devstack-agent"
ADMIN_USER = "devstack-testbed-admin"  # the admin certificate's CN: the agents' user here
#: Short, but not so short that a busy machine makes the leader miss renewals.
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 5.0, 4.0, 0.5


# --- one agent process ---------------------------------------------------------------


def serve(argv: list[str]) -> None:
    """The agent process: ``KUBECONFIG NAMESPACE IDENTITY PORT``. Runs an
    :class:`Agent` until SIGTERM (then exits 0, having released its Lease)."""
    kubeconfig, namespace, identity, port = argv
    devstack_logging.configure(json=True)
    config = fast_config(Path(kubeconfig), identity=identity, namespaces=(namespace,))
    config = dataclasses.replace(
        config,
        lease=dataclasses.replace(
            config.lease,
            namespace=namespace,
            name=LEASE_NAME,
            lease_duration=LEASE_DURATION,
            renew_deadline=RENEW_DEADLINE,
            retry_period=RETRY_PERIOD,
        ),
        listen_port=int(port),
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with Agent(config) as agent:
            waiter = asyncio.create_task(agent.wait())
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                waiter.result()
            waiter.cancel()

    asyncio.run(main())


@dataclass
class AgentProcess:
    identity: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)
        except httpx.HTTPError:
            return None

    def metric(self, name: str) -> float:
        """The sum of every sample of ``name`` (0 when it has none)."""
        r = self.get("/metrics")
        assert r is not None and r.status_code == 200, self.identity
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in r.text.splitlines()
            if line.startswith((f"{name}{{", f"{name} "))
        )

    def ready(self) -> bool:
        r = self.get("/readyz")
        return r is not None and r.status_code == 200

    def events(self, event: str) -> list[Obj]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
        return out


@contextmanager
def agent_process(
    testbed: Testbed, namespace: str, identity: str, tmp_path: Path
) -> Iterator[AgentProcess]:
    """An agent process; stopped with SIGTERM on the way out (unless the
    test killed it), which must end it cleanly."""
    log = tmp_path / f"{identity}.log"
    port = free_port()
    code = (
        "import sys; from tests.cluster.test_leader_on_the_server import serve; serve(sys.argv[1:])"
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
        # shown with a failure (pytest prints what a failing test printed)
        print(f"{identity} log ({log}):\n{log.read_text(errors='replace')[-3000:]}")
        if not killed:
            assert proc.returncode == 0, f"{identity} exited {proc.returncode}"


# --- the story -------------------------------------------------------------------------


def _service(admin: Kube, namespace: str, name: str, owner: str | None = None) -> Obj:
    labels = {SERVICE_LABEL: "shop"} | ({OWNER_LABEL: owner} if owner else {})
    return admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8000}]},
        }
    )


def _paths(namespace: str, owner: str | None) -> list[str]:
    base = f"/apis/traefik.io/v1alpha1/namespaces/{namespace}"
    paths = [f"{base}/ingressroutes/{ingress_route_name('shop', owner)}"]
    if owner:
        paths.append(f"{base}/middlewares/{middleware_name('shop', owner)}")
    return paths


def _lease(admin: Kube, namespace: str) -> Obj | None:
    return admin.maybe(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE_NAME}")


def _traefik_writes(testbed: Testbed, namespace: str, identity: str, offset: int) -> list[str]:
    """From the API server's audit log: "verb resource/name" of every
    successful write the agent ``identity`` (its User-Agent) made on
    traefik.io objects in ``namespace`` after ``offset``."""
    out = []
    for e in testbed.audit_events(ADMIN_USER, offset=offset):
        ref = e.get("objectRef") or {}
        if (
            e.get("userAgent") == f"devstack-agent/{identity}"
            and e["verb"] in ("create", "update", "patch", "delete")
            and ref.get("apiGroup") == "traefik.io"
            and ref.get("namespace") == namespace
            and (e.get("responseStatus") or {}).get("code", 0) < 300
        ):
            out.append(f"{e['verb']} {ref['resource']}/{ref.get('name', '')}")
    return sorted(out)


def _written_once(obj: Obj) -> None:
    """Created and never written again: generation 1, one managedFields entry."""
    meta = obj["metadata"]
    assert meta["generation"] == 1, meta["name"]
    (entry,) = meta["managedFields"]
    assert (entry["manager"], entry["operation"]) == ("devstack-agent", "Update"), entry


def test_only_the_leader_writes_and_the_standby_takes_over_when_it_dies(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    offset = testbed.audit_offset()
    with (
        agent_process(testbed, namespace, "agent-a", tmp_path) as a,
        agent_process(testbed, namespace, "agent-b", tmp_path) as b,
    ):
        # both start; one takes the Lease, the other waits
        wait_for(lambda: a.ready() and b.ready(), timeout=90)
        lease = wait_for(lambda: _lease(admin, namespace))
        leader, standby = (a, b) if lease["spec"]["holderIdentity"] == "agent-a" else (b, a)
        assert lease["spec"]["holderIdentity"] == leader.identity
        wait_for(lambda: leader.metric("devstack_agent_is_leader") == 1)
        assert standby.metric("devstack_agent_is_leader") == 0

        # the team's shop and alice's copy of it: the leader routes them
        _service(admin, namespace, "shop")
        _service(admin, namespace, "shop-alice", owner="alice")
        first = _paths(namespace, None) + _paths(namespace, "alice")
        before = {p: wait_for(functools.partial(admin.maybe, p), timeout=90) for p in first}
        wait_for(lambda: leader.metric("devstack_agent_writes_total") == len(first))
        # the standby saw both Services too, and wrote nothing
        wait_for(lambda: standby.metric("devstack_agent_services") == 2)
        routes = standby.get("/v1/routes")
        assert routes is not None and routes.json()["leader"] is False
        assert [o["owner"] for o in routes.json()["services"][0]["owners"]] == ["alice"]
        assert standby.metric("devstack_agent_writes_total") == 0
        assert standby.events("agent.write") == []
        assert len(leader.events("agent.write")) == len(first)
        for obj in before.values():
            _written_once(obj)
        # and so says the API server's audit log
        created = [
            "create ingressroutes/" + ingress_route_name("shop", None),
            "create ingressroutes/" + ingress_route_name("shop", "alice"),
            "create middlewares/" + middleware_name("shop", "alice"),
        ]
        assert _traefik_writes(testbed, namespace, leader.identity, offset) == created
        assert _traefik_writes(testbed, namespace, standby.identity, offset) == []

        # the leader dies without a word: its Lease stays, unrenewed
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        assert _lease(admin, namespace)["spec"]["holderIdentity"] == leader.identity  # type: ignore[index]
        # meanwhile bob makes a copy
        _service(admin, namespace, "shop-bob", owner="bob")

        # once the Lease has expired, the standby takes it over and routes bob
        lease = wait_for(
            lambda: (
                (got := _lease(admin, namespace))
                and got["spec"]["holderIdentity"] == standby.identity
                and got
            ),
            timeout=90,
        )
        assert lease["spec"]["leaseTransitions"] == 1
        bob = {
            p: wait_for(functools.partial(admin.maybe, p), timeout=90)
            for p in _paths(namespace, "bob")
        }
        for obj in bob.values():
            _written_once(obj)
        # it wrote bob's objects only: nothing the dead leader wrote was written again
        wait_for(lambda: standby.metric("devstack_agent_writes_total") == len(bob))
        assert standby.metric("devstack_agent_is_leader") == 1
        for p, obj in before.items():
            now = admin.get(p)
            assert now["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"], p
            _written_once(now)
        assert [e["name"] for e in standby.events("agent.write")] == [
            middleware_name("shop", "bob"),
            ingress_route_name("shop", "bob"),
        ]
        assert _traefik_writes(testbed, namespace, standby.identity, offset) == [
            "create ingressroutes/" + ingress_route_name("shop", "bob"),
            "create middlewares/" + middleware_name("shop", "bob"),
        ]
        assert _traefik_writes(testbed, namespace, leader.identity, offset) == created


# --- the elector alone, on the real server ----------------------------------------------


def _settings(namespace: str, identity: str) -> LeaseSettings:
    return LeaseSettings(namespace=namespace, name="lock", identity=identity, lease_duration=10)


async def test_a_released_lease_is_taken_at_once(testbed: Testbed, namespace: str) -> None:
    async with kube_client(str(testbed.admin_kubeconfig)) as api:
        a = LeaderElector(api, _settings(namespace, "a"))
        b = LeaderElector(api, _settings(namespace, "b"))
        assert await a.try_acquire_or_renew() is True
        assert await b.try_acquire_or_renew() is False  # a holds it, 10 s to go
        a._leader = True  # as run() would have set it
        await a.release()
        assert not a.is_leader
        released = await api.get(LEASES, namespace=namespace, name="lock")
        assert released["spec"]["holderIdentity"] in ("", None)
        assert await b.try_acquire_or_renew() is True  # no wait for the 10 s
        lease = await api.get(LEASES, namespace=namespace, name="lock")
        assert lease["spec"]["holderIdentity"] == "b"


async def test_of_concurrent_candidates_exactly_one_wins(testbed: Testbed, namespace: str) -> None:
    """The real server's create (409 for all but one) and conditional
    replace (409 on a stale resourceVersion) decide, not the electors."""
    async with kube_client(str(testbed.admin_kubeconfig)) as api:
        electors = [LeaderElector(api, _settings(namespace, f"r{i}")) for i in range(5)]
        # all at once, on a Lease that does not exist yet
        results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
        assert sum(results) == 1
        lease = await api.get(LEASES, namespace=namespace, name="lock")
        (winner,) = [e for e, won in zip(electors, results, strict=True) if won]
        assert lease["spec"]["holderIdentity"] == winner.settings.identity
        # the holder's Lease expires, released: again all at once, on the same record
        winner._leader = True
        await winner.release()
        results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
        assert sum(results) == 1
