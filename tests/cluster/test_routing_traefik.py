"""Routing by header, told as a user's steps, through real Traefik reading
the real API server.

Real parts on loopback: the testbed's API server (with its controllers,
garbage collector included), Traefik reading it through its
``kubernetesCRD`` provider, the agent, and small upstream HTTP servers
registered as Services and EndpointSlices. The apps propagate the routing
key with devstack's helpers.

**Traefik** authenticates as the ServiceAccount
``default/traefik-ingress-controller``, bound to the ClusterRole Traefik's
own documentation gives for the provider (``tests/data/kubernetes-crd-rbac.yml``),
with a token from the TokenRequest API, and checks the server's certificate
against the testbed's CA. Traefik v3 lists and watches every kind of its
API group and waits for all of them before it routes anything; the testbed
installs only the four the agent uses (``tests/data/traefik-crds/``), so
the module installs the six others (``IngressRouteTCP``, ``TLSOption``, …)
with open schemas: nothing here writes them, Traefik only lists them. One
Traefik (v3 rule syntax) serves the whole module; each story's objects are
removed, and gone from Traefik, before the next story starts.

**Upstreams on 127.0.0.1.** Each app is a selector-less Service and an
EndpointSlice of our own (``endpointslice.kubernetes.io/managed-by:
devstack-tests``). The real API server refuses a loopback address in an
``IPv4`` EndpointSlice, as in Endpoints ("may not be in the loopback range
(127.0.0.0/8, ::1/128)"; checked in :func:`test_the_api_server_refuses_a_loopback_endpoint`).
An ``FQDN`` slice's addresses are checked as domain names instead, and
``127.0.0.1`` is one (four numeric labels), so it is admitted (with the
server's warning that FQDN slices are deprecated). Traefik joins each
address with the port and dials it; Go's dialer takes an IP literal as it
is, so nothing is looked up in DNS and the traffic stays on loopback. No
address, route or name in these tests reaches beyond 127.0.0.1 (hosts such
as ``shop.localtest.me`` only travel in the ``Host`` header).

**The agent** runs in this process (``devstack.agent.service.Agent`` with
``tests.agent.helpers.fast_config``: the same object ``devstack agent``
runs, with short retries), one per story, watching only that story's
namespace and holding its Lease there, with the admin kubeconfig (the
chart's RBAC is proven in ``test_agent_on_the_server.py``). In-process, an
agent starts in a fraction of a second (a ``devstack agent`` process spends
seconds importing), a story can stop it and start another, and its metrics
and controller can be read directly. What is shared is Traefik, the process
that costs a start; an agent per story keeps the stories independent (each
has its own namespace and settings, and nothing of it outlives it). Who
wrote what, where it matters, comes from the API server's audit log: the
agents' requests carry their identity in their User-Agent
(``devstack-agent/<id>``), the garbage collector has its own
ServiceAccount.

The Traefik 2.x stories run the v3 binary with ``core.defaultRuleSyntax:
v2`` (a Traefik of their own) so it reads the v2 rules the agent generates
for 2.x; that checks the v2 rule text, not a real 2.x binary (nor the
``traefik.containo.us`` group, which v3 no longer reads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from devstack.agent.desired import AgentSettings, ingress_route_name, middleware_name
from devstack.agent.service import Agent, AgentConfig
from devstack.core.propagation import aiohttp_middleware, aiohttp_trace_config
from devstack.core.routing import (
    EXPIRES_AT_ANNOTATION,
    OWNER_LABEL,
    SERVICE_LABEL,
    TTL_ANNOTATION,
    RouteSettings,
)
from tests.agent.helpers import fast_config
from tests.support.net import eventually
from tests.support.testbed import REPO, Kube, KubeError, Testbed, wait_for
from tests.support.traefik import CrdTraefik

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

Obj = dict[str, Any]

TRAEFIK_RBAC = REPO / "tests" / "data" / "kubernetes-crd-rbac.yml"
TRAEFIK_SA = ("default", "traefik-ingress-controller")  # what the RBAC file binds
#: The kinds of traefik.io Traefik v3 watches besides the four in tests/data/traefik-crds/.
OTHER_TRAEFIK_KINDS = {
    "ingressroutetcps": "IngressRouteTCP",
    "ingressrouteudps": "IngressRouteUDP",
    "middlewaretcps": "MiddlewareTCP",
    "serverstransporttcps": "ServersTransportTCP",
    "tlsoptions": "TLSOption",
    "tlsstores": "TLSStore",
}
SLICE_MANAGER = "devstack-tests"
WAIT = 60.0  # seconds: generous, for a busy 2-core machine

TAGGED = {"baggage": "devstack-route=alice"}
PLAIN = {"x-devstack-route": "alice"}


# --- the module's Traefik -------------------------------------------------------------


def _open_crd(plural: str, kind: str) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.traefik.io"},
        "spec": {
            "group": "traefik.io",
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


@dataclass(frozen=True)
class TraefikAccess:
    """What a Traefik needs to read the testbed: its URL, CA and a token."""

    server: str
    ca: Path
    token: str

    def start(self, workdir: Path, *, rule_syntax: str | None = None) -> CrdTraefik:
        workdir.mkdir(parents=True, exist_ok=True)
        return CrdTraefik(
            workdir, self.server, rule_syntax=rule_syntax, ca_path=self.ca, token=self.token
        ).start()


@pytest.fixture(scope="module")
def traefik_access(testbed: Testbed) -> Iterator[TraefikAccess]:
    """Traefik's RBAC (as its docs give it), its ServiceAccount and token,
    and the rest of its CRDs; removed at the end of the module."""
    with testbed.admin() as admin:
        rbac = list(yaml.safe_load_all(TRAEFIK_RBAC.read_text()))
        for doc in rbac:
            admin.apply(doc)
        namespace, name = TRAEFIK_SA
        sa = {"apiVersion": "v1", "kind": "ServiceAccount"}
        admin.apply({**sa, "metadata": {"name": name, "namespace": namespace}})
        added = []
        for plural, kind in OTHER_TRAEFIK_KINDS.items():
            path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.traefik.io"
            # an earlier module's teardown may still be deleting it: a CRD being
            # deleted is never Established again, so wait for it to go first
            wait_for(functools.partial(_settled, admin, path))
            if admin.maybe(path) is None:
                admin.apply(_open_crd(plural, kind))
                added.append(plural)
        wait_for(lambda: _other_crds_established(admin))
        token = testbed.service_account_token(namespace, name)
        # Roles and bindings take effect a moment after they are written.
        with Kube(testbed.server, verify=testbed.pki.ca_cert, token=token) as as_traefik:
            wait_for(lambda: _may_list_everything(as_traefik))
        try:
            yield TraefikAccess(testbed.server, testbed.pki.ca_cert, token)
        finally:
            for doc in rbac:
                admin.delete(admin.object_path(doc))
            admin.delete(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
            for plural in added:
                crd = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.traefik.io"
                admin.delete(crd)
                wait_for(functools.partial(_gone, admin, crd))


def _settled(admin: Kube, path: str) -> bool:
    """Not being deleted: absent, or present without a deletionTimestamp."""
    obj = admin.maybe(path)
    return not (obj and obj.get("metadata", {}).get("deletionTimestamp"))


def _gone(admin: Kube, path: str) -> bool:
    return admin.maybe(path) is None


def _other_crds_established(admin: Kube) -> bool:
    for plural in OTHER_TRAEFIK_KINDS:
        crd = admin.maybe(
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.traefik.io"
        )
        conditions = {
            c["type"]: c["status"]
            for c in ((crd or {}).get("status") or {}).get("conditions") or ()
        }
        if conditions.get("Established") != "True":
            return False
    return True


def _may_list_everything(kube: Kube) -> bool:
    try:
        for path in (
            "/api/v1/services",
            "/apis/discovery.k8s.io/v1/endpointslices",
            "/apis/traefik.io/v1alpha1/ingressroutes",
            "/apis/traefik.io/v1alpha1/middlewares",
            "/apis/traefik.io/v1alpha1/tlsstores",
        ):
            kube.get(path, limit="1")
    except KubeError as e:
        if e.status == 403:
            return False
        raise
    return True


@pytest.fixture(scope="module")
def traefik(
    traefik_access: TraefikAccess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CrdTraefik]:
    """One Traefik (v3 rule syntax, every namespace) for the module's stories."""
    running = traefik_access.start(tmp_path_factory.mktemp("traefik"))
    try:
        yield running
    finally:
        running.stop()


