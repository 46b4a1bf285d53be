"""The agent against the Kubernetes emulator: what it writes, when it does
not write, and how it recovers (410, 500, 429, a restart, a second replica,
a TTL), one serial worker per route key, and its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
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
from tests.support.kube import EmulatorThread, running_emulator
from tests.support.net import eventually

TRAEFIK = ("ingressroutes", "middlewares")
WRITES = {"create", "update", "patch", "delete"}


def routes_of(kube: EmulatorThread) -> dict[str, dict[str, Any]]:
    emu = kube.emulator
    out = {}
    for plural in TRAEFIK:
        for obj in emu.objects(emu.resource("traefik.io/v1alpha1", plural)):
            out[f"{plural}/{obj['metadata']['namespace']}/{obj['metadata']['name']}"] = obj
    return out


def add_copy(
    kube: EmulatorThread,
    name: str,
    service: str,
    owner: str | None = None,
    *,
    namespace: str = "dev",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = {SERVICE_LABEL: service}
    if owner:
        labels[OWNER_LABEL] = owner
    return kube.emulator.register_service(
        namespace=namespace, name=name, port=9, labels=labels, annotations=annotations
    )


def traefik_writes(kube: EmulatorThread, since: int = 0) -> list[Any]:
    return [r for r in kube.emulator.log[since:] if r.plural in TRAEFIK and r.verb in WRITES]


@contextlib.asynccontextmanager
async def running(config: AgentConfig) -> AsyncIterator[Agent]:
    async with Agent(config) as agent:
        yield agent


async def settled(agent: Agent) -> None:
    """Wait until the agent is synced, leading and has nothing left to do."""
    assert agent.controller is not None and agent.elector is not None
    controller, elector = agent.controller, agent.elector
    await eventually(lambda: controller.ready and elector.is_leader)
    await eventually(lambda: controller.idle.is_set() and not controller.busy)


async def get_json(agent: Agent, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{agent.port}{path}") as r,
    ):
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def test_the_agent_routes_each_copy_with_owned_labelled_objects(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    base = add_copy(kube, "shop", "shop")
    alice = add_copy(kube, "shop-alice", "shop", "alice")
    async with running(fast_config(kubeconfig)) as agent:
        await settled(agent)
        objs = routes_of(kube)
        assert set(objs) == {
            "ingressroutes/dev/devstack-shop",
            "ingressroutes/dev/devstack-shop--alice",
            "middlewares/dev/devstack-shop--alice-route",
        }
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
                "baseline": {"namespace": "dev", "name": "shop"},
                "preview_url": "http://shop.preview.localtest.me",
                "owners": [
                    {
                        "owner": "alice",
                        "namespace": "dev",
                        "name": "shop-alice",
                        "preview_url": "http://shop--alice.preview.localtest.me",
                        "expires_at": None,
                        "expired": False,
                    }
                ],
            }
        ]
        status, text = await get_json(agent, "/metrics")
        assert status == 200
        assert 'devstack_agent_writes_total{kind="IngressRoute",verb="create"} 2' in text
        assert "devstack_agent_is_leader 1" in text


async def test_deleting_a_copy_removes_its_objects_even_without_garbage_collection(
    tmp_path: Path,
) -> None:
    with running_emulator(garbage_collect=False) as kube:
        add_copy(kube, "shop", "shop")
        add_copy(kube, "shop-alice", "shop", "alice")
        async with running(fast_config(kube.kubeconfig(tmp_path / "kc"))) as agent:
            await settled(agent)
            assert len(routes_of(kube)) == 3
            kube.emulator.delete(kube.emulator.resource("v1", "services"), "dev", "shop-alice")
            await eventually(lambda: set(routes_of(kube)) == {"ingressroutes/dev/devstack-shop"})


async def test_a_restarted_agent_rewrites_nothing_that_is_already_right(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    add_copy(kube, "shop", "shop")
    add_copy(kube, "shop-alice", "shop", "alice")
    add_copy(kube, "cart-bob", "cart", "bob")
    async with running(fast_config(kubeconfig)) as agent:
        await settled(agent)
    before = routes_of(kube)
    assert len(before) == 5
    mark = len(kube.emulator.log)
    async with running(fast_config(kubeconfig)) as agent:
        await settled(agent)
        assert agent.controller is not None and agent.controller.reconciles >= 3
        assert traefik_writes(kube, mark) == []
    assert routes_of(kube) == before


async def test_a_410_on_the_watch_relists_and_converges(tmp_path: Path) -> None:
    with running_emulator(garbage_collect=False) as kube:
        services = kube.emulator.resource("v1", "services")
        add_copy(kube, "shop", "shop")
        add_copy(kube, "shop-alice", "shop", "alice")
        async with running(fast_config(kube.kubeconfig(tmp_path / "kc"))) as agent:
            await settled(agent)
            assert agent.controller is not None
            informer = agent.controller.service_informers[0]
            assert informer.lists == 1
            # While the agent is cut off (nothing awaits here, so it cannot
            # re-watch in between): alice leaves, bob arrives, history is compacted.
            kube.emulator.drop_watches()
            kube.emulator.delete(services, "dev", "shop-alice")
            add_copy(kube, "shop-bob", "shop", "bob")
            kube.emulator.compact()
            await eventually(lambda: informer.lists >= 2)
            await eventually(
                lambda: (
                    set(routes_of(kube))
                    == {
                        "ingressroutes/dev/devstack-shop",
                        "ingressroutes/dev/devstack-shop--bob",
                        "middlewares/dev/devstack-shop--bob-route",
                    }
                )
            )
            gone = [r for r in kube.emulator.log if r.verb == "watch" and r.plural == "services"]
            assert len(gone) >= 2
            metric = agent.metrics.get(
                "devstack_agent_watch_restarts_total", resource="services@*", reason="gone"
            )
            assert metric >= 1


async def test_500_and_429_from_the_api_are_retried(kube: EmulatorThread, kubeconfig: Path) -> None:
    add_copy(kube, "shop", "shop")
    async with running(fast_config(kubeconfig)) as agent:
        await settled(agent)
        kube.emulator.fail(500, verbs={"create"}, plural="ingressroutes", times=2)
        kube.emulator.fail(429, verbs={"create"}, plural="middlewares", retry_after=0.2)
        mark = len(kube.emulator.log)
        add_copy(kube, "shop-alice", "shop", "alice")
        await eventually(lambda: "ingressroutes/dev/devstack-shop--alice" in routes_of(kube))
        creates = [(r.plural, r.status) for r in traefik_writes(kube, mark)]
        assert creates.count(("ingressroutes", 500)) == 2
        assert creates.count(("middlewares", 429)) == 1
        assert creates.count(("ingressroutes", 201)) == 1
        assert creates.count(("middlewares", 201)) == 1
        assert agent.metrics.get("devstack_agent_reconciles_total", result="retry") >= 3


async def test_with_two_agents_only_the_leader_writes(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    add_copy(kube, "shop", "shop")
    async with (
        running(fast_config(kubeconfig, identity="agent-a")) as a,
        running(fast_config(kubeconfig, identity="agent-b")) as b,
    ):
        assert a.elector is not None and b.elector is not None
        await eventually(lambda: a.elector.is_leader or b.elector.is_leader)  # type: ignore[union-attr]
        leader, follower = (a, b) if a.elector.is_leader else (b, a)
        await settled(leader)
        add_copy(kube, "shop-alice", "shop", "alice")
        await eventually(lambda: len(routes_of(kube)) == 3)
        assert follower.elector is not None and not follower.elector.is_leader
        agents = {r.user_agent for r in traefik_writes(kube)}
        assert agents == {f"devstack-agent/{leader.config.lease.identity}"}
        # Both replicas serve /v1/routes; only one says it leads.
        _, seen_by_follower = await get_json(follower, "/v1/routes")
        assert seen_by_follower["leader"] is False
        assert seen_by_follower["services"][0]["owners"][0]["owner"] == "alice"

        # The leader goes away; the other one takes over and writes.
        mark = len(kube.emulator.log)
        await leader.__aexit__(None, None, None)
        await settled(follower)
        add_copy(kube, "shop-bob", "shop", "bob")
        await eventually(lambda: len(routes_of(kube)) == 5)
        agents = {r.user_agent for r in traefik_writes(kube, mark)}
        assert agents == {f"devstack-agent/{follower.config.lease.identity}"}


async def test_an_expired_copy_loses_its_routes_and_is_reported(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1.5)
    add_copy(kube, "shop", "shop")
    add_copy(
        kube,
        "shop-alice",
        "shop",
        "alice",
        annotations={EXPIRES_AT_ANNOTATION: soon.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    )
    async with running(fast_config(kubeconfig)) as agent:
        await settled(agent)
        assert "ingressroutes/dev/devstack-shop--alice" in routes_of(kube)
        await eventually(lambda: set(routes_of(kube)) == {"ingressroutes/dev/devstack-shop"})
        _, body = await get_json(agent, "/v1/routes")
        (owner,) = body["services"][0]["owners"]
        assert owner["owner"] == "alice" and owner["expired"] is True
        assert agent.metrics.get("devstack_agent_expired_copies") == 1
        # The Service itself is left alone: only its routes go.
        services = kube.emulator.resource("v1", "services")
        assert kube.emulator.get(services, "dev", "shop-alice") is not None


async def test_an_edited_route_is_put_back(kube: EmulatorThread, kubeconfig: Path) -> None:
    add_copy(kube, "shop", "shop")
    async with running(fast_config(kubeconfig)) as agent:
        await settled(agent)
        routes = kube.emulator.resource("traefik.io/v1alpha1", "ingressroutes")
        original = kube.emulator.get(routes, "dev", "devstack-shop")
        assert original is not None
        kube.emulator.patch(
            routes,
            "dev",
            "devstack-shop",
            {"spec": {"entryPoints": ["websecure"]}, "metadata": {"labels": {"team": "x"}}},
        )
        await eventually(
            lambda: (
                (kube.emulator.get(routes, "dev", "devstack-shop") or {}).get("spec")
                == original["spec"]
            )
        )
        # A label someone else added stays.
        again = kube.emulator.get(routes, "dev", "devstack-shop")
        assert again is not None and again["metadata"]["labels"]["team"] == "x"


async def test_a_name_taken_by_someone_else_is_reported_not_overwritten(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    routes = kube.emulator.resource("traefik.io/v1alpha1", "ingressroutes")
    theirs = kube.emulator.create(
        routes,
        {
            "metadata": {"name": "devstack-shop", "namespace": "dev"},
            "spec": {"routes": [{"kind": "Rule", "match": "Host(`theirs`)"}]},
        },
    )
    add_copy(kube, "shop", "shop")
    add_copy(kube, "bad", "shop", "Not_A_Label")
    async with running(fast_config(kubeconfig)) as agent:
        await eventually(
            lambda: agent.metrics.get("devstack_agent_reconciles_total", result="error") >= 1
        )
        assert kube.emulator.get(routes, "dev", "devstack-shop") == theirs
        _, body = await get_json(agent, "/v1/routes")
        assert [p["reason"] for p in body["problems"]] == ["bad-owner-label"]


ALICE = {"ingressroutes/dev/devstack-shop--alice", "middlewares/dev/devstack-shop--alice-route"}


def _at(delta: datetime.timedelta) -> str:
    return (datetime.datetime.now(datetime.UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_an_extended_copy_is_routed_again_and_reported_again_when_it_expires_again(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    services = kube.emulator.resource("v1", "services")
    hour = datetime.timedelta(hours=1)
    add_copy(kube, "shop", "shop")
    add_copy(kube, "shop-alice", "shop", "alice", annotations={EXPIRES_AT_ANNOTATION: _at(-hour)})

    def expire_at(when: str) -> None:
        kube.emulator.patch(
            services,
            "dev",
            "shop-alice",
            {"metadata": {"annotations": {EXPIRES_AT_ANNOTATION: when}}},
        )

    async with running(fast_config(kubeconfig)) as agent:
        m = agent.metrics
        await settled(agent)
        assert not ALICE & set(routes_of(kube))
        assert m.get("devstack_agent_expired_copies") == 1
        assert m.get("devstack_agent_copy_expirations_total") == 1

        # alice extends her copy: routed again, and no longer counted as expired.
        expire_at(_at(hour))
        await eventually(lambda: set(routes_of(kube)) >= ALICE)
        await settled(agent)
        assert m.get("devstack_agent_expired_copies") == 0
        _, body = await get_json(agent, "/v1/routes")
        assert body["services"][0]["owners"][0]["expired"] is False

        # Then she lets it lapse again: it is reported again.
        expire_at(_at(-datetime.timedelta(minutes=1)))
        await eventually(lambda: not ALICE & set(routes_of(kube)))
        await settled(agent)
        assert m.get("devstack_agent_expired_copies") == 1
        assert m.get("devstack_agent_copy_expirations_total") == 2

        # Her Service goes: nothing is expired any more.
        kube.emulator.delete(services, "dev", "shop-alice")
        await eventually(lambda: m.get("devstack_agent_expired_copies") == 0)


async def test_a_ttl_annotation_ends_the_copys_routes_after_its_seconds(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    services = kube.emulator.resource("v1", "services")
    add_copy(kube, "shop", "shop")
    alice = add_copy(kube, "shop-alice", "shop", "alice", annotations={TTL_ANNOTATION: "86400"})
    created = datetime.datetime.fromisoformat(
        alice["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    )

    def stamp(seconds: int) -> str:
        return (created + datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    async with running(fast_config(kubeconfig)) as agent:
        await settled(agent)
        assert set(routes_of(kube)) >= ALICE
        _, body = await get_json(agent, "/v1/routes")
        (owner,) = body["services"][0]["owners"]
        assert (owner["expires_at"], owner["expired"]) == (stamp(86400), False)

        # alice shortens it to one second after her Service was created.
        kube.emulator.patch(
            services, "dev", "shop-alice", {"metadata": {"annotations": {TTL_ANNOTATION: "1"}}}
        )
        await eventually(lambda: not ALICE & set(routes_of(kube)))
        _, body = await get_json(agent, "/v1/routes")
        (owner,) = body["services"][0]["owners"]
        assert (owner["expires_at"], owner["expired"]) == (stamp(1), True)
        assert agent.metrics.get("devstack_agent_expired_copies") == 1
        assert set(routes_of(kube)) == {"ingressroutes/dev/devstack-shop"}


async def test_routes_of_a_service_deleted_while_the_agent_was_down_go_when_it_starts(
    tmp_path: Path,
) -> None:
    with running_emulator(garbage_collect=False) as kube:
        kubeconfig = kube.kubeconfig(tmp_path / "kc")
        add_copy(kube, "shop", "shop")
        add_copy(kube, "shop-alice", "shop", "alice")
        async with running(fast_config(kubeconfig)) as agent:
            await settled(agent)
        assert len(routes_of(kube)) == 3
        # With the agent down, alice's Service goes; nothing else cleans up.
        kube.emulator.delete(kube.emulator.resource("v1", "services"), "dev", "shop-alice")
        assert len(routes_of(kube)) == 3
        async with running(fast_config(kubeconfig)) as agent:
            await settled(agent)
            assert set(routes_of(kube)) == {"ingressroutes/dev/devstack-shop"}


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
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    services = kube.emulator.resource("v1", "services")
    routes = kube.emulator.resource("traefik.io/v1alpha1", "ingressroutes")
    add_copy(kube, "shop-alice", "shop", "alice")
    add_copy(kube, "cart-bob", "cart", "bob")
    gated: list[GatedWriter] = []

    def writer(api: KubeApi) -> GatedWriter:
        gated.append(GatedWriter(KubeWriter(api, kinds(*traefik_resources()))))
        return gated[0]

    alice, bob = "devstack-shop--alice", "devstack-cart--bob"
    async with running_controller(kubeconfig, writer=writer) as controller:
        w = gated[0]
        # Two keys: both are being written at the same moment.
        await eventually(lambda: alice in w.started and bob in w.started)
        assert (w.running[alice], w.running[bob]) == (1, 1)

        # alice's Service changes three times while her key is being written:
        # the changes wait for that worker (and coalesce), none runs beside it.
        for port in (81, 82, 83):
            kube.emulator.patch(
                services, "dev", "shop-alice", {"spec": {"ports": [{"name": "http", "port": port}]}}
            )

        def seen_port() -> int:
            svc = controller._services.get(("dev", "shop-alice")) or {}
            return int(svc["spec"]["ports"][0]["port"]) if svc else 0

        await eventually(lambda: seen_port() == 83)
        key: RouteKey = ("shop", "alice")
        assert key in controller._dirty
        await asyncio.sleep(0.2)  # room for a second worker to (wrongly) start
        assert w.running[alice] == 1

        w.release.set()
        await controller_settled(controller)
        assert w.most == {alice: 1, bob: 1}
        route = kube.emulator.get(routes, "dev", alice)
        assert route is not None
        assert {r["services"][0]["port"] for r in route["spec"]["routes"]} == {83}
        assert w.writes[alice] >= 3  # Middleware, IngressRoute, then the port change


async def test_metrics_are_prometheus_text_with_a_reconcile_time_histogram(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    add_copy(kube, "shop", "shop")
    add_copy(kube, "shop-alice", "shop", "alice")
    async with running(fast_config(kubeconfig)) as agent:
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
