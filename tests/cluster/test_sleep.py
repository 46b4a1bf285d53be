"""Idle personal copies sleep, told as a user's steps, on the real control
plane with real Traefik in front.

Real parts on loopback: the testbed's API server, controller-manager,
scheduler and kwok (a copy's Deployment becomes Pods that turn Ready on a
simulated node, and go when it is scaled to zero), Traefik reading the API
server through its ``kubernetesCRD`` provider with its Prometheus metrics on
(``addServicesLabels``), which the agent scrapes for routed requests, and
the agent in this process (``devstack.agent.service.Agent``, as in
``test_routing_traefik.py``), with a short ``idle_after``.

The upstreams are small HTTP servers on 127.0.0.1 behind selector-less
Services (``register_service``: the kwok Pods run nothing), so the Service a
route sends to answers whatever the Deployment's replicas are: what a
request reaches is decided by the routes alone, which is what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from devstack.agent.desired import AgentSettings
from devstack.agent.kube import kube_client
from devstack.agent.service import Agent
from devstack.agent.sleep import (
    ASLEEP_HEADER,
    LAST_SYNC_ANNOTATION,
    SleepRecord,
    SleepSettings,
    route_base_of,
    service_requests,
    traefik_route_base,
)
from devstack.agent.sleeper import heartbeat, wake
from devstack.core.routing import EXPIRES_AT_ANNOTATION, OWNER_LABEL, SERVICE_LABEL
from tests.cluster.test_routing_traefik import (  # the module's Traefik access (fixture)
    TraefikAccess,
    agent_config,
    register_service,
    traefik_access,  # noqa: F401
)
from tests.support.net import eventually
from tests.support.testbed import Kube, Testbed
from tests.support.traefik import CrdTraefik

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

Obj = dict[str, Any]
WAIT = 90.0  # seconds: generous, for a busy 2-core machine
HOST = "shop.localtest.me"


def alice_key() -> dict[str, str]:
    return {"baggage": "devstack-route=alice"}


@pytest.fixture(scope="module")
def traefik(
    traefik_access: TraefikAccess,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CrdTraefik]:
    """Traefik with its Prometheus metrics on its own entry point, with the
    ``service`` label the agent reads requests by."""
    workdir = tmp_path_factory.mktemp("traefik-sleep")
    traefik = CrdTraefik(
        workdir, traefik_access.server, ca_path=traefik_access.ca, token=traefik_access.token
    )
    static = yaml.safe_load(traefik.static_path.read_text())
    assert static["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    static["metrics"] = {"prometheus": {"addServicesLabels": True, "entryPoint": "traefik"}}
    traefik.static_path.write_text(yaml.safe_dump(static))
    traefik.start()
    try:
        yield traefik
    finally:
        traefik.stop()


def metrics_url(traefik: CrdTraefik) -> str:
    return f"http://127.0.0.1:{traefik.api_port}/metrics"


@dataclass
class Story:
    admin: Kube
    namespace: str
    traefik: CrdTraefik
    session: aiohttp.ClientSession
    kubeconfig: Path
    runners: list[web.AppRunner] = dataclasses.field(default_factory=list)

    async def app(self, name: str) -> int:
        async def handle(request: web.Request) -> web.Response:
            return web.json_response({"who": name, "baggage": request.headers.get("baggage")})

        app = web.Application()
        app.router.add_get("/", handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def service(
        self, name: str, owner: str | None = None, annotations: dict[str, str] | None = None
    ) -> None:
        labels = {SERVICE_LABEL: "shop", **({OWNER_LABEL: owner} if owner else {})}
        register_service(
            self.admin,
            self.namespace,
            name,
            await self.app(name),
            labels=labels,
            annotations=annotations,
        )

    def deployment(self, name: str, owner: str) -> None:
        """The copy's workload, as its chart makes it (kwok runs its Pods)."""
        labels = {SERVICE_LABEL: "shop", OWNER_LABEL: owner}
        self.admin.create(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name, **labels}},
                        "spec": {
                            "containers": [
                                {
                                    "name": "app",
                                    "image": "example.invalid/never-pulled:1",
                                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
                                }
                            ]
                        },
                    },
                },
            }
        )

    def replicas(self, name: str) -> tuple[int, int]:
        d = self.admin.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}")
        return int(d["spec"].get("replicas") or 0), int(d["status"].get("readyReplicas") or 0)

    def ready(self, name: str) -> bool:
        return self.replicas(name) == (1, 1)

    async def answers(self, host: str, headers: dict[str, str], expected: Any) -> bool:
        return bool(await self.get(host, headers) == expected)

    def records(self) -> dict[str, SleepRecord | None]:
        cm = self.admin.maybe(
            f"/api/v1/namespaces/{self.namespace}/configmaps/devstack-agent-sleep"
        )
        data = (cm or {}).get("data") or {}
        return {k: SleepRecord.from_json(v) for k, v in data.items()}

    async def get(self, host: str, headers: dict[str, str] | None = None) -> tuple[Any, str | None]:
        """(who answered, or the status; the asleep header)."""
        async with self.session.get(
            self.traefik.url, headers={"Host": host, **(headers or {})}
        ) as r:
            asleep = r.headers.get(ASLEEP_HEADER)
            if r.status != 200:
                return r.status, asleep
            return (await r.json())["who"], asleep

    async def agent(self, sleep: SleepSettings, identity: str) -> Agent:
        config = agent_config(self.kubeconfig, self.namespace, AgentSettings(), identity)
        return await Agent(dataclasses.replace(config, sleep=sleep)).__aenter__()


