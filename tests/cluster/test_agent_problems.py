"""Write-time problems, reported as spec-time ones are, on the real server.

The defect this keeps fixed: a route name already held by an object
devstack does not manage (a hand-written IngressRoute ``devstack-shop--dave``
without the managed-by label) was only logged. ``/v1/routes`` showed no
problem, ``devstack_agent_problems`` stayed 0, dave was listed with a
preview URL that went nowhere, and his Middleware was created anyway: half
of his routes. Now the clash is in ``/v1/routes.problems`` and the gauge,
dave is not listed, none of his objects is left behind, the hand-written
object is untouched, and once it is gone his copy is routed whole.

A refused write (403) is a write-time problem too, but it removes nothing
and is retried soon, with the growing backoff, not a minute later: it may
be a grant not in force yet.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.agent.desired import MANAGED_BY_LABEL, ingress_route_name, middleware_name
from tests.helm.charts import AGENT_CHART, documents, render
from tests.support.chart_agent import ChartAgent, chart_agent, routed_service, without_grant
from tests.support.testbed import Kube, Testbed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _problems_gauge(agent: ChartAgent) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{agent.port}/metrics", timeout=5).text
    found = re.search(r"^devstack_agent_problems(?:\{\})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_a_route_name_held_by_someone_else_is_a_reported_problem_and_leaves_nothing_half_done(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    routes = f"/apis/traefik.io/v1alpha1/namespaces/{apps}/ingressroutes"
    middlewares = f"/apis/traefik.io/v1alpha1/namespaces/{apps}/middlewares"
    daves_route = ingress_route_name("shop", "dave")
    daves_middleware = f"{middlewares}/{middleware_name('shop', 'dave')}"
    # someone wrote an IngressRoute by hand under the name dave's copy needs
    hand_made = admin.create(
        {
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "IngressRoute",
            "metadata": {"name": daves_route, "namespace": apps, "labels": {"team": "ops"}},
            "spec": {
                "routes": [
                    {
                        "kind": "Rule",
                        "match": "Host(`ops.localtest.me`)",
                        "services": [{"name": "ops", "port": 80}],
                    }
                ]
            },
        }
    )
    with chart_agent(testbed, admin, namespace, tmp_path, {"scope": "cluster"}) as agent:
        routed_service(admin, apps, "shop")
        routed_service(admin, apps, "shop-alice", owner="alice")
        dave = routed_service(admin, apps, "shop-dave", owner="dave")

        def clash() -> Any:
            body = agent.routes()
            problems = [p for p in (body or {}).get("problems", ()) if p["name"] == daves_route]
            return (body, problems) if problems else None

        body, (problem,) = wait_for(clash, timeout=90)
        assert problem["reason"] == "name-taken"
        assert problem["service"] == "shop"
        assert problem["namespace"] == apps
        assert "not managed by devstack" in problem["message"]
        # the gauge counts it
        wait_for(lambda: _problems_gauge(agent) == 1.0)
        # dave is not listed as routed (no preview URL that goes nowhere);
        # alice and the baseline are
        (shop,) = [s for s in body["services"] if s["service"] == "shop"]
        assert [o["owner"] for o in shop["owners"]] == ["alice"]
        assert shop["preview_url"]
        wait_for(lambda: admin.maybe(f"{routes}/{ingress_route_name('shop', 'alice')}"))
        # none of dave's objects is left behind
        wait_for(lambda: admin.maybe(daves_middleware) is None)
        # and the hand-made object is exactly as its author left it
        now = admin.get(f"{routes}/{daves_route}")
        assert now["metadata"]["resourceVersion"] == hand_made["metadata"]["resourceVersion"]
        assert MANAGED_BY_LABEL not in now["metadata"]["labels"]
        assert now["spec"] == hand_made["spec"]

        # its author deletes it and dave's Service changes (here: an
        # annotation): the agent routes dave's copy, whole
        admin.delete(f"{routes}/{daves_route}")
        wait_for(lambda: admin.maybe(f"{routes}/{daves_route}") is None)
        admin.merge_patch(
            f"/api/v1/namespaces/{apps}/services/shop-dave",
            {"metadata": {"annotations": {"example.com/touched": "1"}}},
        )
        route = wait_for(lambda: admin.maybe(f"{routes}/{daves_route}"), timeout=90)
        assert route["metadata"]["labels"][MANAGED_BY_LABEL] == "devstack"
        assert route["metadata"]["ownerReferences"][0]["uid"] == dave["metadata"]["uid"]
        wait_for(lambda: admin.maybe(daves_middleware))

        def settled() -> Any:
            body = agent.routes()
            if not body or body["problems"]:
                return None
            (shop,) = [s for s in body["services"] if s["service"] == "shop"]
            return sorted(o["owner"] for o in shop["owners"]) == ["alice", "dave"]

        wait_for(settled)
        wait_for(lambda: _problems_gauge(agent) == 0.0)


def test_a_refused_write_is_reported_and_retried_soon_until_the_grant_is_in_force(
    testbed: Testbed, admin: Kube, namespace: str, apps: str, tmp_path: Path
) -> None:
    routes = f"/apis/traefik.io/v1alpha1/namespaces/{apps}/ingressroutes"
    middlewares = f"/apis/traefik.io/v1alpha1/namespaces/{apps}/middlewares"
    no_create = functools.partial(without_grant, resource="middlewares", verb="create")
    with chart_agent(
        testbed,
        admin,
        namespace,
        tmp_path,
        {"scope": "cluster"},
        refusals_allowed=True,
        edit=no_create,
    ) as agent:
        routed_service(admin, apps, "shop")
        routed_service(admin, apps, "shop-alice", owner="alice")

        def refusals() -> list[dict[str, Any]]:
            out = []
            for line in agent.log.read_text(errors="replace").splitlines():
                if '"agent.reconcile_failed"' in line and '"alice"' in line:
                    out.append(json.loads(line))
            return out

        # the Middleware's create is refused: reported, with short delays
        # that grow (0.1 s, doubling), not the minute a clash waits
        seen = wait_for(lambda: r if len(r := refusals()) >= 4 else None, timeout=90)
        assert {r["reason"] for r in seen} == {"forbidden"}
        delays = [r["delay"] for r in seen[:4]]
        assert delays == sorted(delays) and delays[0] <= 0.2 and delays[3] <= 1.5, delays
        body = wait_for(lambda: b if (b := agent.routes()) and b["problems"] else None)
        (problem,) = body["problems"]
        assert problem["name"] == middleware_name("shop", "alice")
        assert "403" in problem["message"]
        # the baseline is routed; alice's route was never created without
        # its Middleware
        wait_for(lambda: admin.maybe(f"{routes}/{ingress_route_name('shop', None)}"))
        assert admin.maybe(f"{routes}/{ingress_route_name('shop', 'alice')}") is None

        # the grant comes into force: alice is routed within the backoff
        chart = documents(render(AGENT_CHART, {"scope": "cluster"}, name=namespace,
                                 namespace=namespace))  # fmt: skip
        for doc in chart:
            if doc["kind"] == "ClusterRole":
                admin.apply(doc)
        wait_for(lambda: admin.maybe(f"{middlewares}/{middleware_name('shop', 'alice')}"))
        wait_for(lambda: admin.maybe(f"{routes}/{ingress_route_name('shop', 'alice')}"))
        wait_for(lambda: (b := agent.routes()) is not None and b["problems"] == [])