# --- a story's cluster -------------------------------------------------------------


@dataclass
class Cluster:
    admin: Kube
    namespace: str
    traefik: CrdTraefik
    running: Agent | None
    route: RouteSettings
    session: aiohttp.ClientSession
    runners: list[web.AppRunner] = field(default_factory=list)
    kubeconfig: Path = Path()
    settings: AgentSettings = field(default_factory=AgentSettings)

    async def app(self, name: str, *, calls: str | None = None) -> int:
        """Start an upstream that answers who it is (and, with ``calls``,
        first calls that service through Traefik, propagating the key)."""
        route = self.route

        async def handle(request: web.Request) -> web.Response:
            body: dict[str, Any] = {"who": name, "baggage": request.headers.get("baggage")}
            if calls is not None:
                async with (
                    aiohttp.ClientSession(
                        trace_configs=[aiohttp_trace_config(settings=route)]
                    ) as s,
                    s.get(self.traefik.url, headers={"Host": calls}) as r,
                ):
                    body["next"] = await r.json()
            return web.json_response(body)

        app = web.Application(middlewares=[aiohttp_middleware(settings=route)])
        app.router.add_get("/", handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def deploy(
        self,
        name: str,
        service: str,
        owner: str | None = None,
        *,
        annotations: dict[str, str] | None = None,
        **app: Any,
    ) -> Obj:
        """What a chart does: run the app and register its Service."""
        port = await self.app(name, **app)
        labels = {SERVICE_LABEL: service}
        if owner:
            labels[OWNER_LABEL] = owner
        return register_service(
            self.admin, self.namespace, name, port, labels=labels, annotations=annotations
        )

    async def get(self, host: str, headers: dict[str, str] | None = None) -> Any:
        async with self.session.get(
            self.traefik.url, headers={"Host": host, **(headers or {})}
        ) as r:
            if r.status != 200:
                return r.status
            return await r.json()

    async def who(self, host: str, headers: dict[str, str] | None = None) -> Any:
        answer = await self.get(host, headers)
        return answer["who"] if isinstance(answer, dict) else answer

    async def reaches(
        self, host: str, expected: Any, headers: dict[str, str] | None = None
    ) -> None:
        """Until a request to ``host`` reaches ``expected`` (a name or a status)."""

        async def now() -> bool:
            return bool(await self.who(host, headers) == expected)

        await eventually(now, timeout=WAIT)

    def traefik_objects(self, label_selector: str = "") -> dict[str, Obj]:
        """The IngressRoutes and Middlewares in the namespace, by kind/name."""
        out = {}
        for plural in ("ingressroutes", "middlewares"):
            path = f"/apis/traefik.io/v1alpha1/namespaces/{self.namespace}/{plural}"
            params = {"labelSelector": label_selector} if label_selector else {}
            for o in self.admin.get(path, **params)["items"]:
                out[f"{plural}/{o['metadata']['name']}"] = o
        return out

    def service_path(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/services/{name}"

    @property
    def agent(self) -> Agent:
        assert self.running is not None, "the agent is stopped"
        return self.running

    async def stop_agent(self) -> None:
        """Stop the agent (it gives its Lease up)."""
        if self.running is not None:
            running, self.running = self.running, None
            await running.__aexit__(None, None, None)

    async def start_agent(self, identity: str) -> Agent:
        """Start a new agent, with the same settings as the first."""
        config = agent_config(self.kubeconfig, self.namespace, self.settings, identity)
        self.running = await Agent(config).__aenter__()
        return self.running

    async def restart_agent(self, identity: str) -> Agent:
        await self.stop_agent()
        return await self.start_agent(identity)


def register_service(
    admin: Kube,
    namespace: str,
    name: str,
    port: int,
    *,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> Obj:
    """A selector-less Service (port 80 -> ``port``) and the EndpointSlice
    that points it at 127.0.0.1:``port`` (an FQDN slice: see the module's
    docstring)."""
    svc = admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations or {},
            },
            "spec": {
                "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]
            },
        }
    )
    admin.create(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-loopback",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": name,
                        "uid": svc["metadata"]["uid"],
                    }
                ],
            },
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }
    )
    return svc


