"""Putting idle personal copies to sleep, and seeing them wake (does I/O).

The leader, every ``check_interval``:

1. reads the sleep ConfigMap (``<lease-name>-sleep`` in the Lease's
   namespace: one data key ``<namespace>.<deployment>`` per sleeping copy,
   JSON with why and what it held; any replica reads it, so ``/v1/routes``
   and a new leader know what sleeps);
2. scrapes each ``--traefik-metrics-url`` (:func:`devstack.agent.sleep.service_requests`);
3. decides (:class:`devstack.agent.sleep.IdleTracker`, pure) from the copies'
   Deployments (its own list+watch cache, slimmed to what it reads) and the
   controller's Services: which copies sleep now (``idle``, or ``expired``:
   their TTL passed), which woke (replicas > 0 again, whoever scaled them:
   ``devstack up``'s upgrade or ``devstack connect``'s wake), which are gone;
4. acts: records the sleep, hands the sleeping copies to the controller
   (their routes fall back to the baseline, with the ``X-Devstack-Asleep``
   response header), then scales the Deployment to zero through the
   ``deployments/scale`` subresource (never anything else of it). A copy
   that woke loses its record and gets its routes back.

It also implements :class:`~devstack.agent.usage.spans.SleepSpanSource`
(what the usage ledger counts as hours saved) and exposes
``devstack_sleep_copies{owner,team}``.

The laptop side (``devstack connect``/``devstack up``) uses :func:`wake`,
:func:`heartbeat` and :func:`read_sleep_records` from here: one home for
what the sleep ConfigMap and the scale subresource look like.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
from prometheus_client import Gauge

from devstack.agent.desired import Copy, ingress_route_name
from devstack.agent.informer import Backoff, Clock, Informer, LoopClock
from devstack.agent.kube import (
    CONFIG_MAPS,
    ConflictError,
    KubeApi,
    NotFoundError,
    RawObject,
    Resource,
)
from devstack.agent.metrics import Metrics
from devstack.agent.sleep import (
    LAST_SYNC_ANNOTATION,
    ROLE_LABEL,
    SLEEP_ROLE,
    CopyFacts,
    CopyKey,
    Gone,
    IdleTracker,
    Sleep,
    SleepRecord,
    SleepSettings,
    Woke,
    format_time,
    read_records,
    record_key,
    service_requests,
    sleep_config_map_name,
    traefik_route_base,
)
from devstack.agent.usage.model import pod_requests
from devstack.agent.usage.spans import SleepSpan
from devstack.core.errors import DevstackError, PermanentError, TemporaryError
from devstack.core.logging import get_logger
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL, TEAM_LABEL
from devstack.core.timestamps import parse_time

log = get_logger("agent.sleeper")

DEPLOYMENTS = Resource(group="apps", version="v1", plural="deployments", kind="Deployment")
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "devstack-agent"
#: How long ended sleeps are kept for :meth:`Sleeper.sleep_spans`.
ENDED_KEPT = 86400.0
SCRAPE_TIMEOUT = 5.0


class SleepRoutes(Protocol):
    """What the sleeper needs of the controller."""

    def copies(self) -> list[Copy]: ...

    def set_asleep(self, asleep: dict[tuple[str, str], datetime.datetime]) -> None: ...


Scrape = Callable[[str], Any]  # async (url) -> text; raises on failure


def scale_path(namespace: str, name: str) -> str:
    return DEPLOYMENTS.path(namespace=namespace, name=name) + "/scale"


async def scale(api: KubeApi, namespace: str, name: str, replicas: int) -> RawObject:
    """Set a Deployment's replicas through its ``scale`` subresource."""
    return await api.request(
        "PATCH",
        scale_path(namespace, name),
        body={"spec": {"replicas": replicas}},
        content_type="application/merge-patch+json",
    )


