"""`devstack agent`, run as the chart runs it, against the real API server.

The chart (helm/devstack) is rendered by Helm's engine and applied to the
server: its ServiceAccount, roles and bindings, ConfigMap and Deployment.
The agent then runs as a local process with the ConfigMap's environment and
a kubeconfig minted for the chart's ServiceAccount (TokenRequest), so every
call it makes is authorized by the real RBAC authorizer against the chart's
own rules. It reconciles Services into IngressRoutes and Middlewares on the
server (create, patch, delete: each verb the chart grants on them), holds
its Lease, and a Service's routes go with it. A verb the chart did not grant
would leave a step undone (the test waits for it) and a 403 in the agent's
log. Both of the chart's scopes are covered: cluster-wide and namespaced.
The agent also rides out a restart of the API server without rewriting what
it had already written.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from devstack.agent.desired import MANAGED_BY, MANAGED_BY_LABEL, ingress_route_name, middleware_name
from devstack.core.routing import SERVICE_LABEL
from tests.support.chart_agent import POD_NAME, ChartAgent, chart_agent, routed_service
from tests.support.testbed import Kube, KubeError, Testbed, condition, wait_for
from tests.support.toxiproxy import running_toxiproxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _shop_objects(apps: str) -> tuple[str, str, list[str]]:
    """The IngressRoutes' and Middlewares' collections in ``apps``, and the
    paths of what the agent writes for ``shop`` and alice's copy of it."""
    routes = f"/apis/traefik.io/v1alpha1/namespaces/{apps}/ingressroutes"
    middlewares = f"/apis/traefik.io/v1alpha1/namespaces/{apps}/middlewares"
    return (
        routes,
        middlewares,
        [
            f"{routes}/{ingress_route_name('shop', None)}",
            f"{routes}/{ingress_route_name('shop', 'alice')}",
            f"{middlewares}/{middleware_name('shop', 'alice')}",
        ],
    )


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_the_agent_routes_services_under_the_charts_own_rbac(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path, scope: str
) -> None:
    release = namespace  # the release namespace; also the release's name, unique per test
    values: dict[str, Any] = {"scope": scope}
    if scope == "namespaced":
        values["namespaces"] = [apps]
    with chart_agent(testbed, admin, release, tmp_path, values) as agent:
        _story(testbed, admin, agent, apps)


