"""How the agent waits and retries against the emulator: Retry-After (in
seconds, as an HTTP-date, in ``details.retryAfterSeconds``) on list, watch,
create, patch and delete; watches resuming from the last ``resourceVersion``
without relisting; a server that keeps answering 410.

The agent waits through a recording clock (tests/agent/helpers.py): each
test checks which delay it chose and that the wait came between the failed
request and its retry, never how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
from collections.abc import AsyncIterator
from pathlib import Path

from devstack.agent.informer import Backoff, Informer
from devstack.agent.kube import SERVICES, RawObject, kube_client
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL
from tests.agent.helpers import (
    RecordingClock,
    Wait,
    clock_for,
    controller_settled,
    running_controller,
)
from tests.support.kube import EmulatorThread, LoggedRequest, running_emulator
from tests.support.net import eventually

# The base delays are tiny, so a wait as long as the advertised one can only
# come from the server's hint.
TINY = Backoff(initial=0.01, maximum=0.01, factor=1.0, jitter=0.0)


def add_service(kube: EmulatorThread, name: str, owner: str | None = None) -> RawObject:
    labels = {SERVICE_LABEL: name.split("-")[0]}
    if owner:
        labels[OWNER_LABEL] = owner
    return kube.emulator.register_service(namespace="dev", name=name, port=9, labels=labels)


def requests(kube: EmulatorThread, verb: str, plural: str) -> list[tuple[int, LoggedRequest]]:
    """(index in the log, request) of every ``verb`` on ``plural``."""
    return [(i, r) for i, r in enumerate(kube.emulator.log) if (r.verb, r.plural) == (verb, plural)]


def waits_between(clock: RecordingClock, start: int, end: int) -> list[Wait]:
    """The waits asked for after request ``start`` was logged and before
    request ``end`` was."""
    return [w for w in clock.waits if start < w.mark <= end]


@contextlib.asynccontextmanager
async def informer(
    kubeconfig: Path, clock: RecordingClock, backoff: Backoff = TINY
) -> AsyncIterator[Informer]:
    async with kube_client(str(kubeconfig)) as api:
        inf = Informer(
            api,
            SERVICES,
            namespace=None,
            label_selector=SERVICE_LABEL,
            on_change=lambda old, new: None,
            backoff=backoff,
            watch_timeout=60,
            clock=clock,
        )
        task = asyncio.create_task(inf.run())
        try:
            yield inf
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_list_that_fails_waits_as_long_as_the_server_asks(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    add_service(kube, "shop")
    http_date = email.utils.format_datetime(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1), usegmt=True
    )
    emu = kube.emulator
    emu.fail(500, verbs={"list"}, plural="services", retry_after=7)  # header + details
    emu.fail(429, verbs={"list"}, plural="services", retry_after=3, retry_after_in={"details"})
    emu.fail(503, verbs={"list"}, plural="services", retry_after=http_date)  # an HTTP-date
    clock = clock_for(kube)
    async with informer(kubeconfig, clock) as inf:
        await eventually(lambda: inf.synced.is_set())
        assert [k[1] for k in inf.cache] == ["shop"]
    lists = requests(kube, "list", "services")
    assert [r.status for _, r in lists] == [500, 429, 503, 200]
    (first,) = waits_between(clock, lists[0][0], lists[1][0])
    (second,) = waits_between(clock, lists[1][0], lists[2][0])
    (third,) = waits_between(clock, lists[2][0], lists[3][0])
    assert first.delay >= 7
    assert second.delay >= 3
    assert 3500 < third.delay <= 3600


async def test_a_watch_that_fails_waits_and_resumes_without_relisting(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    add_service(kube, "shop")
    emu = kube.emulator
    # An HTTP 503 with Retry-After, then a 429 as an ERROR event in the stream
    # (which carries only details.retryAfterSeconds), then a 500 with no hint.
    emu.fail(503, verbs={"watch"}, plural="services", retry_after=5)
    emu.fail(429, verbs={"watch"}, plural="services", retry_after=4, in_stream=True)
    emu.fail(500, verbs={"watch"}, plural="services")
    clock = clock_for(kube)
    async with informer(kubeconfig, clock) as inf:
        await eventually(lambda: len(requests(kube, "watch", "services")) >= 4)
        add_service(kube, "cart")
        await eventually(lambda: ("dev", "cart") in inf.cache)
        assert inf.lists == 1
    watches = requests(kube, "watch", "services")
    (after_503,) = waits_between(clock, watches[0][0], watches[1][0])
    (after_429,) = waits_between(clock, watches[1][0], watches[2][0])
    (after_500,) = waits_between(clock, watches[2][0], watches[3][0])
    assert after_503.delay >= 5
    assert after_429.delay >= 4
    assert after_500.delay < 1  # no hint: the (tiny) backoff
    assert watches[0][1].status == 503


async def test_an_ended_watch_resumes_from_the_last_resource_version(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    add_service(kube, "shop")
    clock = clock_for(kube)
    async with informer(kubeconfig, clock) as inf:
        await eventually(lambda: inf.synced.is_set())
        # Events on the open watch move the informer's resourceVersion on.
        cart = add_service(kube, "cart")
        await eventually(lambda: ("dev", "cart") in inf.cache)
        last_seen = inf.resource_version
        assert last_seen == cart["metadata"]["resourceVersion"]
        mark = len(kube.emulator.log)
        # The server ends every watch (no compaction); meanwhile bob arrives.
        kube.emulator.drop_watches()
        add_service(kube, "shop-bob", "bob")
        await eventually(lambda: ("dev", "shop-bob") in inf.cache)
        rewatch = [r for i, r in requests(kube, "watch", "services") if i >= mark]
        assert rewatch and rewatch[0].query.get("resourceVersion") == last_seen
        assert inf.lists == 1
        assert requests(kube, "list", "services")[-1][0] < mark


async def test_a_server_that_keeps_answering_410_is_not_relisted_in_a_tight_loop(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    add_service(kube, "shop")
    kube.emulator.fail(410, verbs={"watch"}, plural="services", times=4, in_stream=True)
    clock = clock_for(kube)
    backoff = Backoff(initial=1.0, maximum=60.0, factor=2.0, jitter=0.0)
    async with informer(kubeconfig, clock, backoff) as inf:
        await eventually(lambda: inf.lists == 5)
        await eventually(lambda: len(requests(kube, "watch", "services")) == 5)
    lists = [i for i, _ in requests(kube, "list", "services")]
    watches = requests(kube, "watch", "services")
    assert [r.status for _, r in watches[:4]] == [200] * 4  # 410 as ERROR events
    # The first 410 relists at once (history compacted: the usual case) ...
    assert waits_between(clock, watches[0][0], lists[1]) == []
    # ... each further 410 straight after a fresh list backs off, growing.
    delays = [
        [w.delay for w in waits_between(clock, watches[n][0], lists[n + 1])] for n in (1, 2, 3)
    ]
    assert delays == [[1.0], [2.0], [4.0]]


async def test_create_patch_and_delete_are_retried_after_the_advertised_delay(
    tmp_path: Path,
) -> None:
    with running_emulator(garbage_collect=False) as kube:
        emu = kube.emulator
        services = emu.resource("v1", "services")
        routes = emu.resource("traefik.io/v1alpha1", "ingressroutes")
        add_service(kube, "shop")
        clock = clock_for(kube)
        async with running_controller(
            kube.kubeconfig(tmp_path / "kc"), clock=clock, backoff=TINY
        ) as controller:
            await controller_settled(controller)

            # create: a 429 that asks for 9 s, then a 500 with no hint.
            emu.fail(429, verbs={"create"}, plural="middlewares", retry_after=9)
            emu.fail(500, verbs={"create"}, plural="ingressroutes")
            add_service(kube, "shop-alice", "alice")
            await eventually(lambda: emu.get(routes, "dev", "devstack-shop--alice") is not None)
            await controller_settled(controller)

            # patch: the baseline's port changes; two 500s, one asking for 6 s.
            emu.fail(500, verbs={"patch"}, plural="ingressroutes", retry_after=6)
            emu.fail(500, verbs={"patch"}, plural="ingressroutes")
            emu.patch(services, "dev", "shop", {"spec": {"ports": [{"name": "http", "port": 81}]}})

            def port_is_81() -> bool:
                route = emu.get(routes, "dev", "devstack-shop") or {}
                return route["spec"]["routes"][0]["services"][0]["port"] == 81

            await eventually(port_is_81)
            await controller_settled(controller)

            # delete: alice leaves (no garbage collector: the agent deletes).
            emu.fail(503, verbs={"delete"}, plural="ingressroutes", retry_after=8)
            emu.delete(services, "dev", "shop-alice")
            await eventually(lambda: emu.get(routes, "dev", "devstack-shop--alice") is None)
            await controller_settled(controller)

    for verb, plural, statuses, advertised in (
        ("create", "middlewares", [429, 201], 9),
        ("patch", "ingressroutes", [500, 500, 200], 6),
        ("delete", "ingressroutes", [503, 200], 8),
    ):
        seen = requests(kube, verb, plural)
        assert [r.status for _, r in seen] == statuses, (verb, plural)
        (first_retry,) = [w for w in waits_between(clock, seen[0][0], seen[1][0])]
        assert first_retry.kind == "timer" and first_retry.delay >= advertised, (verb, plural)
    creates = requests(kube, "create", "ingressroutes")
    assert [r.status for _, r in creates] == [201, 500, 201]  # baseline, alice, alice again