def slim_deployment(obj: RawObject) -> RawObject:
    """What the sleeper reads of a Deployment: identity, labels, devstack's
    annotations, replicas, the pod template's requests, readiness."""
    meta = obj.get("metadata") or {}
    keep = ("name", "namespace", "uid", "labels", "creationTimestamp", "resourceVersion")
    out_meta: dict[str, Any] = {k: meta[k] for k in keep if k in meta}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("devstack.dev/")
    }
    if annotations:
        out_meta["annotations"] = annotations
    spec = obj.get("spec") or {}
    pod = ((spec.get("template") or {}).get("spec")) or {}

    def resources(containers: Iterable[Mapping[str, Any]]) -> list[RawObject]:
        return [
            {
                "resources": {"requests": (c.get("resources") or {}).get("requests") or {}},
                **({"restartPolicy": c["restartPolicy"]} if "restartPolicy" in c else {}),
            }
            for c in containers
        ]

    template: RawObject = {"containers": resources(pod.get("containers") or ())}
    if pod.get("initContainers"):
        template["initContainers"] = resources(pod["initContainers"])
    if pod.get("overhead"):
        template["overhead"] = pod["overhead"]
    status = obj.get("status") or {}
    return {
        "metadata": out_meta,
        "spec": {"replicas": spec.get("replicas", 1), "template": {"spec": template}},
        "status": {k: status[k] for k in ("replicas", "readyReplicas") if k in status},
    }


async def _http_get(url: str) -> str:
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as r:
        r.raise_for_status()
        return await r.text()