@contextlib.asynccontextmanager
async def story(testbed: Testbed, traefik: CrdTraefik, namespace: str) -> AsyncIterator[Story]:
    with testbed.admin() as admin:
        async with aiohttp.ClientSession() as session:
            s = Story(admin, namespace, traefik, session, testbed.admin_kubeconfig)
            try:
                yield s
            finally:
                for runner in s.runners:
                    await runner.cleanup()
                for plural in ("ingressroutes", "middlewares"):
                    admin.delete(f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/{plural}")


async def test_an_idle_copy_sleeps_falls_back_to_the_baseline_and_wakes(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    async with story(testbed, traefik, namespace) as s:
        # The team runs the shop; alice and bob each run a copy of it.
        await s.service("shop")
        for owner in ("alice", "bob"):
            await s.service(f"shop-{owner}", owner)
            s.deployment(f"shop-{owner}", owner)
        for owner in ("alice", "bob"):
            await eventually(functools.partial(s.ready, f"shop-{owner}"), timeout=WAIT)

        # An agent that never sleeps anything routes them.
        never = SleepSettings(enabled=False)
        first = await s.agent(never, "agent-a")
        try:
            for owner in ("alice", "bob"):
                key = {"baggage": f"devstack-route={owner}"}
                reaches = functools.partial(s.answers, HOST, key, (f"shop-{owner}", None))
                await eventually(reaches, timeout=WAIT)
        finally:
            await first.__aexit__(None, None, None)

        # bob keeps using his copy: a request routed to it every 0.3 s.
        async def bob_uses_it() -> None:
            while True:
                await s.get(HOST, {"x-devstack-route": "bob"})
                await asyncio.sleep(0.3)

        traffic = asyncio.create_task(bob_uses_it())
        sleep = SleepSettings(
            idle_after=4.0, check_interval=0.5, traefik_metrics_urls=(metrics_url(traefik),)
        )
        agent = await s.agent(sleep, "agent-b")
        try:
            # Nobody syncs to alice's copy nor sends it a request: it sleeps.
            await eventually(lambda: s.replicas("shop-alice") == (0, 0), timeout=WAIT)
            record = s.records()[f"{namespace}.shop-alice"]
            assert record is not None
            assert (record.owner, record.service, record.reason) == ("alice", "shop", "idle")
            assert (record.replicas, record.cpu_cores, record.memory_bytes) == (1, 0.25, 64 * 2**20)

            # Her routes fall back to the baseline, which says her copy sleeps.
            since = datetime.datetime.fromtimestamp(record.since, datetime.UTC)
            header = (
                f"shop copy of alice asleep since {since.strftime('%Y-%m-%dT%H:%M:%SZ')}; "
                "devstack connect shop wakes it"
            )
            await eventually(lambda: _is(s.get(HOST, alice_key()), ("shop", header)), timeout=WAIT)
            assert await s.get(HOST, {"x-devstack-route": "alice"}) == ("shop", header)
            # Her preview URL too, with her routing key still injected.
            async with s.session.get(
                traefik.url, headers={"Host": "shop--alice.preview.localtest.me"}
            ) as r:
                assert r.headers.get(ASLEEP_HEADER) == header
                body = await r.json()
            assert body["who"] == "shop"
            assert "devstack-route=alice" in body["baggage"]
            # Everyone else is served as before, without the header.
            assert await s.get(HOST) == ("shop", None)

            # bob's requests kept his copy awake: the agent read them from
            # Traefik's counter for the service his route sends to.
            assert s.replicas("shop-bob") == (1, 1)
            assert f"{namespace}.shop-bob" not in s.records()
            async with s.session.get(metrics_url(traefik)) as r:
                counts = service_requests(await r.text())
            bobs = traefik_route_base(namespace, "devstack-shop--bob")
            assert any(route_base_of(k) == bobs and v > 0 for k, v in counts.items()), counts

            # What the agent shows: the gauge, the span the usage ledger reads,
            # and /v1/routes.
            assert (
                agent.metrics.registry.get_sample_value(
                    "devstack_sleep_copies", {"owner": "alice", "team": ""}
                )
                == 1.0
            )
            assert agent.sleeper is not None
            (span,) = [x for x in agent.sleeper.sleep_spans() if x.owner == "alice"]
            assert (span.key, span.until, span.cpu_cores) == (f"{namespace}/shop-alice", None, 0.25)
            async with s.session.get(f"http://127.0.0.1:{agent.port}/v1/routes") as r:
                routes = await r.json()
            (shop,) = routes["services"]
            owners = {o["owner"]: o["asleep_since"] for o in shop["owners"]}
            assert owners == {"alice": since.strftime("%Y-%m-%dT%H:%M:%SZ"), "bob": None}

            # `devstack connect shop` wakes it and waits until it is ready.
            lines: list[str] = []
            async with kube_client(str(s.kubeconfig)) as api:
                woken = await wake(
                    api, namespace, "shop", "alice", release="shop--alice", progress=lines.append
                )
            assert woken == ["shop-alice"]
            assert s.replicas("shop-alice") == (1, 1)
            assert lines[0].startswith("shop--alice: waking (asleep since ")
            assert lines[-1] == "shop--alice: awake"

            # The agent sees it awake: the record goes, her routes come back.
            await eventually(lambda: f"{namespace}.shop-alice" not in s.records(), timeout=WAIT)
            await eventually(
                lambda: _is(s.get(HOST, alice_key()), ("shop-alice", None)), timeout=WAIT
            )
            (span,) = [x for x in agent.sleeper.sleep_spans() if x.owner == "alice"]
            assert span.until is not None and span.until >= span.since

            # A sync session keeps it awake: `connect`'s heartbeat, every
            # second here, for more than idle_after past the wake.
            sleeper = agent.sleeper
            async with kube_client(str(s.kubeconfig)) as api:
                checks = sleeper.checks
                for _ in range(8):
                    assert await heartbeat(api, namespace, "shop", "alice") == 1
                    await asyncio.sleep(1.0)
                await eventually(lambda: sleeper.checks >= checks + 8, timeout=WAIT)
            d = s.admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/shop-alice")
            assert d["metadata"]["annotations"][LAST_SYNC_ANNOTATION].endswith("Z")
            assert s.replicas("shop-alice") == (1, 1)
            assert f"{namespace}.shop-alice" not in s.records()
            assert (
                agent.metrics.registry.get_sample_value(
                    "devstack_sleep_copies", {"owner": "alice", "team": ""}
                )
                is None
            )  # cleared when the record went (in the same check, long before)
        finally:
            traffic.cancel()
            await agent.__aexit__(None, None, None)


async def test_an_expired_copy_is_scaled_to_zero(
    testbed: Testbed, traefik: CrdTraefik, namespace: str
) -> None:
    async with story(testbed, traefik, namespace) as s:
        await s.service("shop")
        past = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        await s.service("shop-carol", "carol", annotations={EXPIRES_AT_ANNOTATION: past})
        s.deployment("shop-carol", "carol")
        await eventually(lambda: s.replicas("shop-carol") == (1, 1), timeout=WAIT)
        # Nothing would sleep for idleness here: the TTL alone scales it down.
        sleep = SleepSettings(idle_after=3600.0, check_interval=0.5)
        agent = await s.agent(sleep, "agent-c")
        try:
            await eventually(lambda: s.replicas("shop-carol") == (0, 0), timeout=WAIT)
            record = s.records()[f"{namespace}.shop-carol"]
            assert record is not None and record.reason == "expired"
            # Its routes are gone (no fallback, no header): the baseline serves all.
            carol = {"baggage": "devstack-route=carol"}
            await eventually(lambda: _is(s.get(HOST, carol), ("shop", None)), timeout=WAIT)
            routes = f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/ingressroutes"
            ir = f"{routes}/devstack-shop--carol"
            assert s.admin.maybe(ir) is None
        finally:
            await agent.__aexit__(None, None, None)


async def _is(answer: Any, expected: Any) -> bool:
    return bool(await answer == expected)


# --- the laptop side: what `devstack connect` does before and while it syncs --------


def _project(root: Path, kubeconfig: Path, namespace: str) -> Any:
    from devstack.cli.project import KubeTarget, Project
    from devstack.core.helmfile import load

    chart = root / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: shop\nversion: 0.1.0\n")
    (root / "helmfile.yaml").write_text("releases:\n  - name: shop\n    chart: ./chart\n")
    kube = KubeTarget(
        files=(str(kubeconfig),), context=None, namespace=namespace, kubeconfig=str(kubeconfig)
    )
    return Project(root=root, helmfile=load(root), owner="alice", kube=kube, environment="default")


async def test_connect_wakes_a_sleeping_copy_marks_its_session_and_refuses_an_expired_one(
    testbed: Testbed, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from devstack.cli.workflow_connect import sync_heartbeat, wake_copy
    from devstack.core.errors import ConfigError

    project = _project(tmp_path, testbed.admin_kubeconfig, namespace)
    with testbed.admin() as admin:
        s = Story(admin, namespace, None, None, testbed.admin_kubeconfig)  # type: ignore[arg-type]
        s.deployment("shop-alice", "alice")
        await eventually(lambda: s.replicas("shop-alice") == (1, 1), timeout=WAIT)
        # Awake: nothing to wake.
        assert await wake_copy(project, "shop") == []
        # The agent put it to sleep, recording that it had 2 replicas.
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/shop-alice"
        admin.merge_patch(path, {"spec": {"replicas": 0}})
        await eventually(lambda: s.replicas("shop-alice") == (0, 0), timeout=WAIT)
        held = SleepRecord(
            owner="alice", team="", service="shop", since=1_800_000_000.0, reason="idle",
            replicas=2, cpu_cores=0.5, memory_bytes=2.0**27,
        )  # fmt: skip
        admin.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "devstack-agent-sleep",
                    "namespace": namespace,
                    "labels": {"devstack.dev/role": "sleep"},
                },
                "data": {f"{namespace}.shop-alice": held.to_json()},
            }
        )
        assert await wake_copy(project, "shop") == ["shop-alice"]
        assert s.replicas("shop-alice") == (2, 2)
        progress = capsys.readouterr().err.splitlines()
        assert progress[0] == (
            "shop--alice: waking (asleep since 2027-01-15T08:00:00Z): scaling shop-alice to 2"
        )
        assert progress[-1] == "shop--alice: awake"

        # While a session lasts, it marks the copy in use, again and again.
        def stamps() -> str | None:
            annotations = admin.get(path)["metadata"].get("annotations") or {}
            return annotations.get(LAST_SYNC_ANNOTATION)

        with sync_heartbeat(project, "shop", interval=0.2):
            first = stamps()
            assert first is not None and first.endswith("Z")  # at the start
            await eventually(lambda: stamps() != first, timeout=WAIT)  # and again

        # Its TTL passed: connect says so, and what to run.
        past = "2026-01-01T00:00:00Z"
        await s.service("shop-alice", "alice", annotations={EXPIRES_AT_ANNOTATION: past})
        with pytest.raises(ConfigError, match=r"expired at 2026-01-01T00:00:00Z.*devstack up shop"):
            await wake_copy(project, "shop")