def agent_config(
    kubeconfig: Path, namespace: str, settings: AgentSettings, identity: str
) -> AgentConfig:
    """``fast_config`` for one story: only its namespace, its Lease there."""
    config = fast_config(kubeconfig, identity=identity, agent=settings, namespaces=(namespace,))
    return dataclasses.replace(config, lease=dataclasses.replace(config.lease, namespace=namespace))


ADMIN_USER = "devstack-testbed-admin"  # the admin certificate's CN: the agents' user here
GARBAGE_COLLECTOR = "system:serviceaccount:kube-system:generic-garbage-collector"
WRITES = ("create", "update", "patch", "delete")


def traefik_writes(
    testbed: Testbed, namespace: str, user: str, *, offset: int, user_agent: str | None = None
) -> list[tuple[str, str, str]]:
    """From the API server's audit log: the (verb, resource, name) of every
    write ``user`` (with ``user_agent``, if given) made on traefik.io objects
    in ``namespace`` after ``offset``, answered with success."""
    out = []
    for e in testbed.audit_events(user, offset=offset):
        ref = e.get("objectRef") or {}
        if (
            e["verb"] in WRITES
            and ref.get("apiGroup") == "traefik.io"
            and ref.get("namespace") == namespace
            and (user_agent is None or e.get("userAgent") == user_agent)
            and (e.get("responseStatus") or {}).get("code", 0) < 300
        ):
            out.append((e["verb"], ref["resource"], ref.get("name", "")))
    return out