class Sleeper:
    """Sleeps idle copies and records it (see the module's docstring)."""

    def __init__(
        self,
        api: KubeApi,
        settings: SleepSettings,
        *,
        routes: SleepRoutes,
        lease_namespace: str,
        lease_name: str,
        namespaces: Sequence[str] = (),
        metrics: Metrics | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        team_of: Callable[[str], str] = lambda owner: "",
        now: Callable[[], float] = time.time,
        clock: Clock | None = None,
        scrape: Scrape | None = None,
        backoff: Backoff | None = None,
        watch_timeout: int = 300,
    ) -> None:
        self.api = api
        self.settings = settings
        self.routes = routes
        self.namespace = lease_namespace
        self.config_map = sleep_config_map_name(lease_name)
        self.metrics = metrics or Metrics()
        self.is_leader = is_leader
        self.team_of = team_of
        self.now = now
        self.clock: Clock = clock or LoopClock()
        self.scrape: Scrape = scrape or _http_get
        self.informers = [
            Informer(
                api,
                DEPLOYMENTS,
                namespace=ns,
                label_selector=f"{SERVICE_LABEL},{OWNER_LABEL}",
                on_change=lambda old, new: None,
                transform=slim_deployment,
                backoff=backoff or Backoff(),
                watch_timeout=watch_timeout,
                metrics=self.metrics,
                clock=self.clock,
                purpose="sleep",
            )
            for ns in (namespaces or (None,))
        ]
        self.tracker = IdleTracker(settings.idle_after, started_at=now())
        self.records: dict[CopyKey, SleepRecord] = {}
        self._ended: collections.deque[SleepSpan] = collections.deque()
        self._resource_version: str | None = None
        self.checks = 0
        self.gauge = Gauge(
            "devstack_sleep_copies",
            "Personal copies asleep now (the leader's view).",
            ("owner", "team"),
            registry=self.metrics.registry,
        )

    # -- the record ------------------------------------------------------------------

    async def load(self) -> dict[CopyKey, SleepRecord]:
        """The sleep ConfigMap's records (none when it does not exist yet)."""
        try:
            cm = await self.api.get(CONFIG_MAPS, namespace=self.namespace, name=self.config_map)
        except NotFoundError:
            self._resource_version = None
            return {}
        self._resource_version = str((cm.get("metadata") or {}).get("resourceVersion") or "")
        return read_records(cm.get("data") or {})

    async def _save(self, records: Mapping[CopyKey, SleepRecord]) -> None:
        """Write ``records`` (conditional on what was read: a conflict means
        someone else wrote it; the next check reads it again)."""
        obj: RawObject = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.config_map,
                "namespace": self.namespace,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, ROLE_LABEL: SLEEP_ROLE},
            },
            "data": {record_key(k): r.to_json() for k, r in sorted(records.items())},
        }
        if self._resource_version is None:
            written = await self.api.create(CONFIG_MAPS, obj)
        else:
            obj["metadata"]["resourceVersion"] = self._resource_version
            written = await self.api.replace(CONFIG_MAPS, obj)
        self._resource_version = str((written.get("metadata") or {}).get("resourceVersion") or "")
        self.records = dict(records)

    def _publish(self) -> None:
        """The controller's asleep set (idle sleeps: an expired copy has no
        routes at all) and the gauge."""
        self.routes.set_asleep(
            {
                (r.service, r.owner): datetime.datetime.fromtimestamp(r.since, datetime.UTC)
                for r in self.records.values()
                if r.reason == "idle"
            }
        )
        self.gauge.clear()
        if not self.is_leader():
            return
        counts = collections.Counter((r.owner, r.team) for r in self.records.values())
        for (owner, team), n in counts.items():
            self.gauge.labels(owner=owner, team=team).set(n)

    # -- usage (SleepSpanSource) -------------------------------------------------------

    def sleep_spans(self) -> list[SleepSpan]:
        """Every copy asleep now, and every sleep that ended in the last day."""
        now = self.now()
        while self._ended and (self._ended[0].until or now) < now - ENDED_KEPT:
            self._ended.popleft()
        return [
            *self._ended,
            *(
                SleepSpan(
                    key=f"{k[0]}/{k[1]}",
                    owner=r.owner,
                    team=r.team,
                    since=r.since,
                    until=None,
                    cpu_cores=r.cpu_cores,
                    memory_bytes=r.memory_bytes,
                )
                for k, r in sorted(self.records.items())
            ),
        ]

    def _ended_sleep(self, key: CopyKey, record: SleepRecord, until: float) -> None:
        self._ended.append(
            SleepSpan(
                key=f"{key[0]}/{key[1]}",
                owner=record.owner,
                team=record.team,
                since=record.since,
                until=until,
                cpu_cores=record.cpu_cores,
                memory_bytes=record.memory_bytes,
            )
        )

    # -- one check ---------------------------------------------------------------------

    def facts(self, now: float) -> list[CopyFacts]:
        """The copies' Deployments, with what the controller's Services say
        (expired; the Traefik service their routes send to)."""
        services = {(c.namespace, c.service, c.owner): c for c in self.routes.copies()}
        when = datetime.datetime.fromtimestamp(now, datetime.UTC)
        out = []
        for informer in self.informers:
            for obj in informer.cache.values():
                meta = obj["metadata"]
                labels = meta.get("labels") or {}
                service, owner = labels.get(SERVICE_LABEL), labels.get(OWNER_LABEL)
                if not service or not owner:
                    continue
                ns = str(meta.get("namespace") or "")
                copy = services.get((ns, service, owner))
                cpu, memory = pod_requests(obj["spec"]["template"]["spec"])
                out.append(
                    CopyFacts(
                        key=(ns, str(meta["name"])),
                        service=str(service),
                        owner=str(owner),
                        team=str(labels.get(TEAM_LABEL) or self.team_of(str(owner)) or ""),
                        replicas=int(obj["spec"].get("replicas") or 0),
                        created_at=parse_time(meta.get("creationTimestamp")),
                        last_sync=parse_time(
                            (meta.get("annotations") or {}).get(LAST_SYNC_ANNOTATION)
                        ),
                        traefik_routes=(
                            traefik_route_base(
                                copy.namespace, ingress_route_name(copy.service, copy.owner)
                            )
                            if copy is not None
                            else None
                        ),
                        expired=copy is not None and copy.expired(when),
                        pod_cpu_cores=cpu,
                        pod_memory_bytes=memory,
                    )
                )
        return out

    async def _scrape_all(self) -> None:
        for url in self.settings.traefik_metrics_urls:
            try:
                text = await self.scrape(url)
                totals: dict[str, float] | None = service_requests(str(text))
            except (aiohttp.ClientError, TimeoutError, OSError, DevstackError) as e:
                log.warning("sleep.scrape_failed", url=url, error=str(e) or type(e).__name__)
                totals = None
            self.tracker.scraped(url, totals, self.now())

    async def check(self) -> None:
        """One look: read the record; on the leader, decide and act."""
        self.checks += 1
        records = await self.load()
        self.records = records
        if not self.is_leader():
            self._publish()
            return
        await self._scrape_all()
        now = self.now()
        actions = self.tracker.decide(
            self.facts(now), records, now, sleep_idle=self.settings.enabled
        )
        for action in actions:
            try:
                await self._act(action, now)
            except ConflictError:
                log.info("sleep.record_conflict", key=record_key(action.key))
                break  # the next check reads the record again
            except (TemporaryError, PermanentError) as e:
                log.warning(
                    "sleep.action_failed",
                    action=type(action).__name__.lower(),
                    namespace=action.key[0],
                    name=action.key[1],
                    error=str(e),
                    reason=e.reason,
                )
        self._publish()

    async def _act(self, action: Sleep | Woke | Gone, now: float) -> None:
        ns, name = action.key
        records = dict(self.records)
        if isinstance(action, Sleep):
            records[action.key] = action.record
            await self._save(records)
            self._publish()  # routes fall back before the pods go
            written = await scale(self.api, ns, name, 0)
            self._observe_scaled(action.key, written)
            log.info(
                "sleep.asleep",
                namespace=ns,
                name=name,
                service=action.record.service,
                owner=action.record.owner,
                reason=action.record.reason,
                replicas=action.record.replicas,
                idle_since=format_time(action.idle_since) if action.idle_since else None,
            )
            return
        records.pop(action.key, None)
        await self._save(records)
        self._ended_sleep(action.key, action.record, now)
        log.info(
            "sleep.woke" if isinstance(action, Woke) else "sleep.gone",
            namespace=ns,
            name=name,
            service=action.record.service,
            owner=action.record.owner,
            asleep_since=format_time(action.record.since),
        )

    def _observe_scaled(self, key: CopyKey, written: RawObject) -> None:
        """Our own scale, in the cache before its watch event (so the next
        check does not take the old replicas for a wake)."""
        for informer in self.informers:
            cached = informer.cache.get(key)
            if cached is None:
                continue
            rv = (written.get("metadata") or {}).get("resourceVersion")
            meta = {**cached["metadata"], **({"resourceVersion": rv} if rv else {})}
            informer.observe(
                {**cached, "metadata": meta, "spec": {**cached["spec"], "replicas": 0}}
            )

    # -- running ---------------------------------------------------------------------

    async def run(self) -> None:
        tasks = [asyncio.create_task(i.run(), name=f"informer {i.name}") for i in self.informers]
        try:
            # What sleeps, before the controller's first pass if it can be
            # (so a restart does not give a sleeping copy its routes back).
            try:
                self.records = await self.load()
                self._publish()
            except (TemporaryError, PermanentError) as e:
                log.warning("sleep.load_failed", error=str(e), reason=e.reason)
            await asyncio.gather(*(i.synced.wait() for i in self.informers))
            while True:
                try:
                    await self.check()
                except (TemporaryError, PermanentError) as e:
                    log.warning("sleep.check_failed", error=str(e), reason=e.reason)
                await self.clock.sleep(self.settings.check_interval)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# --- the laptop side: devstack connect / devstack up -----------------------------------


