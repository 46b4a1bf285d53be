"""`devstack agent`, run as the chart runs it (tests/support/chart_agent.py),
meeting the faults of a real API server: a 410 Gone for a watch, 429s with
``Retry-After``, 500s on its writes, a slow server, and a server that
refuses it (403) after a restart.

The 410 comes from the real server itself (toxiproxy cuts the agent's link,
etcd is compacted, the API server restarts). 429s, 500s and delays come
from a small fault-injecting HTTPS proxy of the tests' own in front of the
real server (tests/support/faultproxy.py), which also records what it
forwarded, so a test can prove the faults happened and that nothing was
written twice. The refusal is the real RBAC authorizer's.

Every test checks what the agent logged (the delays it chose, the 410 it
met), never how long anything took.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.agent.desired import ingress_route_name, middleware_name
from devstack.core.routing import SERVICE_LABEL
from tests.support.chart_agent import ChartAgent, chart_agent, routed_service
from tests.support.faultproxy import Rule, running_fault_proxy
from tests.support.testbed import Kube, Testbed, wait_for
from tests.support.toxiproxy import running_toxiproxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GROUP = "/apis/traefik.io/v1alpha1"


def _written(apps: str, *owners: str | None) -> list[str]:
    """The paths of the IngressRoute (and, for a copy, the Middleware) the
    agent writes for each of ``shop``'s ``owners`` (``None``: the baseline)."""
    paths = []
    for owner in owners:
        paths.append(f"{GROUP}/namespaces/{apps}/ingressroutes/{ingress_route_name('shop', owner)}")
        if owner is not None:
            paths.append(f"{GROUP}/namespaces/{apps}/middlewares/{middleware_name('shop', owner)}")
    return paths


