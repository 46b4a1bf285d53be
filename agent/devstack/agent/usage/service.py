"""The usage service: informers in, day records out (does I/O through the
informers, :class:`~devstack.agent.usage.store.RecordStore` and the actual
usage source; the arithmetic is :mod:`~devstack.agent.usage.ledger`'s).

Every replica watches Pods, PVCs and Services labelled
``devstack.dev/owner`` in the agent's namespaces and keeps their spans
(:class:`~devstack.agent.usage.model.SpanTracker`). Every ``interval``
(through the :class:`~devstack.agent.informer.Clock`) the leader samples
actual use (when metrics.k8s.io is served) and flushes: it integrates
everything from the records' watermark to now into the day records and
writes them, conditionally; a 409 re-reads the records and recomputes. A
standby re-reads the records instead, to know the watermark and forget the
spans that ended before it. ``/v1/usage`` answers from the records, plus,
on the leader, what it has not flushed yet.

Prometheus counters (``devstack_usage_*``, ``devstack_sleep_*_total``) are
the leader's: each successful write adds what it added to the records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from devstack.agent.informer import Backoff, Clock, Informer, LoopClock
from devstack.agent.kube import PODS, PVCS, SERVICES, ConflictError, KubeApi, RawObject
from devstack.agent.metrics import Metrics
from devstack.agent.usage.actual import ActualUsageSource, MetricsServerSource, used_spans
from devstack.agent.usage.ledger import (
    DAY,
    ActualUsage,
    DayRecord,
    Prices,
    RowKey,
    advance,
    build_report,
    day_of,
    parse_by,
    parse_since,
    row_deltas,
    watermark,
)
from devstack.agent.usage.model import (
    Amounts,
    PodSpan,
    SpanTracker,
    UsedSpan,
    load_balancer_span,
    pod_span,
    volume_span,
)
from devstack.agent.usage.spans import SleepSpanSource
from devstack.agent.usage.store import RecordStore
from devstack.core.errors import DevstackError
from devstack.core.logging import get_logger
from devstack.core.routing import OWNER_LABEL, TEAM_LABEL

log = get_logger("agent.usage")


@dataclass(frozen=True, kw_only=True)
class UsageSettings:
    """How often to sample, how long to keep records, who is in which team
    (``teams``: owner -> team, for objects without ``devstack.dev/team``),
    and the unit prices (``None``: no cost is reported)."""

    enabled: bool = True
    interval: float = 60.0
    #: How late an object's event may reach the agent after the instant it
    #: records (timestamps are whole seconds; watch events take a moment):
    #: the records are written up to ``now - settle``, so a Pod seen a little
    #: after its ``startTime`` is still counted from it.
    settle: float = 10.0
    retention_days: int = 35
    teams: tuple[tuple[str, str], ...] = ()
    prices: Prices | None = None
    write_attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)

    def team_of(self) -> Callable[[str], str]:
        mapping = dict(self.teams)
        return lambda owner: mapping.get(owner, "")


def _slim_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    keep = (
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    )
    out = {k: meta[k] for k in keep if k in meta}
    labels = meta.get("labels") or {}
    out["labels"] = {k: v for k, v in labels.items() if k in (OWNER_LABEL, TEAM_LABEL)}
    return out


def _slim_container(c: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"resources": {"requests": (c.get("resources") or {}).get("requests")}}
    if "restartPolicy" in c:
        out["restartPolicy"] = c["restartPolicy"]
    return out


def slim_pod(obj: RawObject) -> RawObject:
    """Only what a Pod's span is computed from (the cache stays small)."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return {
        "metadata": _slim_meta(obj.get("metadata") or {}),
        "spec": {
            "containers": [_slim_container(c) for c in spec.get("containers") or ()],
            "initContainers": [_slim_container(c) for c in spec.get("initContainers") or ()],
            "overhead": spec.get("overhead") or {},
        },
        "status": {
            "phase": status.get("phase"),
            "startTime": status.get("startTime"),
            "containerStatuses": [
                {"state": {"terminated": ((cs.get("state") or {}).get("terminated") or {})}}
                for cs in status.get("containerStatuses") or ()
            ],
        },
    }