def copy_selector(service_label: str, owner: str) -> str:
    return f"{SERVICE_LABEL}={service_label},{OWNER_LABEL}={owner}"


async def copy_deployments(
    api: KubeApi, namespace: str, service_label: str, owner: str
) -> list[RawObject]:
    items, _ = await api.list(
        DEPLOYMENTS, namespace=namespace, label_selector=copy_selector(service_label, owner)
    )
    return items


async def read_sleep_records(api: KubeApi) -> dict[CopyKey, SleepRecord] | None:
    """Every agent's sleep records, found by their ConfigMap's label in any
    namespace; ``None`` when they cannot be read (not allowed, say)."""
    try:
        items, _ = await api.list(CONFIG_MAPS, label_selector=f"{ROLE_LABEL}={SLEEP_ROLE}")
    except DevstackError:
        return None
    out: dict[CopyKey, SleepRecord] = {}
    for cm in items:
        out.update(read_records(cm.get("data") or {}))
    return out


async def heartbeat(
    api: KubeApi, namespace: str, service_label: str, owner: str, *, now: float | None = None
) -> int:
    """Mark a sync session on the copy's Deployments (the idle clock starts
    again); how many were marked."""
    stamp = format_time(time.time() if now is None else now)
    patch = {"metadata": {"annotations": {LAST_SYNC_ANNOTATION: stamp}}}
    deployments = await copy_deployments(api, namespace, service_label, owner)
    for d in deployments:
        await api.patch(DEPLOYMENTS, namespace=namespace, name=d["metadata"]["name"], patch=patch)
    return len(deployments)