def _events(agent: ChartAgent, event: str, **fields: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines for ``event`` whose ``fields`` match."""
    found = []
    for line in agent.log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(entry, dict)
            and entry.get("event") == event
            and all(entry.get(k) == v for k, v in fields.items())
        ):
            found.append(entry)
    return found


def _metric(agent: ChartAgent, name: str, **labels: str) -> float:
    """One series of the agent's ``/metrics`` (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{agent.port}/metrics", timeout=5).text
    want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == f"{name}{want}":
            return float(value)
    return 0.0


def _resource_versions(admin: Kube, paths: list[str]) -> dict[str, str]:
    return {p: admin.get(p)["metadata"]["resourceVersion"] for p in paths}


def _etcd_revision(testbed: Testbed) -> int:
    """etcd's current revision, through its gRPC gateway."""
    r = httpx.post(f"{testbed.etcd_url}/v3/kv/range", json={"key": "AA==", "limit": 1}, timeout=10)
    r.raise_for_status()
    return int(r.json()["header"]["revision"])


def _compact(testbed: Testbed, revision: int) -> None:
    """Compact etcd's history up to ``revision`` (physically: gone from disk)."""
    r = httpx.post(
        f"{testbed.etcd_url}/v3/kv/compaction",
        json={"revision": str(revision), "physical": True},
        timeout=60,
    )
    r.raise_for_status()


def test_the_agent_relists_after_a_real_410_and_rewrites_nothing(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    """A 410 Gone from the real server. Compacting etcd alone does not make
    one for an open watch: kube-apiserver serves watches from its watch
    cache, which keeps the events in memory (tried: a watch from a
    compacted resourceVersion on a running server gets its events). What
    does is the watch cache starting afresh, as it does when the API server
    restarts: it starts at etcd's current revision and answers a watch from
    any older resourceVersion with an ``ERROR`` event, code 410 ("too old
    resource version"). So: toxiproxy cuts the agent's link (it keeps
    retrying its watches from its last resourceVersion), bob's Service is
    created meanwhile (so that version is certainly older than what the
    server will hold), etcd is compacted up to its current revision (the
    missed events are gone from the store too: no server could replay
    them, with or without a watch cache), the API server restarts, and the
    link comes back. The agent's re-watch meets the 410, it relists (log
    ``informer.relist`` reason ``gone``; metric ``reason="gone"``), routes
    bob, and rewrites none of what it wrote before."""
    with running_toxiproxy(tmp_path) as toxiproxy:
        link = toxiproxy.proxy("apiserver", f"127.0.0.1:{testbed.apiserver_port}")
        # the restarted server refuses the agent for a moment (RBAC caches)
        with chart_agent(
            testbed, admin, namespace, tmp_path, {"scope": "cluster"},
            server=f"https://127.0.0.1:{link.port}", refusals_allowed=True,
        ) as agent:  # fmt: skip
            routed_service(admin, apps, "shop")
            routed_service(admin, apps, "shop-alice", owner="alice")
            written = _written(apps, None, "alice")
            for p in written:
                wait_for(functools.partial(admin.maybe, p), timeout=90)
            wait_for(agent.routes)
            before = _resource_versions(admin, written)
            assert _events(agent, "informer.relist") == []

            seen = len(_events(agent, "informer.retry", informer="services@*"))
            link.enabled(False)
            wait_for(lambda: len(_events(agent, "informer.retry", informer="services@*")) > seen)
            routed_service(admin, apps, "shop-bob", owner="bob")
            _compact(testbed, _etcd_revision(testbed))
            testbed.restart_apiserver()
            link.enabled(True)

            for p in _written(apps, "bob"):
                wait_for(functools.partial(admin.maybe, p), timeout=120)
            # a 410 really happened, and the agent relisted after it
            (gone, *_) = wait_for(
                lambda: _events(agent, "informer.relist", informer="services@*", reason="gone")
            )
            assert re.search(r"\b410\b", gone["error"]), gone
            assert "too old resource version" in gone["error"], gone
            labels = {"resource": "services@*", "reason": "gone"}
            assert _metric(agent, "devstack_agent_watch_restarts_total", **labels) >= 1
            # and nothing it had written was written again (a write, even
            # one that changes nothing, would move its resourceVersion)
            assert _resource_versions(admin, written) == before


def test_the_agent_honours_retry_after_on_its_list_and_watch(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    """The fault proxy answers the agent's first two lists of Services with
    429 and ``Retry-After: 3``, and its first watch with 429 and
    ``Retry-After: 2``, as an overloaded API server's priority and fairness
    would. The agent waits at least that long each time (the delays it
    logs), then syncs, and routes what it finds, each object created once.
    Two of its informers read Services (routing's, ``services@*``, and the
    usage ledger's, ``usage:services@*``): the refusals fall on whichever
    asks first, so their retries are read together, in the order logged."""
    services = "/api/v1/services"
    with running_fault_proxy(testbed) as proxy:
        lists = proxy.add(
            Rule(method="GET", path=services, watch=False, status=429, retry_after=3, times=2)
        )
        watches = proxy.add(
            Rule(method="GET", path=services, watch=True, status=429, retry_after=2, times=1)
        )
        routed_service(admin, apps, "shop")
        routed_service(admin, apps, "shop-alice", owner="alice")
        with chart_agent(
            testbed, admin, namespace, tmp_path, {"scope": "cluster"}, server=proxy.url
        ) as agent:
            written = _written(apps, None, "alice")
            for p in written:
                wait_for(functools.partial(admin.maybe, p), timeout=90)
            wait_for(agent.routes)

            assert lists.spent and watches.spent
            assert proxy.made_up("GET", services) == [429, 429, 429]
            retries = [
                r
                for r in _events(agent, "informer.retry")
                if r["informer"] in ("services@*", "usage:services@*")
            ]
            # list, list, watch: each refused with a 429, each waited out
            assert ["watch " in r["error"] for r in retries[:3]] == [False, False, True], retries
            assert all(": 429 " in r["error"] for r in retries[:3]), retries
            delays = [r["delay"] for r in retries[:3]]
            assert delays[0] >= 3 and delays[1] >= 3 and delays[2] >= 2, delays
            for p in written:
                collection, _, name = p.rpartition("/")
                assert proxy.writes("POST", collection, name=name) == [201], p


def test_the_agents_writes_meet_500s_and_are_done_exactly_once(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    """The fault proxy fails the agent's writes: creates answered 500 (never
    forwarded) or 503 with ``Retry-After: 2``, one create and one patch done
    by the server but answered 500 (a server that fails after it wrote), a
    patch answered 500 with ``Retry-After: 2``, a delete done but answered
    500. The agent retries each (waiting what ``Retry-After`` asks: the
    delay it logs), every object ends as wanted, and the server accepted
    each create, patch and delete exactly once: never a second time after
    it had succeeded."""
    routes = f"{GROUP}/namespaces/{apps}/ingressroutes"
    middlewares = f"{GROUP}/namespaces/{apps}/middlewares"
    alice_route = f"{routes}/{ingress_route_name('shop', 'alice')}"
    alice_mw = f"{middlewares}/{middleware_name('shop', 'alice')}"
    with running_fault_proxy(testbed) as proxy:
        with chart_agent(
            testbed, admin, namespace, tmp_path, {"scope": "cluster"}, server=proxy.url
        ) as agent:
            wait_for(agent.routes)
            wait_for(lambda: (agent.routes() or {}).get("leader"))
            faults = [
                proxy.add(Rule(method="POST", path=routes, status=500, times=2)),
                proxy.add(Rule(method="POST", path=routes, status=500, after=True)),
                proxy.add(Rule(method="POST", path=middlewares, status=503, retry_after=2)),
            ]
            routed_service(admin, apps, "shop")
            routed_service(admin, apps, "shop-alice", owner="alice")
            written = _written(apps, None, "alice")
            for p in written:
                wait_for(functools.partial(admin.maybe, p), timeout=90)
            assert all(f.spent for f in faults)
            assert proxy.made_up("POST", routes) == [500, 500, 500]
            assert proxy.made_up("POST", middlewares) == [503]
            mw_retry = wait_for(
                lambda: [
                    e
                    for e in _events(agent, "agent.reconcile_retry", owner="alice")
                    if ": 503 " in e["error"]
                ]
            )
            assert mw_retry[0]["delay"] >= 2, mw_retry

            # her port changes: one patch refused (500, Retry-After 2), the
            # next done by the server but answered 500
            faults = [
                proxy.add(Rule(method="PATCH", path=alice_route, status=500, retry_after=2)),
                proxy.add(Rule(method="PATCH", path=alice_route, status=500, after=True)),
            ]
            admin.merge_patch(
                f"/api/v1/namespaces/{apps}/services/shop-alice",
                {"spec": {"ports": [{"name": "http", "port": 9000, "targetPort": 9000}]}},
            )
            wait_for(lambda: all(f.spent for f in faults), timeout=90)
            wait_for(lambda: "9000" in json.dumps(admin.get(alice_route)["spec"]))
            patch_retry = [
                e
                for e in _events(agent, "agent.reconcile_retry", owner="alice")
                if "PATCH" in e["error"] and ": 500 " in e["error"]
            ]
            assert patch_retry and patch_retry[0]["delay"] >= 2, patch_retry

            # she stops being a copy: the delete of her route is done but
            # answered 500
            fault = proxy.add(Rule(method="DELETE", path=alice_route, status=500, after=True))
            admin.merge_patch(
                f"/api/v1/namespaces/{apps}/services/shop-alice",
                {"metadata": {"labels": {SERVICE_LABEL: None}}},
            )
            wait_for(lambda: admin.maybe(alice_route) is None and admin.maybe(alice_mw) is None)
            wait_for(lambda: fault.spent)

        # Each create, patch and delete was accepted by the server once.
        for p in written:
            collection, _, name = p.rpartition("/")
            assert proxy.writes("POST", collection, name=name).count(201) == 1, p
        assert proxy.writes("PATCH", alice_route).count(200) == 1
        assert [s for s in proxy.writes("DELETE", alice_route) if s < 300] == [200]


def test_the_agent_rides_out_a_slow_api_server(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    """Every request the agent makes waits 2.5 s in the fault proxy before it
    reaches the server: lists, watches, its Lease, its writes. The agent
    waits for the answers (its request timeout is 30 s): it syncs, leads,
    routes, with no retry, no step down, and each object created once."""
    with running_fault_proxy(testbed) as proxy:
        slow = proxy.add(Rule(delay=2.5, times=None))
        routed_service(admin, apps, "shop")
        with chart_agent(
            testbed, admin, namespace, tmp_path, {"scope": "cluster"}, server=proxy.url
        ) as agent:
            routed_service(admin, apps, "shop-alice", owner="alice")
            written = _written(apps, None, "alice")
            for p in written:
                wait_for(functools.partial(admin.maybe, p), timeout=120)
            wait_for(lambda: "alice" in json.dumps(agent.routes()), timeout=60)
            leading = _events(agent, "leader.started")
            assert slow.hits >= 8  # 3 lists, 3 watches, the Lease, a write at least
            for event in ("informer.retry", "informer.failed", "agent.reconcile_retry"):
                assert _events(agent, event) == [], event
            assert len(leading) == 1 and _events(agent, "leader.stopped") == []
        for p in written:
            collection, _, name = p.rpartition("/")
            assert proxy.writes("POST", collection, name=name) == [201], p


def test_a_refusal_after_an_api_server_restart_is_retried_soon(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    """After a restart, kube-apiserver refuses (403) what the roles grant
    until its RBAC caches are filled: a moment, which the agent used to
    sit out for 30 s (the backoff maximum) before it watched again. That
    moment cannot be hit on demand, so the refusal here is made to last: the
    chart's ClusterRoleBinding is deleted before the restart and put back a
    few refusals later. The agent's informers log each refusal
    (``informer.failed``) with the normal backoff, starting short and
    growing (0.1 s, 0.2 s, 0.4 s, 0.8 s, with 10 % jitter), and the agent
    routes a copy made once the binding is back."""
    with chart_agent(
        testbed, admin, namespace, tmp_path, {"scope": "cluster"}, refusals_allowed=True
    ) as agent:
        routed_service(admin, apps, "shop")
        written = _written(apps, None)
        for p in written:
            wait_for(functools.partial(admin.maybe, p), timeout=90)
        before = _resource_versions(admin, written)

        binding = agent.one("ClusterRoleBinding")
        sa_name = agent.one("ServiceAccount")["metadata"]["name"]
        admin.delete(admin.object_path(binding))
        with testbed.as_service_account(namespace, sa_name) as as_agent:
            wait_for(lambda: not _may_list_services(as_agent))
        testbed.restart_apiserver()

        def refusals() -> list[dict[str, Any]]:
            return [
                e
                for e in _events(agent, "informer.failed", informer="services@*")
                if ": 403 " in e["error"]
            ]

        wait_for(lambda: len(refusals()) >= 4, timeout=90)
        admin.apply(binding)
        routed_service(admin, apps, "shop-bob", owner="bob")
        for p in _written(apps, "bob"):
            wait_for(functools.partial(admin.maybe, p), timeout=90)

        refused = refusals()
        assert all(e["level"] == "error" for e in refused), refused
        # the chart's backoff: 0.1 s doubling, 10 % jitter (3 decimals logged)
        delays = [e["delay"] for e in refused[:4]]
        assert all(
            0.9 * 0.1 * 2**n - 0.001 <= d <= 1.1 * 0.1 * 2**n + 0.001 for n, d in enumerate(delays)
        ), delays
        assert _resource_versions(admin, written) == before


def _may_list_services(kube: Kube) -> bool:
    review = kube.post(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"resource": "services", "verb": "list"}},
        },
    )
    return bool(review["status"].get("allowed"))