def slim_pvc(obj: RawObject) -> RawObject:
    requests = ((obj.get("spec") or {}).get("resources") or {}).get("requests") or {}
    return {
        "metadata": _slim_meta(obj.get("metadata") or {}),
        "spec": {"resources": {"requests": {"storage": requests.get("storage")}}},
    }


def slim_lb_service(obj: RawObject) -> RawObject:
    """A LoadBalancer Service's span inputs; of any other Service only its
    identity and type (every personal copy has a Service, and the
    controller caches those already: this cache stays a few strings each)."""
    meta = obj.get("metadata") or {}
    kind = (obj.get("spec") or {}).get("type")
    if kind != "LoadBalancer":
        keep = ("name", "namespace", "resourceVersion")
        return {"metadata": {k: meta[k] for k in keep if k in meta}, "spec": {"type": kind}}
    return {"metadata": _slim_meta(meta), "spec": {"type": kind}}


class UsageService:
    """One replica's usage tracking; the leader's also writes (see module doc)."""

    def __init__(
        self,
        api: KubeApi,
        settings: UsageSettings,
        *,
        namespaces: tuple[str, ...],
        record_namespace: str,
        lease_name: str,
        metrics: Metrics,
        is_leader: Callable[[], bool],
        actual: ActualUsageSource | None = None,
        sleep_source: SleepSpanSource | None = None,
        clock: Clock | None = None,
        now: Callable[[], float] = time.time,
        watch_timeout: int = 300,
    ) -> None:
        self.api = api
        self.settings = settings
        self.namespaces = namespaces
        self.store = RecordStore(api, record_namespace, lease_name)
        self.metrics = metrics
        self.is_leader = is_leader
        self.actual_source: ActualUsageSource = actual or MetricsServerSource(api, namespaces)
        self.sleep_source = sleep_source
        self.clock: Clock = clock or LoopClock()
        self.now = now
        team_of = settings.team_of()
        self.pods = SpanTracker(lambda o: pod_span(o, team_of))
        self.volumes = SpanTracker(lambda o: volume_span(o, team_of))
        self.balancers = SpanTracker(lambda o: load_balancer_span(o, team_of))
        self._pod_uids: dict[tuple[str, str], str] = {}
        self._used: list[UsedSpan] = []
        self._previous_sample: float | None = None
        self.records: dict[str, DayRecord] = {}
        self._records_fresh = False  # the leader's records are what it last read or wrote
        self._origin: float | None = None
        self.actual = ActualUsage(available=False, reason="not checked yet")
        self.flushes = 0
        self.counters: dict[RowKey, Amounts] = {}
        self.costs: dict[RowKey, float] = {}
        self.informers: list[Informer] = []
        for namespace in namespaces or (None,):
            for resource, handler, transform in (
                (PODS, self._on_pod, slim_pod),
                (PVCS, self._on_volume, slim_pvc),
                (SERVICES, self._on_service, slim_lb_service),
            ):
                self.informers.append(
                    Informer(
                        api,
                        resource,
                        namespace=namespace,
                        label_selector=OWNER_LABEL,
                        on_change=handler,
                        transform=transform,
                        backoff=settings.backoff,
                        watch_timeout=watch_timeout,
                        metrics=metrics,
                        clock=self.clock,
                        purpose="usage",
                    )
                )
        metrics.registry.register(UsageCollector(self))

    # --- informer events ---------------------------------------------------------

    def _on_pod(self, old: RawObject | None, new: RawObject | None) -> None:
        obj = new if new is not None else old
        meta = (obj or {}).get("metadata") or {}
        name = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if new is None:
            self._pod_uids.pop(name, None)
        else:
            self._pod_uids[name] = str(meta.get("uid") or "")
        self.pods.update(old, new, self.now())

    def _on_volume(self, old: RawObject | None, new: RawObject | None) -> None:
        self.volumes.update(old, new, self.now())

    def _on_service(self, old: RawObject | None, new: RawObject | None) -> None:
        self.balancers.update(old, new, self.now())

    # --- leadership ----------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def on_started_leading(self) -> None:
        self._records_fresh = False
        if self._origin is None:
            self._origin = self.now()

    def on_stopped_leading(self) -> None:
        self._records_fresh = False
        self._previous_sample = None
        self._used.clear()

    # --- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        tasks = [asyncio.create_task(i.run(), name=f"usage-{i.name}") for i in self.informers]
        try:
            await asyncio.gather(*(i.synced.wait() for i in self.informers))
            log.info("usage.synced", pods=len(self.pods), volumes=len(self.volumes))
            while True:
                try:
                    await self.tick()
                except DevstackError as e:
                    log.warning("usage.tick_failed", error=str(e), reason=e.reason)
                await self.clock.sleep(self.settings.interval)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def spans(self) -> list[Any]:
        out: list[Any] = [*self.pods.spans(), *self.volumes.spans(), *self.balancers.spans()]
        out.extend(self._used)
        if self.sleep_source is not None:
            out.extend(self.sleep_source.sleep_spans())
        return out

    async def tick(self) -> None:
        """One interval: the leader samples and flushes; a standby re-reads."""
        actual = await self.actual_source.availability()
        if actual != self.actual:
            log.info("usage.actual_usage", **actual.as_dict())
        self.actual = actual
        if not self.is_leader():
            self.records = await self.store.load()
            self._prune()
            return
        if not self._records_fresh:
            self.records = await self.store.load()
            self._records_fresh = True
        now = self.now()
        if actual.available:
            await self._sample(now)
        else:
            self._previous_sample = None
        await self.flush(now)
        await self._expire(now)

    async def close(self) -> None:
        """On the way out (the loop already stopped): a leader writes what
        it holds, so a successor that never saw the objects that ended
        meanwhile loses none of them. Best effort: a failure is logged."""
        if not (self.is_leader() and self.synced):
            return
        try:
            async with asyncio.timeout(10):
                if not self._records_fresh:
                    self.records = await self.store.load()
                    self._records_fresh = True
                await self.flush(self.now())
        except (DevstackError, TimeoutError) as e:
            log.warning("usage.final_flush_failed", error=str(e))

    async def _sample(self, now: float) -> None:
        """One sample of actual use; a failed one counts nothing (the next
        starts afresh) and does not hold back the flush."""
        try:
            samples = await self.actual_source.sample()
        except DevstackError as e:
            log.warning("usage.sample_failed", error=str(e), reason=e.reason)
            self._previous_sample = None
            return
        pods: dict[tuple[str, str], PodSpan] = {}
        for name, uid in self._pod_uids.items():
            span = self.pods.get(uid)
            if isinstance(span, PodSpan):
                pods[name] = span
        self._used.extend(used_spans(samples, pods, previous=self._previous_sample, now=now))
        self._previous_sample = now

    async def flush(self, now: float) -> None:
        """Integrate ``[watermark, now - settle)`` into the records and write them."""
        end = now - self.settings.settle
        origin = self._origin if self._origin is not None else end
        for attempt in range(self.settings.write_attempts):
            plan = advance(
                self.records,
                self.spans(),
                end,
                now=now,
                origin=origin,
                actual=self.actual.available,
            )
            try:
                for record in plan:
                    old = self.records.get(record.day)
                    written = await self.store.write(record)
                    self.records[record.day] = written
                    self._count(old, written)
                break
            except ConflictError as e:
                log.info("usage.conflict", error=str(e), attempt=attempt + 1)
                self.records = await self.store.load()
                await self.clock.sleep(self.settings.backoff.delay(attempt))
        else:
            self._records_fresh = False
            raise ConflictError("usage records kept changing while the leader wrote them")
        self.flushes += 1
        self._prune()
        log.debug("usage.flushed", until=watermark(self.records.values()), days=len(plan))

    def _count(self, old: DayRecord | None, new: DayRecord) -> None:
        for key, delta in row_deltas(old, new).items():
            self.counters.setdefault(key, Amounts()).add(delta)
            if self.settings.prices is not None:
                self.costs[key] = self.costs.get(key, 0.0) + self.settings.prices.cost(delta)

    def _prune(self) -> None:
        until = watermark(self.records.values())
        if until is None:
            return
        for tracker in (self.pods, self.volumes, self.balancers):
            tracker.prune(until)
        self._used = [u for u in self._used if u.until > until]

    async def _expire(self, now: float) -> None:
        """Delete the records older than the retention (never the newest:
        it holds the watermark)."""
        first_kept = day_of(now - (self.settings.retention_days - 1) * DAY)
        newest = max(self.records, default=None)
        for day in sorted(self.records):
            if day < first_kept and day != newest:
                await self.store.delete(day)
                del self.records[day]
                log.info("usage.record_expired", day=day)

    # --- the report --------------------------------------------------------------------

    async def report(self, *, since: str, by: str) -> dict[str, Any]:
        """``/v1/usage``; ``ValueError`` for a bad ``since`` or ``by``."""
        now = self.now()
        start = parse_since(since, now)
        group = parse_by(by)
        if self.is_leader() and self._records_fresh:
            # the records as a flush now would write them (not written)
            records = dict(self.records)
            origin = self._origin if self._origin is not None else now
            for record in advance(records, self.spans(), now, now=now, origin=origin):
                records[record.day] = record
            until = now
        else:
            records = await self.store.load()
            until = watermark(records.values()) or now
        return build_report(
            records.values(),
            pending={},
            since=start,
            until=until,
            by=group,
            interval=self.settings.interval,
            actual=self.actual,
            prices=self.settings.prices,
        )