@contextlib.asynccontextmanager
async def cluster(
    testbed: Testbed,
    traefik: CrdTraefik,
    namespace: str,
    *,
    agent: AgentSettings | None = None,
) -> AsyncIterator[Cluster]:
    """The agent (for ``namespace`` only) with ``traefik`` in front. On the
    way out: the agent stops, the namespace's routes are deleted and
    ``traefik`` has dropped them (so the next story meets none of them)."""
    settings = agent or AgentSettings()
    kubeconfig = testbed.admin_kubeconfig
    with testbed.admin() as admin:
        running = await Agent(agent_config(kubeconfig, namespace, settings, "agent-a")).__aenter__()
        c: Cluster | None = None
        try:
            async with aiohttp.ClientSession() as session:
                c = Cluster(
                    admin, namespace, traefik, running, settings.route, session,
                    kubeconfig=kubeconfig, settings=settings,
                )  # fmt: skip
                try:
                    yield c
                finally:
                    for runner in c.runners:
                        await runner.cleanup()
        finally:
            if c is not None:
                await c.stop_agent()
            else:
                await running.__aexit__(None, None, None)
            for plural in ("ingressroutes", "middlewares"):
                admin.delete(f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/{plural}")
            await eventually(
                lambda: not [r for r in traefik.routers() if r.startswith(f"{namespace}-")],
                timeout=WAIT,
            )


# --- the stories ---------------------------------------------------------------------


async def test_a_tagged_request_reaches_the_owners_copy(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    async with cluster(testbed, traefik, namespace) as c:
        # The team runs the shop; alice runs her own copy of it.
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        await c.reaches("shop.localtest.me", "shop-alice", PLAIN)
        await c.reaches("shop.localtest.me", "shop-alice", TAGGED)

        # An untagged request reaches the baseline.
        assert await c.who("shop.localtest.me") == "shop"
        # Tagged in baggage, or in the plain header, it reaches alice's copy.
        assert await c.who("shop.localtest.me", TAGGED) == "shop-alice"
        assert await c.who("shop.localtest.me", PLAIN) == "shop-alice"
        # Other baggage members may come before or after, with properties.
        mixed = {"baggage": "foo=1,devstack-route=alice;p=1"}
        assert await c.who("shop.localtest.me", mixed) == "shop-alice"
        assert (
            await c.who("shop.localtest.me", {"baggage": "devstack-route=alice , bar=2"})
            == "shop-alice"
        )
        # The match is exact: alice2 is not alice, nor is a look-alike key.
        assert await c.who("shop.localtest.me", {"baggage": "devstack-route=alice2"}) == "shop"
        assert await c.who("shop.localtest.me", {"x-devstack-route": "alice2"}) == "shop"
        assert await c.who("shop.localtest.me", {"baggage": "x-devstack-route=alice"}) == "shop"


async def test_preview_urls_and_a_two_hop_chain(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    async with cluster(testbed, traefik, namespace) as c:
        # front calls back. alice runs a copy of back; bob runs a copy of front.
        await c.deploy("back", "back")
        await c.deploy("back-alice", "back", "alice")
        await c.deploy("front", "front", calls="back.localtest.me")
        await c.deploy("front-bob", "front", "bob", calls="back.localtest.me")
        await c.reaches("back--alice.preview.localtest.me", "back-alice")
        await c.reaches("front--bob.preview.localtest.me", "front-bob")
        await c.reaches("back.localtest.me", "back-alice", TAGGED)

        # Through alice's preview URL, a request reaches her copy, tagged.
        answer = await c.get("back--alice.preview.localtest.me")
        assert answer["who"] == "back-alice"
        assert answer["baggage"] == "devstack-route=alice"
        # The baseline's preview URL reaches the baseline.
        assert await c.who("back.preview.localtest.me") == "back"

        # Tagged alice: the baseline of front, then alice's copy of back.
        answer = await c.get("front.localtest.me", TAGGED)
        assert (answer["who"], answer["next"]["who"]) == ("front", "back-alice")
        # Through bob's preview URL: bob's front, then the baseline of back.
        answer = await c.get("front--bob.preview.localtest.me")
        assert (answer["who"], answer["next"]["who"]) == ("front-bob", "back")
        # Untagged: baselines all the way.
        answer = await c.get("front.localtest.me")
        assert (answer["who"], answer["next"]["who"]) == ("front", "back")
        # Mixed baggage on the way in: the key travels to the next hop, and so
        # does the rest of the baggage (W3C and OpenTelemetry pass it all on).
        answer = await c.get("front.localtest.me", {"baggage": "tenant=t1,devstack-route=alice"})
        assert (answer["who"], answer["next"]["who"]) == ("front", "back-alice")
        assert answer["next"]["baggage"] == "tenant=t1,devstack-route=alice"


async def test_deleting_alices_service_returns_her_traffic_to_the_baseline(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    """As ``kubectl delete`` does it: the agent and the garbage collector
    both remove her routes (either may be first)."""
    async with cluster(testbed, traefik, namespace) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        await c.reaches("shop.localtest.me", "shop-alice", TAGGED)
        await c.reaches("shop--alice.preview.localtest.me", "shop-alice")

        c.admin.delete(c.service_path("shop-alice"))
        await c.reaches("shop.localtest.me", "shop", TAGGED)
        await c.reaches("shop--alice.preview.localtest.me", 404)
        assert await c.who("shop.localtest.me", PLAIN) == "shop"
        assert await c.who("shop.localtest.me") == "shop"
        await eventually(lambda: c.traefik_objects(f"{OWNER_LABEL}=alice") == {}, timeout=WAIT)


async def test_the_agent_itself_removes_the_routes_of_a_deleted_service(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    """Without the garbage collector's help. The real collector always runs
    here, so alice's Service is deleted with ``propagationPolicy=Orphan``:
    the collector then only strips the ownerReferences from her routes and
    deletes none of them. It does so while the agent is stopped, so that
    the test sees what the collector alone leaves (a running agent removes
    them as soon as the Service terminates: the next story). Then the agent
    starts: only it can remove them, so this story fails if it does not."""
    async with cluster(testbed, traefik, namespace) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        await c.reaches("shop.localtest.me", "shop-alice", TAGGED)
        await c.reaches("shop--alice.preview.localtest.me", "shop-alice")
        alices = c.traefik_objects(f"{OWNER_LABEL}=alice")
        assert sorted(alices) == [
            f"ingressroutes/{ingress_route_name('shop', 'alice')}",
            f"middlewares/{middleware_name('shop', 'alice')}",
        ]
        assert all(o["metadata"].get("ownerReferences") for o in alices.values())

        # the agent is down (an upgrade, say) when alice deletes her copy, orphaning
        await c.stop_agent()
        offset = testbed.audit_offset()
        c.admin.request(
            "DELETE",
            c.service_path("shop-alice"),
            {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Orphan"},
        )
        # the collector strips the ownerReferences and deletes nothing
        await eventually(lambda: c.admin.maybe(c.service_path("shop-alice")) is None, timeout=WAIT)
        orphans = await eventually(
            lambda: (
                objs
                if (objs := c.traefik_objects(f"{OWNER_LABEL}=alice")).keys() == alices.keys()
                and not any(o["metadata"].get("ownerReferences") for o in objs.values())
                else None
            ),
            timeout=WAIT,
        )
        assert [o["metadata"]["uid"] for o in orphans.values()] == [
            o["metadata"]["uid"] for o in alices.values()
        ]
        # so her routes still stand (Traefik drops them: their Service is gone)

        # the agent starts again: it removes them; her traffic reaches the baseline
        await c.start_agent("agent-b")
        await c.reaches("shop.localtest.me", "shop", TAGGED)
        await c.reaches("shop--alice.preview.localtest.me", 404)
        assert await c.who("shop.localtest.me", PLAIN) == "shop"
        assert await c.who("shop.localtest.me") == "shop"
        await eventually(lambda: c.traefik_objects(f"{OWNER_LABEL}=alice") == {}, timeout=WAIT)
        # the audit log says who did what: the collector only patched her
        # routes (the ownerReferences off), the new agent deleted them
        ir, mw = ingress_route_name("shop", "alice"), middleware_name("shop", "alice")
        assert sorted(traefik_writes(testbed, namespace, GARBAGE_COLLECTOR, offset=offset)) == [
            ("patch", "ingressroutes", ir),
            ("patch", "middlewares", mw),
        ]
        agent_b = traefik_writes(
            testbed, namespace, ADMIN_USER, offset=offset, user_agent="devstack-agent/agent-b"
        )
        assert sorted(agent_b) == [("delete", "ingressroutes", ir), ("delete", "middlewares", mw)]


async def test_a_service_being_deleted_loses_its_routes_at_once(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    """A Service that is being deleted but held by a finalizer (a load
    balancer's cleanup, say) is gone for routing: the running agent removes
    alice's routes while her Service still terminates, and writes nothing
    back onto them (it used to keep routing it, and put the owner
    references an orphaning delete strips back on)."""
    async with cluster(testbed, traefik, namespace) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        await c.reaches("shop.localtest.me", "shop-alice", TAGGED)
        c.admin.merge_patch(
            c.service_path("shop-alice"), {"metadata": {"finalizers": ["example.com/hold"]}}
        )
        offset = testbed.audit_offset()
        c.admin.request(
            "DELETE",
            c.service_path("shop-alice"),
            {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Orphan"},
        )
        await c.reaches("shop.localtest.me", "shop", TAGGED)
        await eventually(lambda: c.traefik_objects(f"{OWNER_LABEL}=alice") == {}, timeout=WAIT)
        held = c.admin.get(c.service_path("shop-alice"))
        assert held["metadata"]["deletionTimestamp"]  # still there, terminating
        ir, mw = ingress_route_name("shop", "alice"), middleware_name("shop", "alice")
        agent = traefik_writes(
            testbed, namespace, ADMIN_USER, offset=offset, user_agent="devstack-agent/agent-a"
        )
        assert sorted(agent) == [("delete", "ingressroutes", ir), ("delete", "middlewares", mw)]
        assert await c.who("shop.localtest.me") == "shop"
        c.admin.merge_patch(c.service_path("shop-alice"), {"metadata": {"finalizers": None}})
        await eventually(lambda: c.admin.maybe(c.service_path("shop-alice")) is None, timeout=WAIT)


async def test_when_alices_copy_expires_her_traffic_returns_to_the_baseline(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    """A personal copy with a TTL: routed while it lives; when it expires
    the agent removes its routes (the Service stays) and says so."""
    async with cluster(testbed, traefik, namespace) as c:
        await c.deploy("shop", "shop")
        # alice's copy lives an hour from its creation
        await c.deploy("shop-alice", "shop", "alice", annotations={TTL_ANNOTATION: "3600"})
        await c.reaches("shop.localtest.me", "shop-alice", TAGGED)
        await c.reaches("shop--alice.preview.localtest.me", "shop-alice")

        # she sets it to expire two seconds from now
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
        c.admin.merge_patch(
            c.service_path("shop-alice"),
            {"metadata": {"annotations": {EXPIRES_AT_ANNOTATION: expires.isoformat()}}},
        )
        # once it has: her tagged traffic reaches the baseline, her preview URL nothing
        await c.reaches("shop.localtest.me", "shop", TAGGED)
        await c.reaches("shop--alice.preview.localtest.me", 404)
        assert datetime.datetime.now(datetime.UTC) >= expires
        assert await c.who("shop.localtest.me", PLAIN) == "shop"
        assert await c.who("shop.localtest.me") == "shop"
        # her routes are gone, her Service is not
        await eventually(lambda: c.traefik_objects(f"{OWNER_LABEL}=alice") == {}, timeout=WAIT)
        assert c.admin.maybe(c.service_path("shop-alice")) is not None
        # the agent reports it: /v1/routes lists her copy as expired, and it counted one expiry
        async with c.session.get(f"http://127.0.0.1:{c.agent.port}/v1/routes") as r:
            routes = await r.json()
        (shop,) = [s for s in routes["services"] if s["service"] == "shop"]
        (alice,) = shop["owners"]
        assert (alice["owner"], alice["expired"]) == ("alice", True)
        assert c.agent.metrics.get("devstack_agent_copy_expirations_total") == 1
        assert c.agent.metrics.get("devstack_agent_expired_copies") == 1


async def test_a_restarted_agent_rewrites_nothing_and_routing_goes_on(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    async with cluster(testbed, traefik, namespace) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        await c.reaches("shop.localtest.me", "shop-alice", TAGGED)
        await c.reaches("shop--alice.preview.localtest.me", "shop-alice")
        before = {k: o["metadata"]["resourceVersion"] for k, o in c.traefik_objects().items()}
        assert len(before) == 3  # shop's route; alice's route and middleware

        # the agent stops (giving its Lease up); a new one starts
        offset = testbed.audit_offset()
        agent = await c.restart_agent("agent-b")
        controller, elector = agent.controller, agent.elector
        assert controller is not None and elector is not None
        # it leads, has synced and has looked at both keys, with nothing left to do
        await eventually(
            lambda: (
                elector.is_leader
                and controller.ready
                and controller.reconciles >= 2
                and controller.idle.is_set()
                and not controller.busy
            ),
            timeout=WAIT,
        )
        # it wrote nothing: every object keeps its resourceVersion
        after = {k: o["metadata"]["resourceVersion"] for k, o in c.traefik_objects().items()}
        assert after == before
        assert agent.metrics.render().count("devstack_agent_writes_total{") == 0
        b_writes = functools.partial(
            traefik_writes,
            testbed, namespace, ADMIN_USER, offset=offset, user_agent="devstack-agent/agent-b",
        )  # fmt: skip
        assert b_writes() == []
        # and routing goes on, through what the first agent wrote...
        assert await c.who("shop.localtest.me", TAGGED) == "shop-alice"
        assert await c.who("shop.localtest.me") == "shop"
        # ...and through what the new one writes for a copy made now
        await c.deploy("shop-bob", "shop", "bob")
        await c.reaches("shop.localtest.me", "shop-bob", {"x-devstack-route": "bob"})
        assert sorted(b_writes()) == [
            ("create", "ingressroutes", ingress_route_name("shop", "bob")),
            ("create", "middlewares", middleware_name("shop", "bob")),
        ]
        final = {k: o["metadata"]["resourceVersion"] for k, o in c.traefik_objects().items()}
        assert {k: final[k] for k in before} == before


async def test_when_the_headers_disagree_the_baggage_wins(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    async with cluster(testbed, traefik, namespace) as c:
        await _headers_disagree(c)


@pytest.fixture
def v2_traefik(traefik_access: TraefikAccess, tmp_path: Path) -> Iterator[CrdTraefik]:
    """A Traefik of its own that reads v2 rule syntax."""
    running = traefik_access.start(tmp_path / "traefik-v2", rule_syntax="v2")
    try:
        yield running
    finally:
        running.stop()


async def test_traefik_v2_rules_with_w3c_baggage(
    testbed: Testbed, v2_traefik: CrdTraefik, namespace: str
) -> None:
    """A cluster still on Traefik 2.x: v2 rule syntax (``HeadersRegexp`` on
    the W3C baggage), read by the v3 binary with ``defaultRuleSyntax: v2``."""
    settings = AgentSettings(traefik_version="2.10")
    async with cluster(testbed, v2_traefik, namespace, agent=settings) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        await c.reaches("shop.localtest.me", "shop-alice", TAGGED)
        assert await c.who("shop.localtest.me") == "shop"
        mixed = {"baggage": "foo=1,devstack-route=alice;p=1"}
        assert await c.who("shop.localtest.me", mixed) == "shop-alice"
        assert await c.who("shop.localtest.me", {"baggage": "devstack-route=alice2"}) == "shop"
        assert await c.who("shop.localtest.me", PLAIN) == "shop-alice"
        await c.reaches("shop--alice.preview.localtest.me", "shop-alice")
        await _headers_disagree(c)


async def test_jaeger_baggage_with_traefik_v3_rules(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    """Apps that propagate Jaeger's ``uberctx-`` baggage, on Traefik v3."""
    route = RouteSettings(baggage_style="jaeger")
    async with cluster(testbed, traefik, namespace, agent=AgentSettings(route=route)) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        jaeger = {"uberctx-devstack-route": "alice"}
        await c.reaches("shop.localtest.me", "shop-alice", jaeger)
        await c.reaches("shop.localtest.me", "shop-alice", PLAIN)
        assert await c.who("shop.localtest.me") == "shop"
        assert await c.who("shop.localtest.me", {"uberctx-devstack-route": "alice2"}) == "shop"
        # The baggage (here uberctx-) wins over the plain header.
        both = {"uberctx-devstack-route": "bob", "x-devstack-route": "alice"}
        assert await c.who("shop.localtest.me", both) == "shop"
        assert await c.who("shop.localtest.me", TAGGED) == "shop"


async def _headers_disagree(c: Cluster) -> None:
    """bob has no copy; alice does. A request whose baggage says bob and whose
    plain header says alice is bob's, at Traefik as in the helpers, so it
    reaches the baseline, and the key the next hop sees is bob's."""
    await c.deploy("back", "back")
    await c.deploy("back-alice", "back", "alice")
    await c.deploy("front", "front", calls="back.localtest.me")
    await c.reaches("back--alice.preview.localtest.me", "back-alice")
    await c.reaches("back.localtest.me", "back-alice", PLAIN)
    await c.reaches("front.localtest.me", "front")
    disagree = {"baggage": "devstack-route=bob", "x-devstack-route": "alice"}
    assert await c.who("back.localtest.me", disagree) == "back"
    answer = await c.get("front.localtest.me", disagree)
    assert (answer["who"], answer["next"]["who"]) == ("front", "back")
    assert answer["next"]["baggage"] == "devstack-route=bob"
    # Without a key in the baggage, the plain header still routes.
    other = {"baggage": "tenant=t1,devstack-route=", "x-devstack-route": "alice"}
    assert await c.who("back.localtest.me", other) == "back-alice"
    # And a key in the baggage routes whatever the plain header says.
    assert await c.who("back.localtest.me", {**disagree, "baggage": "devstack-route=alice"}) == (
        "back-alice"
    )


async def test_jaeger_baggage_and_traefik_v2_rules(
    testbed: Testbed, v2_traefik: CrdTraefik, namespace: str
) -> None:
    """A cluster still on Traefik 2.x rule syntax, with apps that propagate
    Jaeger's ``uberctx-`` baggage (the real v3 binary reading v2 rules)."""
    route = RouteSettings(baggage_style="jaeger")
    settings = AgentSettings(traefik_version="2.10", route=route)
    async with cluster(testbed, v2_traefik, namespace, agent=settings) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        jaeger = {"uberctx-devstack-route": "alice"}
        await c.reaches("shop.localtest.me", "shop-alice", jaeger)
        assert await c.who("shop.localtest.me") == "shop"
        assert await c.who("shop.localtest.me", PLAIN) == "shop-alice"
        assert await c.who("shop.localtest.me", {"uberctx-devstack-route": "alice2"}) == "shop"
        # W3C baggage is not what this cluster reads.
        assert await c.who("shop.localtest.me", TAGGED) == "shop"
        await c.reaches("shop--alice.preview.localtest.me", "shop-alice")
        both = {"uberctx-devstack-route": "bob", "x-devstack-route": "alice"}
        assert await c.who("shop.localtest.me", both) == "shop"


def test_the_api_server_refuses_a_loopback_endpoint(admin: Kube, namespace: str) -> None:
    """Why the upstreams are FQDN slices: the server refuses 127.0.0.1 in an
    IPv4 EndpointSlice (and in Endpoints), and admits it in an FQDN one."""
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"

    def endpoint_slice(address_type: str) -> Obj:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"up-{address_type.lower()}-{uuid.uuid4().hex[:4]}",
                "labels": {
                    "kubernetes.io/service-name": "up",
                    "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                },
            },
            "addressType": address_type,
            "endpoints": [{"addresses": ["127.0.0.1"]}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }

    with pytest.raises(KubeError) as refused:
        admin.post(slices, endpoint_slice("IPv4"))
    assert refused.value.status == 422
    assert "loopback" in str(refused.value)
    with pytest.raises(KubeError) as refused:
        admin.post(
            f"/api/v1/namespaces/{namespace}/endpoints",
            {
                "metadata": {"name": "up"},
                "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 8080}]}],
            },
        )
    assert refused.value.status == 422
    assert "loopback" in str(refused.value)
    admitted = admin.post(slices, endpoint_slice("FQDN"))
    assert admitted["endpoints"][0]["addresses"] == ["127.0.0.1"]
