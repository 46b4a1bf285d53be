"""The agent chart grants exactly what the agent calls, proven from the real
API server's audit log (level Metadata: who called which verb on which
object, and the answer).

`devstack agent` runs as the chart runs it (tests/support/chart_agent.py:
the chart rendered by Helm's engine and applied, the agent under a token of
the chart's ServiceAccount), in both scopes, through its story: a baseline
and an owner's copy appear, the copy changes, its middleware is edited and
put back, another owner's idle copy sleeps (its Deployment scaled to zero,
the sleep recorded) and wakes (the record updated), route names are taken
by someone else's objects, the copy goes away, and the Lease is taken,
renewed and released. Then, from every request the agent made (its User-Agent, its ServiceAccount):

- none was refused (403);
- each (verb, group, resource, namespace or cluster, name) is granted by a
  rule of the rendered roles bound to its ServiceAccount;
- each (verb, group, resource, name) a rendered rule grants was called at
  least once where it applies: a grant the agent never uses fails (least
  privilege).

A second test has the chart rendered without one verb (``delete`` on
middlewares) and shows the story failing, the 403 in the audit log, and
these checks catching it."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.agent.desired import ingress_route_name, middleware_name
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL, crd_group_for
from tests.support.chart_agent import ChartAgent, chart_agent, routed_service, without_grant
from tests.support.helm import (
    Request,
    Rule,
    audit_requests,
    permits,
    role_rules,
    service_account_user,
    unused_grants,
)
from tests.support.testbed import CRD_DIR, Kube, Testbed, crds_established, install_crds, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GROUP = "traefik.io"  # the chart's default traefikVersion, "3"
LEGACY_GROUP = "traefik.containo.us"  # traefikVersion before 2.10
AGENT = "devstack-agent/"  # the agent's User-Agent


@pytest.fixture(scope="module")
def legacy_crds(testbed: Testbed) -> Iterator[None]:
    """Traefik's CRDs served as ``traefik.containo.us`` too (Traefik < 2.10),
    as test_crd_admission.py installs them."""
    with testbed.admin() as kube:
        install_crds(kube, CRD_DIR, group=LEGACY_GROUP)
        wait_for(lambda: crds_established(kube, CRD_DIR, group=LEGACY_GROUP))
    yield


class Audit:
    """What the chart's agent asked the API server, from the audit log,
    since the test began."""

    def __init__(self, testbed: Testbed, agent: ChartAgent, offset: int) -> None:
        self.testbed = testbed
        self.user = service_account_user(
            agent.release, agent.one("ServiceAccount")["metadata"]["name"]
        )
        self.offset = offset
        self.rules: list[Rule] = role_rules(
            agent.docs, agent.release, agent.one("ServiceAccount")["metadata"]["name"]
        )

    def requests(self) -> list[Request]:
        return audit_requests(
            self.testbed.audit_events(self.user, offset=self.offset), user_agent=AGENT
        )

    def called(
        self, verb: str, resource: str, *, code: int | None = None, name: str | None = None
    ) -> Callable[[], bool]:
        def check() -> bool:
            return any(
                q.verb == verb
                and q.resource == resource
                and (code is None or q.code == code)
                and (name is None or q.name == name)
                for q in self.requests()
            )

        return check

    def refused(self) -> list[Request]:
        return [q for q in self.requests() if q.code == 403]

    def ungranted(self) -> list[Request]:
        return [q for q in self.requests() if not permits(self.rules, q)]

    def unused(self) -> list[tuple[Any, ...]]:
        return unused_grants(self.rules, self.requests())


def _story_until_the_copy_goes(
    admin: Kube, audit: Audit, apps: str, group: str = GROUP
) -> tuple[str, str]:
    """Everything but the last step; returns the paths of alice's route and
    middleware, which the last step makes the agent delete."""
    routes = f"/apis/{group}/v1alpha1/namespaces/{apps}/ingressroutes"
    middlewares = f"/apis/{group}/v1alpha1/namespaces/{apps}/middlewares"
    # a baseline and alice's copy: routes and her header middleware are created
    routed_service(admin, apps, "shop")
    routed_service(admin, apps, "shop-alice", owner="alice")
    alice_route = f"{routes}/{ingress_route_name('shop', 'alice')}"
    alice_mw = f"{middlewares}/{middleware_name('shop', 'alice')}"
    wait_for(lambda: admin.maybe(alice_route), timeout=90)
    wait_for(lambda: admin.maybe(f"{routes}/{ingress_route_name('shop', None)}"))
    wait_for(lambda: admin.maybe(alice_mw))

    # dana's copy has a Deployment and nobody uses it: it sleeps (scaled to
    # zero through the scale subresource, the record created); scaled up
    # again (as `devstack up` would), it woke (the record updated)
    routed_service(admin, apps, "shop-dana", owner="dana")
    deployments = f"/apis/apps/v1/namespaces/{apps}/deployments"
    admin.create(_copy_deployment(apps, "shop-dana", "dana"))
    wait_for(lambda: admin.get(f"{deployments}/shop-dana")["spec"]["replicas"] == 0, timeout=90)
    wait_for(audit.called("create", "configmaps"))
    admin.merge_patch(f"{deployments}/shop-dana", {"spec": {"replicas": 1}})
    # (by name: the usage records are ConfigMaps the agent updates too)
    wait_for(audit.called("update", "configmaps", name="devstack-agent-sleep"), timeout=90)

    # her copy changes port: her route is patched
    admin.merge_patch(
        f"/api/v1/namespaces/{apps}/services/shop-alice",
        {"spec": {"ports": [{"name": "http", "port": 9000, "targetPort": 9000}]}},
    )
    wait_for(lambda: "9000" in json.dumps(admin.get(alice_route)["spec"]))

    # someone edits her middleware: the agent puts it back
    wanted = admin.get(alice_mw)["spec"]
    admin.merge_patch(alice_mw, {"spec": {"headers": None, "stripPrefix": {"prefixes": ["/x"]}}})
    wait_for(lambda: admin.get(alice_mw)["spec"] == wanted)

    # someone else's objects hold the names the agent would give cart's
    # baseline route and bob's middleware: the agent reads them (get) and
    # leaves them alone
    admin.create(
        {
            "apiVersion": f"{group}/v1alpha1",
            "kind": "IngressRoute",
            "metadata": {"name": ingress_route_name("cart", None), "namespace": apps},
            "spec": {"routes": []},
        }
    )
    routed_service(admin, apps, "cart", service="cart")
    wait_for(audit.called("get", "ingressroutes"), timeout=90)
    admin.create(
        {
            "apiVersion": f"{group}/v1alpha1",
            "kind": "Middleware",
            "metadata": {"name": middleware_name("shop", "bob"), "namespace": apps},
            "spec": {"stripPrefix": {"prefixes": ["/bob"]}},
        }
    )
    routed_service(admin, apps, "shop-bob", owner="bob")
    wait_for(audit.called("get", "middlewares"), timeout=90)

    # her Service stops being a copy (it stays: the garbage collector has
    # nothing to do, the agent deletes what it made for her)
    admin.merge_patch(
        f"/api/v1/namespaces/{apps}/services/shop-alice",
        {"metadata": {"labels": {SERVICE_LABEL: None}}},
    )
    return alice_route, alice_mw


def _copy_deployment(namespace: str, name: str, owner: str) -> dict[str, Any]:
    labels = {SERVICE_LABEL: "shop", OWNER_LABEL: owner}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/never:1"}]},
            },
        },
    }


def _old_usage_record(namespace: str) -> dict[str, Any]:
    """A day record from long before the retention (docs/usage.md)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "devstack-agent-usage-2020-01-01",
            "namespace": namespace,
            "labels": {
                "devstack.dev/role": "usage",
                "app.kubernetes.io/managed-by": "devstack-agent",
            },
        },
        "data": {"day": "2020-01-01", "complete-until": "2020-01-02T00:00:00Z", "rows.json": "[]"},
    }


