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

import contextlib
import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.agent.desired import MANAGED_BY, MANAGED_BY_LABEL, ingress_route_name, middleware_name
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL
from tests.helm.charts import AGENT_CHART, documents, render
from tests.support.net import free_port
from tests.support.testbed import Kube, KubeError, Testbed, condition, wait_for
from tests.support.toxiproxy import running_toxiproxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

Obj = dict[str, Any]
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}
POD_NAME = "devstack-0"


@pytest.fixture
def apps(admin: Kube) -> Iterator[str]:
    """The namespace the routed Services live in; gone before the next test
    starts, so that a later agent watching every namespace never meets its
    Services while the namespace terminates (a 403 it would log)."""
    name = f"apps-{uuid.uuid4().hex[:8]}"
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    admin.delete(f"/api/v1/namespaces/{name}")
    wait_for(lambda: admin.maybe(f"/api/v1/namespaces/{name}") is None, timeout=120)


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


def _service(admin: Kube, namespace: str, name: str, *, owner: str | None = None) -> Obj:
    labels = {SERVICE_LABEL: "shop"}
    if owner:
        labels[OWNER_LABEL] = owner
    return admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"ports": [{"name": "http", "port": 8000, "targetPort": 8000}]},
        }
    )


@dataclass(frozen=True)
class ChartAgent:
    """The chart's objects on the server and the agent running as its
    ServiceAccount, with its HTTP API on ``port``."""

    docs: list[Obj]
    release: str
    port: int
    log: Path

    def one(self, kind: str) -> Obj:
        (doc,) = [d for d in self.docs if d["kind"] == kind]
        return doc

    def routes(self) -> Any:
        r = httpx.get(f"http://127.0.0.1:{self.port}/v1/routes", timeout=5)
        return r.json() if r.status_code == 200 else None


@contextlib.contextmanager
def chart_agent(
    testbed: Testbed,
    admin: Kube,
    release: str,
    tmp_path: Path,
    values: dict[str, Any],
    *,
    refusals_allowed: bool = False,
    server: str | None = None,
) -> Iterator[ChartAgent]:
    """Apply the chart (release ``release`` in namespace ``release``), run
    `devstack agent` as its Deployment would, stop it on the way out. The
    agent must exit cleanly and, unless ``refusals_allowed``, must have been
    refused nothing. ``server``: reach the API server there (a proxy)."""
    docs = documents(render(AGENT_CHART, values, name=release, namespace=release))
    for doc in docs:
        admin.apply(doc)
    run = ChartAgent(docs, release, free_port(), tmp_path / "agent.log")
    sa_name = run.one("ServiceAccount")["metadata"]["name"]
    # The authorizer reads roles and bindings from its caches, which lag the
    # writes a little (more so on a just-restarted server): start the agent
    # once every rule the chart grants is in force, as a pod would start
    # seconds after `helm install`.
    with testbed.as_service_account(release, sa_name) as as_agent:
        wait_for(lambda: _all_granted(as_agent, docs))
    # as the Deployment runs it: the ConfigMap's environment, the pod's name
    # and namespace; on loopback
    env = dict(run.one("ConfigMap")["data"])
    env |= {
        "POD_NAME": POD_NAME,
        "POD_NAMESPACE": release,
        "DEVSTACK_LEASE_NAMESPACE": release,
        "DEVSTACK_AGENT_LISTEN": f"127.0.0.1:{run.port}",
    }
    kubeconfig = testbed.service_account_kubeconfig(
        release, sa_name, tmp_path / "agent.kubeconfig", server=server
    )
    with run.log.open("wb") as out:
        agent = subprocess.Popen(
            [str(Path(sys.executable).parent / "devstack"), "agent", "--kubeconfig",
             str(kubeconfig)],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield run
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            code = agent.wait(10)
        # shown with a failure (pytest prints what a failing test printed)
        print(f"agent log ({run.log}):\n{run.log.read_text(errors='replace')[-4000:]}")
        for d in docs:
            if d["kind"] in CLUSTER_SCOPED:
                admin.delete(admin.object_path(d))
    text = run.log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    # nothing it tried was refused: the chart grants all it calls
    refused = [line for line in text.splitlines() if ": 403 " in line]
    assert refusals_allowed or refused == [], refused[:3]


def _granted(docs: list[Obj]) -> Iterator[dict[str, str]]:
    """The resource attributes of every request the rendered Roles and
    ClusterRoles grant, one per (group, resource, verb, name)."""
    for role in docs:
        if role["kind"] in ("Role", "ClusterRole"):
            namespace = role["metadata"].get("namespace", "")
            for rule in role.get("rules") or ():
                for group, resource, verb, name in itertools.product(
                    rule["apiGroups"], rule["resources"], rule["verbs"],
                    rule.get("resourceNames") or [""],
                ):  # fmt: skip
                    yield {"namespace": namespace, "group": group, "resource": resource,
                           "verb": verb, "name": name}  # fmt: skip


def _all_granted(kube: Kube, docs: list[Obj]) -> bool:
    """Whether the caller may do all the roles grant (SelfSubjectAccessReview)."""
    return all(
        kube.post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            },
        )["status"].get("allowed")
        for attributes in _granted(docs)
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

    _service(admin, apps, "shop")
    alice = _service(admin, apps, "shop-alice", owner="alice")
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
    lease_name = agent.one("ConfigMap")["data"]["DEVSTACK_LEASE_NAME"]
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
    """A found behaviour, kept visible: the restarted server refuses the
    agent for a moment (403, RBAC caches not filled yet); the agent takes a
    403 as lasting and waits 30 s before it watches again
    (``informer.failed``) when it hits that moment, so this test can take
    that long."""
    routes, middlewares, written = _shop_objects(apps)
    # A kube-apiserver that has just started serves requests before its RBAC
    # caches are filled and, for that moment, refuses what the roles grant
    # (seen here: a 403 on the agent's Lease). The agent retries; what the
    # chart grants is the other test's business.
    with chart_agent(
        testbed, admin, namespace, tmp_path, {"scope": "cluster"}, refusals_allowed=True
    ) as agent:
        _service(admin, apps, "shop")
        _service(admin, apps, "shop-alice", owner="alice")
        before = {p: wait_for(functools.partial(admin.maybe, p), timeout=90) for p in written}
        wait_for(agent.routes)

        testbed.restart_apiserver()

        # it watches again: a copy made after the restart is routed...
        _service(admin, apps, "shop-bob", owner="bob")
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
            _service(admin, apps, "shop")
            _service(admin, apps, "shop-alice", owner="alice")
            before = {p: wait_for(functools.partial(admin.maybe, p), timeout=90) for p in written}

            def retries() -> int:
                return agent.log.read_text(errors="replace").count('"informer.retry"')

            seen = retries()
            link.enabled(False)
            wait_for(lambda: retries() > seen)  # it noticed
            _service(admin, apps, "shop-bob", owner="bob")
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
