"""How the agent waits and retries, where the case needs an exact sequence
of answers that no real component gives on demand.

The real API server covers the rest, in tests/cluster/test_agent_faults.py:
429s with ``Retry-After`` (seconds, as kube-apiserver sends it) on the
agent's list and watch, 500s and 503s on its creates, patches and deletes
(done exactly once), a slow server, a real 410 Gone and a real refusal
(403) after a restart. What stays here, each test saying why: the other
forms of ``Retry-After`` (an HTTP-date, ``details.retryAfterSeconds``
alone, a 429 inside a watch stream), a watch the server ends cleanly on
demand, and a server that keeps answering 410, all on the emulator (kmock);
and the backoff sequence after refusals, against a scripted API object.

The agent waits through a recording clock (tests/agent/helpers.py): each
test checks which delay it chose and that the wait came between the failed
request and its retry, never how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from devstack.agent.informer import Backoff, Informer
from devstack.agent.kube import (
    SERVICES,
    KubeApi,
    KubeError,
    KubeUnreachableError,
    RawObject,
    Resource,
    WatchEvent,
    error_for_status,
    kube_client,
)
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL
from tests.agent.helpers import (
    RecordingClock,
    Wait,
    clock_for,
)
from tests.support.kube import EmulatorThread, LoggedRequest
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
    """On the emulator because kube-apiserver never sends these forms of
    ``Retry-After``: a delay only in the Status body's
    ``details.retryAfterSeconds``, and an HTTP-date (RFC 9110 allows both;
    a proxy or a gateway in front of a cluster may send them). The header
    in seconds, as the real server sends it, is tested on the real server
    (tests/cluster/test_agent_faults.py)."""
    add_service(kube, "shop")
    http_date = email.utils.format_datetime(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1), usegmt=True
    )
    emu = kube.emulator
    emu.fail(429, verbs={"list"}, plural="services", retry_after=3, retry_after_in={"details"})
    emu.fail(503, verbs={"list"}, plural="services", retry_after=http_date)  # an HTTP-date
    clock = clock_for(kube)
    async with informer(kubeconfig, clock) as inf:
        await eventually(lambda: inf.synced.is_set())
        assert [k[1] for k in inf.cache] == ["shop"]
    lists = requests(kube, "list", "services")
    assert [r.status for _, r in lists] == [429, 503, 200]
    (first,) = waits_between(clock, lists[0][0], lists[1][0])
    (second,) = waits_between(clock, lists[1][0], lists[2][0])
    assert first.delay >= 3
    assert 3500 < second.delay <= 3600


async def test_a_watch_that_fails_waits_and_resumes_without_relisting(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    """On the emulator for the 429 sent as an ``ERROR`` event inside a watch
    stream the server had accepted (200), with only
    ``details.retryAfterSeconds``: kube-apiserver cannot be made to do that
    on demand, nor to fail three watches in a row with no list between."""
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
    """On the emulator because the real server ends a watch cleanly only at
    its ``timeoutSeconds`` (five minutes for the agent) or when it stops,
    and a restarted server answers the next watch with a 410 (its watch
    cache starts afresh): a clean end of every stream, on demand, with the
    history still there, only the emulator gives."""
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
    """On the emulator because no real server answers 410 to a watch from
    the resourceVersion of the list it has just served (a broken one, or a
    proxy that mangles versions, would): the sequence must be injected. The
    usual 410, once, is tested on the real server."""
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


class ScriptedApi:
    """A stand-in for :class:`~devstack.agent.kube.KubeApi` that gives the
    informer's lists and watches scripted answers, in order: an exception
    to raise, a list's items, or a watch's events (then, if given, an
    exception in the middle of the stream). When the script runs out, lists
    are empty and watches wait for ever."""

    Answer = Exception | list[RawObject] | tuple[list[WatchEvent], Exception | None]

    def __init__(self, lists: list[Answer], watches: list[Answer]) -> None:
        self.lists, self.watches = lists, watches

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        transform: Callable[[RawObject], RawObject] | None = None,
    ) -> tuple[list[RawObject], str]:
        answer = self.lists.pop(0) if self.lists else []
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, list)
        return [transform(o) for o in answer] if transform else answer, "1"

    async def watch(self, resource: Resource, **_: Any) -> AsyncIterator[WatchEvent]:
        if not self.watches:
            await asyncio.Event().wait()
        answer = self.watches.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, tuple)
        events, error = answer
        for event in events:
            yield event
        if error is not None:
            raise error


async def test_refusals_back_off_from_short_whatever_came_before() -> None:
    """The backoff after refusals (403), exactly. Not on the real server:
    it needs an exact sequence (an outage, then refusals of the list, then
    refusals of the watch after good lists, then one after a watch that
    worked), where a real server's refusals come as they come. A real
    refusal after a restart is tested in tests/cluster/test_agent_faults.py.

    The first refusal waits the backoff's initial delay even after an
    outage had grown it (the server answers again); the delays grow while
    refusals go on, even across good lists (a watch refused after every
    list must not relist in a tight loop), up to the maximum; a watch that
    delivered something starts the run afresh. Each refusal is an error in
    the log (``informer.failed``) and counted."""
    services = "/api/v1/services"
    unreachable = KubeUnreachableError(f"GET {services}: connection refused")

    def refused() -> KubeError:
        return error_for_status(403, what=f"GET {services}", body={"message": "forbidden"})

    event = WatchEvent(type="ADDED", object={"metadata": {"name": "a", "resourceVersion": "2"}})
    api = ScriptedApi(
        lists=[unreachable, unreachable, unreachable, refused(), refused(), refused()],
        watches=[(refused()), (refused()), ([event], refused())],
    )
    clock = RecordingClock()
    backoff = Backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0.0)
    inf = Informer(
        cast(KubeApi, api),
        SERVICES,
        namespace=None,
        label_selector=SERVICE_LABEL,
        on_change=lambda old, new: None,
        backoff=backoff,
        clock=clock,
    )
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(inf.run())
        try:
            await eventually(lambda: not api.watches and not api.lists and len(clock.waits) == 9)
            await eventually(lambda: inf.lists == 4)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [w.delay for w in clock.waits] == pytest.approx(
        [
            *(0.1, 0.2, 0.4),  # no answer: the usual backoff
            *(0.1, 0.2, 0.4),  # the list refused: from short again
            *(0.8, 1.0),  # the watch refused after good lists: still growing, up to the maximum
            0.1,  # refused after the watch delivered something: from short
        ]
    )
    failed = [e for e in logs if e["event"] == "informer.failed"]
    assert [e["log_level"] for e in failed] == ["error"] * 6
    assert all(": 403 " in e["error"] for e in failed)
    counted = inf.metrics.get(
        "devstack_agent_watch_restarts_total", resource=inf.name, reason=refused().reason
    )
    assert counted == 6