def _story(testbed: Testbed, admin: Kube, agent: ChartAgent, apps: str) -> None:
    release = agent.release
    # the chart's Deployment is admitted and, on the simulated node, turns
    # Available (its pod runs no image: the agent itself runs locally)
    deployment = agent.one("Deployment")
    wait_for(lambda: condition(admin.get(admin.object_path(deployment)), "Available") == "True")

    # the ServiceAccount's token is not an admin's: what the chart does not
    # grant is refused by the real authorizer
    sa_name = agent.one("ServiceAccount")["metadata"]["name"]
    with testbed.as_service_account(release, sa_name) as as_agent:
        with pytest.raises(KubeError) as denied:
            as_agent.post(f"/api/v1/namespaces/{apps}/services", {"metadata": {"name": "x"}})
        assert denied.value.status == 403

    routed_service(admin, apps, "shop")
    alice = routed_service(admin, apps, "shop-alice", owner="alice")
    routes = f"/apis/traefik.io/v1alpha1/namespaces/{apps}/ingressroutes"
    middlewares = f"/apis/traefik.io/v1alpha1/namespaces/{apps}/middlewares"
    alice_route_name = ingress_route_name("shop", "alice")
    alice_route = wait_for(lambda: admin.maybe(f"{routes}/{alice_route_name}"), timeout=90)
    baseline = wait_for(lambda: admin.maybe(f"{routes}/{ingress_route_name('shop', None)}"))
    wait_for(lambda: admin.maybe(f"{middlewares}/{middleware_name('shop', 'alice')}"))
    for route in (alice_route, baseline):
        assert route["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
    (owner_ref,) = alice_route["metadata"]["ownerReferences"]
    assert (owner_ref["kind"], owner_ref["uid"]) == ("Service", alice["metadata"]["uid"])
    assert "shop-alice" in json.dumps(alice_route["spec"])

    # its HTTP API reports what it routes
    body = wait_for(agent.routes)
    (shop,) = [s for s in body["services"] if s["service"] == "shop"]
    assert [o["owner"] for o in shop["owners"]] == ["alice"]

    # it leads, through its Lease in the release namespace
    lease_name = agent.config()["data"]["DEVSTACK_LEASE_NAME"]
    lease = wait_for(
        lambda: admin.maybe(
            f"/apis/coordination.k8s.io/v1/namespaces/{release}/leases/{lease_name}"
        )
    )
    assert lease["spec"]["holderIdentity"] == POD_NAME

    # her copy changes port: the agent patches her route
    admin.merge_patch(
        f"/api/v1/namespaces/{apps}/services/shop-alice",
        {"spec": {"ports": [{"name": "http", "port": 9000, "targetPort": 9000}]}},
    )
    wait_for(lambda: "9000" in json.dumps(admin.get(f"{routes}/{alice_route_name}")["spec"]))

    # someone edits her middleware: the agent puts it back
    alice_mw = f"{middlewares}/{middleware_name('shop', 'alice')}"
    wanted = admin.get(alice_mw)["spec"]
    admin.merge_patch(alice_mw, {"spec": {"headers": None, "stripPrefix": {"prefixes": ["/x"]}}})
    wait_for(lambda: admin.get(alice_mw)["spec"] == wanted)

    # her Service stops being a copy (it stays, so the garbage collector has
    # nothing to do): the agent itself deletes its route and middleware
    admin.merge_patch(
        f"/api/v1/namespaces/{apps}/services/shop-alice",
        {"metadata": {"labels": {SERVICE_LABEL: None}}},
    )
    wait_for(lambda: admin.maybe(f"{routes}/{alice_route_name}") is None)
    wait_for(lambda: admin.maybe(alice_mw) is None)

    # the baseline's Service is deleted: its route goes (the agent and the
    # garbage collector race for it; test_workloads.py shows the collector alone)
    admin.delete(f"/api/v1/namespaces/{apps}/services/shop")
    wait_for(lambda: admin.maybe(f"{routes}/{ingress_route_name('shop', None)}") is None)


def test_the_agent_rides_out_an_api_server_restart_without_rewriting_anything(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    """The API server restarts under the agent: it watches again, routes a
    copy made after the restart, and rewrites nothing it had written. The
    restarted server may refuse the agent for a moment (403, its RBAC
    caches not filled yet); the agent logs each refusal
    (``informer.failed``, ``leader.error``) and retries it with its usual
    backoff, starting short (it used to wait 30 s, the backoff maximum,
    before it watched again). That moment cannot be hit on demand:
    tests/cluster/test_agent_faults.py makes the refusal last and checks the
    delays the agent chose."""
    routes, middlewares, written = _shop_objects(apps)
    # A kube-apiserver that has just started serves requests before its RBAC
    # caches are filled and, for that moment, refuses what the roles grant
    # (seen here: a 403 on the agent's Lease). The agent retries; what the
    # chart grants is the other test's business.
    with chart_agent(
        testbed, admin, namespace, tmp_path, {"scope": "cluster"}, refusals_allowed=True
    ) as agent:
        routed_service(admin, apps, "shop")
        routed_service(admin, apps, "shop-alice", owner="alice")
        before = {p: wait_for(functools.partial(admin.maybe, p), timeout=90) for p in written}
        wait_for(agent.routes)

        testbed.restart_apiserver()

        # it watches again: a copy made after the restart is routed...
        routed_service(admin, apps, "shop-bob", owner="bob")
        wait_for(lambda: admin.maybe(f"{routes}/{ingress_route_name('shop', 'bob')}"), timeout=90)
        wait_for(lambda: admin.maybe(f"{middlewares}/{middleware_name('shop', 'bob')}"))
        # ...and what it had written before was not written again (a write,
        # even one that changes nothing, would move its resourceVersion)
        after = {p: admin.get(p) for p in written}
        for p in written:
            assert (
                after[p]["metadata"]["resourceVersion"]
                == (before[p]["metadata"]["resourceVersion"])
            ), p


def test_the_agent_recovers_when_its_slow_link_to_the_api_server_is_cut(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    """Through toxiproxy: a link with 200 ms of latency each way, then cut
    (open connections closed, new ones refused) while a copy is made, then
    restored. The agent routes the copy once it is back, and rewrites none
    of what it wrote before."""
    routes, _, written = _shop_objects(apps)
    with running_toxiproxy(tmp_path) as toxiproxy:
        link = toxiproxy.proxy("apiserver", f"127.0.0.1:{testbed.apiserver_port}")
        link.toxic("latency", latency=200)
        link.toxic("latency", stream="upstream", latency=200)
        server = f"https://127.0.0.1:{link.port}"
        with chart_agent(
            testbed, admin, namespace, tmp_path, {"scope": "cluster"}, server=server
        ) as agent:
            routed_service(admin, apps, "shop")
            routed_service(admin, apps, "shop-alice", owner="alice")
            before = {p: wait_for(functools.partial(admin.maybe, p), timeout=90) for p in written}

            def retries() -> int:
                return agent.log.read_text(errors="replace").count('"informer.retry"')

            seen = retries()
            link.enabled(False)
            wait_for(lambda: retries() > seen)  # it noticed
            routed_service(admin, apps, "shop-bob", owner="bob")
            link.enabled(True)

            wait_for(
                lambda: admin.maybe(f"{routes}/{ingress_route_name('shop', 'bob')}"), timeout=90
            )
            after = {p: admin.get(p) for p in written}
            for p in written:
                assert (
                    after[p]["metadata"]["resourceVersion"]
                    == (before[p]["metadata"]["resourceVersion"])
                ), p