_COUNTER_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("devstack_usage_cpu_request_core_seconds", "cpu_core_seconds", "CPU requested, core-seconds."),
    (
        "devstack_usage_memory_request_gib_seconds",
        "memory_gib_seconds",
        "Memory requested, GiB-seconds.",
    ),
    ("devstack_usage_pod_seconds", "pod_seconds", "Pod lifetimes, seconds."),
    ("devstack_usage_storage_gib_seconds", "storage_gib_seconds", "PVC storage, GiB-seconds."),
    (
        "devstack_usage_load_balancer_seconds",
        "load_balancer_seconds",
        "LoadBalancer Services, seconds.",
    ),
    ("devstack_sleep_seconds", "sleep_seconds", "Copies asleep, seconds."),
    (
        "devstack_sleep_saved_core_seconds",
        "saved_core_seconds",
        "CPU requests saved by sleep, core-seconds.",
    ),
    (
        "devstack_sleep_saved_gib_seconds",
        "saved_gib_seconds",
        "Memory requests saved by sleep, GiB-seconds.",
    ),
)
_ACTUAL_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("devstack_usage_cpu_used_core_seconds", "cpu_used_core_seconds", "CPU used, core-seconds."),
    (
        "devstack_usage_memory_used_gib_seconds",
        "memory_used_gib_seconds",
        "Memory used, GiB-seconds.",
    ),
)


