"""The agent against the Kubernetes emulator: what it writes, when it does
not write, and how it recovers (410, 500, 429, a second replica, a TTL)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from devstack.agent.service import Agent, AgentConfig
from devstack.core.routing import EXPIRES_AT_ANNOTATION, OWNER_LABEL, SERVICE_LABEL
from tests.agent.helpers import fast_config
from tests.support.kube import EmulatorThread, eventually, running_emulator

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
