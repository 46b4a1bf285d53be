"""List-then-watch caches of Kubernetes objects (does I/O through ``kube``).

Three layers, as in kopf: :meth:`Informer.run` loops forever, backing off on
errors (``Retry-After`` honoured); each pass lists, then watches from the
list's ``resourceVersion``, re-watching from the last version seen when a
stream ends and relisting when the server answers 410 Gone. A 410 that
comes again before the watch has delivered anything (a server that keeps
answering 410) backs off like any other error instead of relisting in a
tight loop. After a list, the cache is replaced and every object that
changed (deletions included) is reported, so a missed event converges by
the same path as the first sync. A list is read in pages
(``KubeApi.list``), each object slimmed by ``transform`` as its page
arrives, so the agent never holds a large list parsed in one piece.

A refusal (403) or a missing resource (404) is logged as an error
(``informer.failed``) and retried with the same growing backoff, starting
short, whatever came before it: a server that answers, even with a refusal,
is reachable again, so the backoff of a preceding outage does not carry
over. A 403 is often brief (a just-restarted API server refuses what the
roles grant until its RBAC caches are filled; a new binding takes a moment
to be in force); a lasting one is retried every ``Backoff.maximum``.

Every wait goes through a :class:`Clock` (the seam tests use to see which
delays the agent chose without waiting for them).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from devstack.agent.kube import GoneError, KubeApi, RawObject, Resource
from devstack.agent.metrics import Metrics
from devstack.core.errors import DevstackError, PermanentError, TemporaryError
from devstack.core.logging import get_logger

log = get_logger("agent.informer")

ObjectKey = tuple[str, str]  # (namespace, name)
OnChange = Callable[[RawObject | None, RawObject | None], None]


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter; delays are settings, not magic numbers."""

    initial: float = 0.1
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, attempt: int, *, hint: float | None = None) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt))
        base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(base, hint or 0.0)


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """How the agent waits: for retries, backoff and expiry timers."""

    async def sleep(self, delay: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """The real clock: the running event loop's."""

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


def key_of(obj: RawObject) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _newer(old: RawObject | None, new: RawObject) -> bool:
    """Whether ``new`` is not older than ``old`` (resourceVersions compared
    as integers when both are; otherwise the newcomer wins)."""
    if old is None:
        return True
    a = (old.get("metadata") or {}).get("resourceVersion")
    b = (new.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(b)) >= int(str(a))
    except ValueError:
        return True


class Informer:
    """A cache of one resource (in one namespace, or all), kept by list+watch."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        *,
        namespace: str | None,
        label_selector: str | None,
        on_change: OnChange,
        transform: Callable[[RawObject], RawObject] = lambda o: o,
        backoff: Backoff = Backoff(),
        watch_timeout: int = 300,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        purpose: str | None = None,
    ) -> None:
        self.api = api
        self.resource = resource
        self.purpose = purpose
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        self.transform = transform
        self.backoff = backoff
        self.watch_timeout = watch_timeout
        self.metrics = metrics or Metrics()
        self.clock: Clock = clock or LoopClock()
        self.cache: dict[ObjectKey, RawObject] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.lists = 0  # how many times it listed (tests read this)
        self._events = 0  # watch events since the last list

    @property
    def name(self) -> str:
        """How logs and metrics name it: ``services@*`` for routing's own,
        ``usage:services@*`` for another part's cache of the same resource."""
        scope = f"{self.resource.plural}@{self.namespace or '*'}"
        return f"{self.purpose}:{scope}" if self.purpose else scope

    def _set(self, obj: RawObject) -> None:
        key = key_of(obj)
        old = self.cache.get(key)
        if not _newer(old, obj) or old == obj:
            return  # (an equal copy, such as the watch event of our own write: keep ours)
        self.cache[key] = obj
        self.on_change(old, obj)

    def _drop(self, key: ObjectKey) -> None:
        old = self.cache.pop(key, None)
        if old is not None:
            self.on_change(old, None)

    def observe(self, obj: RawObject) -> None:
        """Record what a write returned, before its watch event arrives."""
        self._set(self.transform(obj))

    def forget(self, namespace: str, name: str) -> None:
        """Record a delete we made."""
        self._drop((namespace, name))

    async def _list(self) -> None:
        items, rv = await self.api.list(
            self.resource,
            namespace=self.namespace,
            label_selector=self.label_selector,
            transform=self.transform,
        )
        self.lists += 1
        fresh = {key_of(o): o for o in items}
        for key in list(self.cache):
            if key not in fresh:
                self._drop(key)
        for obj in fresh.values():
            key = key_of(obj)
            old = self.cache.get(key)
            if old != obj:
                self.cache[key] = obj
                self.on_change(old, obj)
        self.resource_version = rv
        self._events = 0
        self.synced.set()

    async def _watch(self) -> None:
        async for event in self.api.watch(
            self.resource,
            namespace=self.namespace,
            resource_version=self.resource_version,
            label_selector=self.label_selector,
            timeout_seconds=self.watch_timeout,
        ):
            self._events += 1
            obj = event["object"]
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if event["type"] == "DELETED":
                self._drop(key_of(obj))
            elif event["type"] in ("ADDED", "MODIFIED"):
                self._set(self.transform(obj))
            if rv:
                self.resource_version = str(rv)

    async def run(self) -> None:
        """List, then watch, forever."""
        attempt = 0  # temporary errors in a row
        refused = 0  # refusals (permanent errors) with no watch event in between
        gone_in_a_row = 0  # 410s with no watch event in between
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    attempt = 0
                    log.debug("informer.listed", informer=self.name, objects=len(self.cache))
                await self._watch()
                attempt = refused = 0
                gone_in_a_row = 0
                self.metrics.inc(
                    "devstack_agent_watch_restarts_total", resource=self.name, reason="ended"
                )
            except GoneError as e:
                if self._events:
                    gone_in_a_row = 0
                self.metrics.inc(
                    "devstack_agent_watch_restarts_total", resource=self.name, reason="gone"
                )
                need_list = True
                if gone_in_a_row == 0:
                    # The usual case (history compacted): relist at once.
                    log.info("informer.relist", informer=self.name, reason="gone", error=str(e))
                else:
                    # 410 again right after a fresh list: do not spin.
                    delay = self.backoff.delay(gone_in_a_row - 1, hint=e.delay)
                    log.warning(
                        "informer.relist",
                        informer=self.name,
                        reason="gone-again",
                        error=str(e),
                        delay=round(delay, 3),
                    )
                    await self.clock.sleep(delay)
                gone_in_a_row += 1
            except TemporaryError as e:
                delay = self.backoff.delay(attempt, hint=e.delay)
                attempt += 1
                log.warning(
                    "informer.retry", informer=self.name, error=str(e), delay=round(delay, 3)
                )
                self.metrics.inc(
                    "devstack_agent_watch_restarts_total", resource=self.name, reason=e.reason
                )
                await self.clock.sleep(delay)
            except (PermanentError, DevstackError) as e:
                # 403 (RBAC not granted yet, or a just-restarted server whose
                # RBAC caches are not filled) or 404 (CRDs not installed yet):
                # report it and look again, soon at first, then less often.
                # The server answered: an outage's backoff does not carry over.
                # A list that succeeds does not end the run of refusals (a
                # watch refused after every good list must not relist in a
                # tight loop); a watch that delivered something does.
                if self._events:
                    refused = 0
                    self._events = 0
                delay = self.backoff.delay(refused)
                refused += 1
                attempt = 0
                log.error(
                    "informer.failed",
                    informer=self.name,
                    error=str(e),
                    reason=e.reason,
                    delay=round(delay, 3),
                )
                self.metrics.inc(
                    "devstack_agent_watch_restarts_total", resource=self.name, reason=e.reason
                )
                need_list = True
                await self.clock.sleep(delay)


def slim(obj: RawObject, *, keep: tuple[str, ...] = ("spec",)) -> RawObject:
    """Only what the agent reads: metadata without managedFields, and ``keep``."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    out: dict[str, Any] = {"metadata": meta}
    for k in ("apiVersion", "kind", *keep):
        if k in obj:
            out[k] = obj[k]
    return out