class UsageCollector(Collector):
    """The usage counters, as the leader has written them (none on a standby)."""

    def __init__(self, service: UsageService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        s = self.service
        gauge = GaugeMetricFamily(
            "devstack_usage_actual_available",
            "1 if metrics.k8s.io (metrics-server) is served and actual use is sampled.",
        )
        gauge.add_metric([], 1.0 if s.actual.available else 0.0)
        yield gauge
        if not s.is_leader():
            return
        fields = _COUNTER_FIELDS + (_ACTUAL_FIELDS if s.actual.available else ())
        for name, attr, text in fields:
            family = CounterMetricFamily(name, text, labels=("owner", "team"))
            for (owner, team), amounts in sorted(s.counters.items()):
                family.add_metric([owner, team], getattr(amounts, attr))
            yield family
        if s.settings.prices is not None:
            cost = CounterMetricFamily(
                "devstack_usage_cost",
                "Cost of the requests and storage, at the configured prices.",
                labels=("owner", "team", "currency"),
            )
            for (owner, team), value in sorted(s.costs.items()):
                cost.add_metric([owner, team, s.settings.prices.currency], value)
            yield cost


def parse_teams(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``OWNER=TEAM`` items (``ValueError`` for one without ``=``)."""
    out: dict[str, str] = {}
    for item in items:
        owner, sep, team = item.partition("=")
        if not sep or not owner.strip() or not team.strip():
            raise ValueError(f"team {item!r}: use OWNER=TEAM (for example alice=payments)")
        out[owner.strip()] = team.strip()
    return tuple(sorted(out.items()))
