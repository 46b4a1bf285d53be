"""The agent chart grants exactly what the agent calls. The real agent runs with the
configuration the chart renders, against the Kubernetes emulator, through a short
story: a baseline and an owner's copy appear, the copy changes, a route name is
taken by someone else's object, the copy goes away, and the Lease is taken,
renewed and released. Every request it made is then compared with the rendered
ClusterRole and Role. (The provisioning hook's Role is checked the same way in
test_helm_install.py.)"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from devstack.agent import command as agent_command
from devstack.agent.desired import ingress_route_name, middleware_name
from devstack.agent.service import Agent
from devstack.core.routing import crd_group_for
from tests.helm.charts import AGENT_CHART, documents, one, render
from tests.support.helm import calls, permits, rbac_rules
from tests.support.kube import EmulatorThread, eventually, kube  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RELEASE_NAMESPACE = "devstack-system"
APPS = "apps"


def _service(name: str, *, owner: str | None = None, port: int = 8000) -> dict[str, Any]:
    labels = {"devstack.dev/service": "shop"}
    if owner:
        labels["devstack.dev/owner"] = owner
    return {
        "metadata": {"name": name, "namespace": APPS, "labels": labels},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": port}]},
    }


def _granted(rules: list[Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule.groups for r in rule.resources
            for v in rule.verbs}  # fmt: skip


@pytest.mark.parametrize("traefik_version", ["3", "2.9"])
async def test_the_agent_calls_exactly_what_its_roles_grant(
    kube: EmulatorThread,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    traefik_version: str,
) -> None:
    docs = documents(
        render(
            AGENT_CHART,
            {"traefikVersion": traefik_version},
            name="devstack",
            namespace=RELEASE_NAMESPACE,
        )
    )
    cluster_rules = rbac_rules(one(docs, "ClusterRole"))
    (lease_role,) = [d for d in docs if d["kind"] == "Role"]
    lease_rules = rbac_rules(lease_role)

    # `devstack agent` as the Deployment runs it: the ConfigMap's environment, the
    # pod's namespace and name.
    env = dict(one(docs, "ConfigMap")["data"])
    env |= {"POD_NAME": "devstack-0", "POD_NAMESPACE": RELEASE_NAMESPACE}
    env["DEVSTACK_LEASE_NAMESPACE"] = RELEASE_NAMESPACE
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    agent_command.add_arguments(parser)
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    args = parser.parse_args(["--kubeconfig", str(kubeconfig), "--listen", "127.0.0.1:0"])
    config = agent_command.config_from_args(args, env)

    em = kube.emulator
    group = crd_group_for(traefik_version)
    services = em.resource("v1", "services")
    routes = em.resource(f"{group}/v1alpha1", "ingressroutes")
    middlewares = em.resource(f"{group}/v1alpha1", "middlewares")
    leases = em.resource("coordination.k8s.io/v1", "leases")

    def agent_made(verb: str, plural: str) -> bool:
        return any(c[1:3] == (plural, verb) for c in calls(em.log, "devstack-agent/"))

    async with Agent(config):
        # a baseline and alice's copy: routes and her header middleware are created
        em.create(services, _service("shop"))
        em.create(services, _service("shop-alice", owner="alice"))
        alice_route = ingress_route_name("shop", "alice")
        await eventually(lambda: em.get(routes, APPS, alice_route), timeout=60)
        await eventually(lambda: em.get(routes, APPS, ingress_route_name("shop", None)))
        await eventually(lambda: em.get(middlewares, APPS, middleware_name("shop", "alice")))

        # her copy changes port: her route is patched
        em.patch(
            services, APPS, "shop-alice", {"spec": {"ports": [{"name": "http", "port": 9000}]}}
        )

        def repointed() -> bool:
            route = em.get(routes, APPS, alice_route) or {}
            text = str(route.get("spec"))
            return "9000" in text

        await eventually(repointed, timeout=60)

        # someone edits her middleware: the agent puts it back
        alice_mw = middleware_name("shop", "alice")
        wanted = em.get(middlewares, APPS, alice_mw)["spec"]  # type: ignore[index]
        em.patch(
            middlewares,
            APPS,
            alice_mw,
            {"spec": {"headers": None, "stripPrefix": {"prefixes": ["/x"]}}},
        )
        await eventually(
            lambda: (em.get(middlewares, APPS, alice_mw) or {}).get("spec") == wanted, timeout=60
        )

        # someone else's object holds the name of a route the agent would create
        em.create(
            routes,
            {
                "metadata": {"name": ingress_route_name("cart", None), "namespace": APPS},
                "spec": {"routes": []},
            },
        )
        cart = _service("cart")
        cart["metadata"]["labels"]["devstack.dev/service"] = "cart"
        em.create(services, cart)
        await eventually(lambda: agent_made("get", "ingressroutes"), timeout=60)
        # ...and of a middleware, for bob's copy
        em.create(
            middlewares,
            {
                "metadata": {"name": middleware_name("shop", "bob"), "namespace": APPS},
                "spec": {"stripPrefix": {"prefixes": ["/bob"]}},
            },
        )
        em.create(services, _service("shop-bob", owner="bob"))
        await eventually(lambda: agent_made("get", "middlewares"), timeout=60)

        # her copy stops being one: its route and middleware are deleted
        em.patch(
            services, APPS, "shop-alice", {"metadata": {"labels": {"devstack.dev/service": None}}}
        )
        await eventually(lambda: em.get(routes, APPS, alice_route) is None, timeout=60)
        await eventually(lambda: agent_made("delete", "middlewares"), timeout=60)

        # the Lease was taken; wait for one renewal
        await eventually(lambda: agent_made("update", "leases"), timeout=60)
    # released on the way out
    lease = em.get(leases, RELEASE_NAMESPACE, "devstack-agent")
    assert lease is not None and lease["spec"]["holderIdentity"] == ""
    await asyncio.sleep(0)

    made = calls(em.log, "devstack-agent/")
    assert made
    for call in made:
        _group, resource, _verb, _name = call
        if resource == "leases":
            assert permits(lease_rules, *call), call
        else:
            assert permits(cluster_rules, *call), call
    lease_calls = [
        r for r in em.log if r.user_agent.startswith("devstack-agent/") and r.plural == "leases"
    ]
    assert {r.namespace for r in lease_calls} == {RELEASE_NAMESPACE}
    # nothing granted that it did not use
    assert _granted(cluster_rules) | _granted(lease_rules) == {c[:3] for c in made}
