"""The agent (in this process: its controller, Lease and HTTP API) against
the testbed's real API server: what it writes, when it does not write, and
how it recovers (410 Gone after an API server restart, a restart of its
own, a second replica, a TTL), one serial worker per route key, and its
metrics.

Each test's agent watches only that test's namespace and keeps its Lease
there. It runs with the admin's credentials: RBAC under the chart's own
rules is tests/cluster/test_agent_on_the_server.py's business.

The real garbage collector deletes a Service's routes through their owner
references. To see what the agent itself deletes, a test deletes the
Service with ``propagationPolicy: Orphan``: the collector then strips the
owner references instead of deleting the routes, so only the agent can
remove them.

What stays on the emulator: an exact sequence of injected 500s and 429s
(tests/agent/test_controller.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.agent.controller import RouteKey
from devstack.agent.kube import KubeApi, RawObject, traefik_resources
from devstack.agent.plan import Step
from devstack.agent.service import Agent, AgentConfig
from devstack.agent.writer import KubeWriter, kinds
from devstack.core.routing import (
    EXPIRES_AT_ANNOTATION,
    OWNER_LABEL,
    SERVICE_LABEL,
    TTL_ANNOTATION,
)
from tests.agent.helpers import controller_settled, fast_config, running_controller
from tests.support.net import eventually
from tests.support.testbed import Kube, Testbed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TRAEFIK = ("ingressroutes", "middlewares")
ALICE = {"ingressroutes/devstack-shop--alice", "middlewares/devstack-shop--alice-route"}

#: A control plane on a busy 2-core machine: generous waits.
soon = functools.partial(eventually, timeout=90, interval=0.05)


def config(testbed: Testbed, namespace: str, *, identity: str = "agent-a") -> AgentConfig:
    """The agent of these tests: the admin's kubeconfig, this test's
    namespace only, and its Lease there."""
    base = fast_config(testbed.admin_kubeconfig, identity=identity, namespaces=(namespace,))
    return dataclasses.replace(base, lease=dataclasses.replace(base.lease, namespace=namespace))


def routes_of(admin: Kube, namespace: str) -> dict[str, dict[str, Any]]:
    """``"<plural>/<name>" -> object`` of the Traefik objects in ``namespace``."""
    out = {}
    for plural in TRAEFIK:
        listed = admin.get(f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/{plural}")
        for obj in listed["items"]:
            out[f"{plural}/{obj['metadata']['name']}"] = obj
    return out


def versions(admin: Kube, namespace: str) -> dict[str, str]:
    return {k: o["metadata"]["resourceVersion"] for k, o in routes_of(admin, namespace).items()}


def add_copy(
    admin: Kube,
    namespace: str,
    name: str,
    service: str,
    owner: str | None = None,
    *,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = {SERVICE_LABEL: service}
    if owner:
        labels[OWNER_LABEL] = owner
    return admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations or {},
            },
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9}]},
        }
    )


def service_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services/{name}"


def orphaning_delete(admin: Kube, namespace: str, name: str) -> None:
    """Delete a Service so that the garbage collector leaves its dependents
    (it strips their owner references): only the agent can delete them."""
    admin.request(
        "DELETE",
        service_path(namespace, name),
        {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Orphan"},
    )
    wait_for(lambda: admin.maybe(service_path(namespace, name)) is None)


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig) -> AsyncIterator[Agent]:
    async with Agent(cfg) as agent:
        yield agent


async def settled(agent: Agent) -> None:
    """Wait until the agent is synced, leading and has nothing left to do."""
    assert agent.controller is not None and agent.elector is not None
    controller, elector = agent.controller, agent.elector
    await soon(lambda: controller.ready and elector.is_leader)
    await soon(lambda: controller.idle.is_set() and not controller.busy)


async def get_json(agent: Agent, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{agent.port}{path}") as r,
    ):
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


def _at(delta: datetime.timedelta) -> str:
    return (datetime.datetime.now(datetime.UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_the_agent_routes_each_copy_with_owned_labelled_objects(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    base = add_copy(admin, namespace, "shop", "shop")
    alice = add_copy(admin, namespace, "shop-alice", "shop", "alice")
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        objs = routes_of(admin, namespace)
        assert set(objs) == {"ingressroutes/devstack-shop", *ALICE}
        for key, obj in objs.items():
            meta = obj["metadata"]
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "devstack"
            owner = base if key.endswith("devstack-shop") else alice
            assert [r["uid"] for r in meta["ownerReferences"]] == [owner["metadata"]["uid"]]

        status, body = await get_json(agent, "/readyz")
        assert status == 200 and body == {"ready": True}
        status, body = await get_json(agent, "/healthz")
        assert status == 200
        status, body = await get_json(agent, "/v1/routes")
        assert status == 200
        assert body["services"] == [
            {
                "service": "shop",
                "host": "shop.localtest.me",
                "baseline": {"namespace": namespace, "name": "shop"},
                "preview_url": "http://shop.preview.localtest.me",
                "owners": [
                    {
                        "owner": "alice",
                        "namespace": namespace,
                        "name": "shop-alice",
                        "preview_url": "http://shop--alice.preview.localtest.me",
                        "expires_at": None,
                        "expired": False,
                        "asleep_since": None,
                    }
                ],
            }
        ]
        status, text = await get_json(agent, "/metrics")
        assert status == 200
        assert 'devstack_agent_writes_total{kind="IngressRoute",verb="create"} 2' in text
        assert "devstack_agent_is_leader 1" in text
        # its Lease, on the server
        lease = admin.get(
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/devstack-agent"
        )
        assert lease["spec"]["holderIdentity"] == "agent-a"


async def test_the_agent_itself_removes_a_deleted_copys_objects(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    add_copy(admin, namespace, "shop", "shop")
    add_copy(admin, namespace, "shop-alice", "shop", "alice")
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        assert len(routes_of(admin, namespace)) == 3
        orphaning_delete(admin, namespace, "shop-alice")
        await soon(lambda: set(routes_of(admin, namespace)) == {"ingressroutes/devstack-shop"})


async def test_routes_of_a_service_deleted_while_the_agent_was_down_go_when_it_starts(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    add_copy(admin, namespace, "shop", "shop")
    add_copy(admin, namespace, "shop-alice", "shop", "alice")
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
    assert len(routes_of(admin, namespace)) == 3
    # With the agent down, alice's Service goes; nothing else cleans up (the
    # collector only strips the routes' owner references).
    orphaning_delete(admin, namespace, "shop-alice")
    left = routes_of(admin, namespace)
    assert set(left) == {"ingressroutes/devstack-shop", *ALICE}
    await soon(
        lambda: (
            not any(
                o["metadata"].get("ownerReferences")
                for k, o in routes_of(admin, namespace).items()
                if k in ALICE
            )
        )
    )
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        await soon(lambda: set(routes_of(admin, namespace)) == {"ingressroutes/devstack-shop"})


async def test_a_restarted_agent_rewrites_nothing_that_is_already_right(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    add_copy(admin, namespace, "shop", "shop")
    add_copy(admin, namespace, "shop-alice", "shop", "alice")
    add_copy(admin, namespace, "cart-bob", "cart", "bob")
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
    before = versions(admin, namespace)
    assert len(before) == 5
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        assert agent.controller is not None and agent.controller.reconciles >= 3
        _, text = await get_json(agent, "/metrics")
        assert "devstack_agent_writes_total{" not in text
    # a write, even one that changes nothing, would move a resourceVersion
    assert versions(admin, namespace) == before


async def test_a_410_after_an_api_server_restart_relists_and_converges(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    """The restarted API server fills its watch cache afresh, so the agent's
    watch from its old resourceVersion is answered 410 Gone: it relists,
    and converges on what changed around the restart."""
    add_copy(admin, namespace, "shop", "shop")
    add_copy(admin, namespace, "shop-alice", "shop", "alice")
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        assert agent.controller is not None
        informer = agent.controller.service_informers[0]
        assert informer.lists == 1
        # blocking, from the main thread: the API server dies with the
        # thread that started it (PR_SET_PDEATHSIG), so never from a worker
        testbed.restart_apiserver()
        orphaning_delete(admin, namespace, "shop-alice")
        add_copy(admin, namespace, "shop-bob", "shop", "bob")
        await soon(lambda: informer.lists >= 2)
        await soon(
            lambda: (
                set(routes_of(admin, namespace))
                == {
                    "ingressroutes/devstack-shop",
                    "ingressroutes/devstack-shop--bob",
                    "middlewares/devstack-shop--bob-route",
                }
            )
        )
        gone = agent.metrics.get(
            "devstack_agent_watch_restarts_total", resource="services@" + namespace, reason="gone"
        )
        assert gone >= 1


async def test_with_two_agents_only_the_leader_writes(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    """Two replicas, one real Lease: the follower writes nothing (by its own
    count), the Lease on the server names the leader, and when the leader
    goes, the follower takes the Lease over and writes."""
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/devstack-agent"
    add_copy(admin, namespace, "shop", "shop")
    async with (
        running(config(testbed, namespace, identity="agent-a")) as a,
        running(config(testbed, namespace, identity="agent-b")) as b,
    ):
        assert a.elector is not None and b.elector is not None
        await soon(lambda: a.elector.is_leader or b.elector.is_leader)  # type: ignore[union-attr]
        leader, follower = (a, b) if a.elector.is_leader else (b, a)
        await settled(leader)
        add_copy(admin, namespace, "shop-alice", "shop", "alice")
        await soon(lambda: len(routes_of(admin, namespace)) == 3)
        assert follower.elector is not None and not follower.elector.is_leader
        holder = admin.get(lease_path)["spec"]["holderIdentity"]
        assert holder == leader.config.lease.identity
        assert leader.metrics.get("devstack_agent_writes_total", verb="create", kind="Middleware")
        _, text = await get_json(follower, "/metrics")
        assert "devstack_agent_writes_total{" not in text
        # Both replicas serve /v1/routes; only one says it leads.
        _, seen_by_follower = await get_json(follower, "/v1/routes")
        assert seen_by_follower["leader"] is False
        assert seen_by_follower["services"][0]["owners"][0]["owner"] == "alice"

        # The leader goes away; the other one takes over and writes.
        await leader.__aexit__(None, None, None)
        await settled(follower)
        assert admin.get(lease_path)["spec"]["holderIdentity"] == follower.config.lease.identity
        add_copy(admin, namespace, "shop-bob", "shop", "bob")
        await soon(lambda: len(routes_of(admin, namespace)) == 5)
        assert follower.metrics.get(
            "devstack_agent_writes_total", verb="create", kind="IngressRoute"
        )


async def test_an_expired_copy_loses_its_routes_and_is_reported(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    add_copy(admin, namespace, "shop", "shop")
    add_copy(
        admin,
        namespace,
        "shop-alice",
        "shop",
        "alice",
        annotations={EXPIRES_AT_ANNOTATION: _at(datetime.timedelta(seconds=4))},
    )
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        await soon(lambda: set(routes_of(admin, namespace)) == {"ingressroutes/devstack-shop"})
        _, body = await get_json(agent, "/v1/routes")
        (owner,) = body["services"][0]["owners"]
        assert owner["owner"] == "alice" and owner["expired"] is True
        assert agent.metrics.get("devstack_agent_expired_copies") == 1
        assert agent.metrics.get("devstack_agent_copy_expirations_total") == 1
        # The Service itself is left alone: only its routes go.
        assert admin.maybe(service_path(namespace, "shop-alice")) is not None


async def test_an_edited_route_is_put_back(testbed: Testbed, admin: Kube, namespace: str) -> None:
    add_copy(admin, namespace, "shop", "shop")
    path = f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/ingressroutes/devstack-shop"
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        original = admin.get(path)
        # The agent caches digests of specs, not specs: it reads the edited
        # object to remove what was added (tls), which a merge patch of its
        # own spec alone would leave.
        edited = admin.merge_patch(
            path,
            {
                "spec": {"entryPoints": ["websecure"], "tls": {"secretName": "x"}},
                "metadata": {"labels": {"team": "x"}},
            },
        )
        assert edited["spec"]["tls"] == {"secretName": "x"}
        await soon(lambda: admin.get(path)["spec"] == original["spec"])
        # A label someone else added stays.
        assert admin.get(path)["metadata"]["labels"]["team"] == "x"


async def test_a_name_taken_by_someone_else_is_not_overwritten(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    """A hand-written IngressRoute holds the baseline's name: the agent
    leaves it as it is. (How the clash is reported:
    tests/cluster/test_agent_problems.py.) A copy whose owner label is no
    label value is reported as a problem."""
    theirs = admin.create(
        {
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "IngressRoute",
            "metadata": {"name": "devstack-shop", "namespace": namespace},
            "spec": {"routes": [{"kind": "Rule", "match": "Host(`theirs`)"}]},
        }
    )
    add_copy(admin, namespace, "shop", "shop")
    add_copy(admin, namespace, "bad", "shop", "Not_A_Label")
    path = f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/ingressroutes/devstack-shop"
    async with running(config(testbed, namespace)) as agent:
        await soon(
            lambda: agent.metrics.get("devstack_agent_reconciles_total", result="error") >= 1
        )
        _, body = await get_json(agent, "/v1/routes")
        assert "bad-owner-label" in [p["reason"] for p in body["problems"]]
        await settled(agent)
        assert (
            admin.get(path)["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
        )


async def test_an_extended_copy_is_routed_again_and_reported_again_when_it_expires_again(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    hour = datetime.timedelta(hours=1)
    add_copy(admin, namespace, "shop", "shop")
    add_copy(
        admin,
        namespace,
        "shop-alice",
        "shop",
        "alice",
        annotations={EXPIRES_AT_ANNOTATION: _at(-hour)},
    )

    def expire_at(when: str) -> None:
        admin.merge_patch(
            service_path(namespace, "shop-alice"),
            {"metadata": {"annotations": {EXPIRES_AT_ANNOTATION: when}}},
        )

    async with running(config(testbed, namespace)) as agent:
        m = agent.metrics
        await settled(agent)
        assert not ALICE & set(routes_of(admin, namespace))
        assert m.get("devstack_agent_expired_copies") == 1
        assert m.get("devstack_agent_copy_expirations_total") == 1

        # alice extends her copy: routed again, and no longer counted as expired.
        expire_at(_at(hour))
        await soon(lambda: set(routes_of(admin, namespace)) >= ALICE)
        await settled(agent)
        assert m.get("devstack_agent_expired_copies") == 0
        _, body = await get_json(agent, "/v1/routes")
        assert body["services"][0]["owners"][0]["expired"] is False

        # Then she lets it lapse again: it is reported again.
        expire_at(_at(-datetime.timedelta(minutes=1)))
        await soon(lambda: not ALICE & set(routes_of(admin, namespace)))
        await settled(agent)
        assert m.get("devstack_agent_expired_copies") == 1
        assert m.get("devstack_agent_copy_expirations_total") == 2

        # Her Service goes: nothing is expired any more.
        admin.delete(service_path(namespace, "shop-alice"))
        await soon(lambda: m.get("devstack_agent_expired_copies") == 0)


async def test_a_ttl_annotation_ends_the_copys_routes_after_its_seconds(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    add_copy(admin, namespace, "shop", "shop")
    alice = add_copy(
        admin, namespace, "shop-alice", "shop", "alice", annotations={TTL_ANNOTATION: "86400"}
    )
    # the server's own creation time (whole seconds) is what the TTL counts from
    created = datetime.datetime.fromisoformat(
        alice["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    )

    def stamp(seconds: int) -> str:
        return (created + datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        assert set(routes_of(admin, namespace)) >= ALICE
        _, body = await get_json(agent, "/v1/routes")
        (owner,) = body["services"][0]["owners"]
        assert (owner["expires_at"], owner["expired"]) == (stamp(86400), False)

        # alice shortens it to one second after her Service was created.
        admin.merge_patch(
            service_path(namespace, "shop-alice"),
            {"metadata": {"annotations": {TTL_ANNOTATION: "1"}}},
        )
        await soon(lambda: not ALICE & set(routes_of(admin, namespace)))
        _, body = await get_json(agent, "/v1/routes")
        (owner,) = body["services"][0]["owners"]
        assert (owner["expires_at"], owner["expired"]) == (stamp(1), True)
        assert agent.metrics.get("devstack_agent_expired_copies") == 1
        assert set(routes_of(admin, namespace)) == {"ingressroutes/devstack-shop"}


class GatedWriter:
    """The real writer behind a gate: every write waits for ``release``.
    Records, per route key (the IngressRoute's name), how many writes run
    at once."""

    def __init__(self, inner: KubeWriter) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.writes: dict[str, int] = {}
        self.started: dict[str, asyncio.Event] = {}

    async def apply(self, step: Step) -> RawObject | None:
        key = step.ref.name.removesuffix("-route")
        self.running[key] = self.running.get(key, 0) + 1
        self.most[key] = max(self.most.get(key, 0), self.running[key])
        self.writes[key] = self.writes.get(key, 0) + 1
        self.started.setdefault(key, asyncio.Event()).set()
        try:
            await self.release.wait()
            return await self.inner.apply(step)
        finally:
            self.running[key] -= 1


async def test_one_serial_worker_per_route_key_and_different_keys_in_parallel(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    add_copy(admin, namespace, "shop-alice", "shop", "alice")
    add_copy(admin, namespace, "cart-bob", "cart", "bob")
    gated: list[GatedWriter] = []

    def writer(api: KubeApi) -> GatedWriter:
        gated.append(GatedWriter(KubeWriter(api, kinds(*traefik_resources()))))
        return gated[0]

    alice, bob = "devstack-shop--alice", "devstack-cart--bob"
    kubeconfig = Path(testbed.admin_kubeconfig)
    async with running_controller(kubeconfig, writer=writer, namespaces=(namespace,)) as controller:
        w = gated[0]
        # Two keys: both are being written at the same moment.
        await soon(lambda: alice in w.started and bob in w.started)
        assert (w.running[alice], w.running[bob]) == (1, 1)

        # alice's Service changes three times while her key is being written:
        # the changes wait for that worker (and coalesce), none runs beside it.
        for port in (81, 82, 83):
            admin.merge_patch(
                service_path(namespace, "shop-alice"),
                {"spec": {"ports": [{"name": "http", "port": port}]}},
            )

        def seen_port() -> int:
            svc = controller._services.get((namespace, "shop-alice")) or {}
            return int(svc["spec"]["ports"][0]["port"]) if svc else 0

        await soon(lambda: seen_port() == 83)
        key: RouteKey = ("shop", "alice")
        assert key in controller._dirty
        await asyncio.sleep(0.2)  # room for a second worker to (wrongly) start
        assert w.running[alice] == 1

        w.release.set()
        await controller_settled(controller)
        assert w.most == {alice: 1, bob: 1}
        route = admin.get(f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/ingressroutes/{alice}")
        assert {r["services"][0]["port"] for r in route["spec"]["routes"]} == {83}
        assert w.writes[alice] >= 3  # Middleware, IngressRoute, then the port change


async def test_metrics_are_prometheus_text_with_a_reconcile_time_histogram(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    add_copy(admin, namespace, "shop", "shop")
    add_copy(admin, namespace, "shop-alice", "shop", "alice")
    async with running(config(testbed, namespace)) as agent:
        await settled(agent)
        assert agent.controller is not None
        reconciles = agent.controller.reconciles
        status, text = await get_json(agent, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hist = families["devstack_agent_reconcile_seconds"]
    assert hist.type == "histogram"
    buckets = [(float(s.labels["le"]), s.value) for s in hist.samples if s.name.endswith("_bucket")]
    bounds, counts = [b for b, _ in buckets], [c for _, c in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == float("inf")
    assert counts == sorted(counts)  # cumulative
    (count,) = [s.value for s in hist.samples if s.name.endswith("_count")]
    (total,) = [s.value for s in hist.samples if s.name.endswith("_sum")]
    assert count == counts[-1] == reconciles >= 2
    assert total > 0
    assert "devstack_agent_reconcile_seconds_sum" not in families  # no stray counter families
    assert families["devstack_agent_writes"].type == "counter"
    assert families["devstack_agent_expired_copies"].type == "gauge"