def _values(scope: str, apps: str) -> dict[str, Any]:
    # copies sleep after 2 s idle, looked at every second
    values: dict[str, Any] = {"scope": scope, "sleep": {"idleAfter": "2s", "checkInterval": "1s"}}
    # usage records written every second (the list of metrics.k8s.io pods is
    # made, and answered 404: the testbed has no metrics-server)
    values["usage"] = {"interval": "1s"}
    if scope == "namespaced":
        values["namespaces"] = [apps]
    return values


@pytest.mark.parametrize(
    ("scope", "traefik_version"), [("cluster", "3"), ("namespaced", "3"), ("cluster", "2.9")]
)
def test_the_agent_calls_exactly_what_its_roles_grant(
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    apps: str,
    tmp_path: Path,
    scope: str,
    traefik_version: str,
    legacy_crds: None,
) -> None:
    release = namespace  # the release's name and namespace, unique per test
    group = crd_group_for(traefik_version)
    values = {**_values(scope, apps), "traefikVersion": traefik_version}
    offset = testbed.audit_offset()
    # a usage record past the retention: the agent deletes it
    old_record = admin.create(_old_usage_record(release))
    with chart_agent(testbed, admin, release, tmp_path, values) as agent:
        audit = Audit(testbed, agent, offset)
        alice_route, alice_mw = _story_until_the_copy_goes(admin, audit, apps, group)
        wait_for(lambda: admin.maybe(alice_route) is None)
        wait_for(lambda: admin.maybe(alice_mw) is None)
        # it holds its Lease: taken (created), then renewed
        wait_for(audit.called("create", "leases"))
        wait_for(audit.called("update", "leases"))
        # its usage records: listed, today's created and updated, the old one deleted
        wait_for(lambda: admin.maybe(admin.object_path(old_record)) is None)
        wait_for(audit.called("update", "configmaps"))
    lease_name = agent.config()["data"]["DEVSTACK_LEASE_NAME"]
    lease = admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{release}/leases/{lease_name}")
    assert not lease["spec"].get("holderIdentity")  # released on the way out

    requests = wait_for(audit.requests)
    assert audit.refused() == []
    # the real RBAC authorizer allowed each
    assert {q.decision for q in requests} == {"allow"}
    # every call is granted where it was made ...
    assert audit.ungranted() == []
    # ... and every grant was used: nothing is granted that the agent does not call
    assert audit.unused() == []
    # the checks see the scope: cluster-wide calls only with the cluster scope
    cluster_wide = {q.resource for q in requests if q.namespace is None}
    assert cluster_wide == ({"services", "deployments", "pods", "persistentvolumeclaims",
                             "ingressroutes", "middlewares"}
                            if scope == "cluster" else set())  # fmt: skip
    assert {q.namespace for q in requests if q.resource == "leases"} == {release}

    # a grant more than the agent uses fails the least-privilege check
    padded = Audit(testbed, agent, offset)
    padded.rules = [*audit.rules, Rule(None, frozenset({group}), frozenset({"ingressroutes"}),
                                       frozenset({"update"}), None)]  # fmt: skip
    assert padded.unused() == [(None, group, "ingressroutes", "update", None)]
    # and the group is the one this Traefik version reads
    assert {q.group for q in requests if q.resource in ("ingressroutes", "middlewares")} == {group}


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_a_verb_the_chart_does_not_grant_fails_the_story_and_shows_in_the_audit_log(
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    apps: str,
    tmp_path: Path,
    scope: str,
) -> None:
    release = namespace
    offset = testbed.audit_offset()
    with chart_agent(
        testbed,
        admin,
        release,
        tmp_path,
        _values(scope, apps),
        refusals_allowed=True,
        edit=functools.partial(without_grant, resource="middlewares", verb="delete"),
    ) as agent:
        audit = Audit(testbed, agent, offset)
        assert not any("middlewares" in r.resources and "delete" in r.verbs for r in audit.rules)
        alice_route, alice_mw = _story_until_the_copy_goes(admin, audit, apps)
        # the route goes (delete on ingressroutes is granted); the middleware's
        # delete is refused, so the story's last step never happens
        wait_for(lambda: admin.maybe(alice_route) is None)
        wait_for(audit.called("delete", "middlewares", code=403), timeout=90)
        assert admin.maybe(alice_mw) is not None

    # (dana's copy, asleep, lost her routes too: that delete was refused as well)
    (refused, *_) = [q for q in audit.refused() if q.name == middleware_name("shop", "alice")]
    assert (refused.verb, refused.group, refused.resource, refused.namespace) == (
        "delete", GROUP, "middlewares", apps)  # fmt: skip
    assert refused.name == middleware_name("shop", "alice")
    assert refused.decision == "forbid"  # by the RBAC authorizer
    assert {(q.verb, q.resource) for q in audit.refused()} == {("delete", "middlewares")}
    # the first test's checks catch it: refused, and not granted
    assert refused in audit.ungranted()
    assert agent.log.read_text(errors="replace").count(": 403 ") >= 1