def _ready(d: RawObject, wanted: int) -> bool:
    status = d.get("status") or {}
    meta = d.get("metadata") or {}
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("readyReplicas") or 0) >= wanted
        and int(status.get("updatedReplicas") or 0) >= wanted
    )


class WakeError(PermanentError):
    reason = "not-ready"


async def wake(
    api: KubeApi,
    namespace: str,
    service_label: str,
    owner: str,
    *,
    release: str,
    replicas: Mapping[str, int] | None = None,
    progress: Callable[[str], None] = lambda line: None,
    timeout: float = 300.0,
    poll: float = 0.5,
) -> list[str]:
    """Wake ``owner``'s copy: each of its Deployments at zero replicas goes
    back to ``replicas[name]`` (``devstack up``: what the chart renders; 0
    leaves it), else to what the sleep record says it held, else to 1; then
    wait until they are ready, with a progress line per change. The
    Deployments woken (none: it was awake)."""
    deployments = await copy_deployments(api, namespace, service_label, owner)
    asleep = [d for d in deployments if int((d.get("spec") or {}).get("replicas") or 0) == 0]
    if not asleep:
        return []
    records = await read_sleep_records(api) or {}
    wanted: dict[str, int] = {}
    for d in asleep:
        name = d["metadata"]["name"]
        record = records.get((namespace, name))
        if replicas is not None and name in replicas:
            wanted[name] = replicas[name]
        else:
            wanted[name] = record.replicas if record else 1
        if wanted[name] <= 0:  # meant to be at zero (the chart says so)
            del wanted[name]
            continue
        since = f" (asleep since {format_time(record.since)})" if record else ""
        progress(f"{release}: waking{since}: scaling {name} to {wanted[name]}")
        await scale(api, namespace, name, wanted[name])
    if not wanted:
        return []
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        current = {
            d["metadata"]["name"]: d
            for d in await copy_deployments(api, namespace, service_label, owner)
        }
        ready = sum(
            int(((current.get(n) or {}).get("status") or {}).get("readyReplicas") or 0)
            for n in wanted
        )
        line = f"{release}: waking: {ready}/{sum(wanted.values())} ready"
        if line != last:
            progress(line)
            last = line
        if all(n in current and _ready(current[n], w) for n, w in wanted.items()):
            progress(f"{release}: awake")
            return sorted(wanted)
        if time.monotonic() >= deadline:
            raise WakeError(
                f"{release}: not ready {timeout:.0f}s after waking it "
                f"(see `kubectl -n {namespace} get pods -l {copy_selector(service_label, owner)}`)"
            )
        await asyncio.sleep(poll)