async def test_up_scales_a_copy_at_zero_back_to_what_its_chart_renders(
    testbed: Testbed, namespace: str, tmp_path: Path
) -> None:
    """What `devstack up` does after its upgrade, for a copy's release."""
    import io

    from devstack.cli.cluster_up import Outcome, PlannedRelease, Reporter, _wake_copy

    project = _project(tmp_path, testbed.admin_kubeconfig, namespace)
    with testbed.admin() as admin:
        s = Story(admin, namespace, None, None, testbed.admin_kubeconfig)  # type: ignore[arg-type]
        s.deployment("shop-alice", "alice")
        s.deployment("shop-alice-worker", "alice")
        for name in ("shop-alice", "shop-alice-worker"):
            admin.merge_patch(
                f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                {"spec": {"replicas": 0}},
            )
        release = PlannedRelease(
            service="shop", release="shop--alice", role="copy", namespace=namespace,
            action="upgrade", injected={}, values={}, chart="./chart", chart_path=None,
            version=None,
        )  # fmt: skip
        outcome, stream = Outcome(release), io.StringIO()
        # The chart renders 2 replicas of the app and none of the worker.
        workloads = [
            {"kind": "Deployment", "metadata": {"name": name}, "spec": {"replicas": n}}
            for name, n in (("shop-alice", 2), ("shop-alice-worker", 0))
        ]
        async with kube_client(str(testbed.admin_kubeconfig)) as api:
            woke = await _wake_copy(
                project, api, outcome, namespace, workloads, Reporter(stream=stream)
            )
        assert woke and not outcome.error
        assert s.replicas("shop-alice") == (2, 2)
        assert s.replicas("shop-alice-worker") == (0, 0)
        lines = stream.getvalue().splitlines()
        assert lines[0] == "shop--alice: waking: scaling shop-alice to 2"
        assert lines[-1] == "shop--alice: awake"
