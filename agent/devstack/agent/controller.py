"""The controller: caches in, writes out, one serial worker per route key
(does I/O through the informers and the writer).

Level-triggered: every event only says "look at this key again". A key is
``(service, owner)`` (``owner`` is ``None`` for the baseline); its worker
reads the cached Services and Traefik objects for that key, computes the
desired state (:mod:`devstack.agent.desired`, pure), plans the difference
(:mod:`devstack.agent.plan`, pure) and applies it. Workers for different
keys run in parallel (bounded); the same key is never worked on twice at
once, and events that arrive meanwhile coalesce into one more pass.

The key ignores the namespace on purpose: a service's host is
``<service>.<domain>``, so its baseline is cluster-wide by service name, and
a second Service that claims the same baseline (or the same owner's copy),
in any namespace, is reported as ``duplicate-copy`` by the same pass.

Nothing is written before every cache has synced, nor by a replica that
does not hold the Lease. Temporary errors (409, 410, 429, 5xx, no answer)
retry with backoff, waiting at least what ``Retry-After`` asks; permanent
ones are reported and retried much later. A permanent error while writing
is a write-time problem, reported like a spec-time one (log,
``/v1/routes.problems``, ``devstack_agent_problems``) and looked at again
after ``permanent_retry``. When the object itself cannot be written (its
name is held by an object devstack does not manage, or the server finds it
invalid) the key is not routed at all: the agent removes the objects it
manages for that key, so no owner is left with half of their routes. A
refusal (403) removes nothing: it is the agent's permissions that are
wrong (or not in force yet), not the routes; it is retried with the
growing backoff (from 0.1 s up to 30 s), not after ``permanent_retry``. Expired personal copies lose
their routes when their TTL passes (a timer re-enqueues the key) and are
reported each time they expire (again after their expiry was extended).
Waits go through a :class:`~devstack.agent.informer.Clock`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from devstack.agent.desired import (
    INGRESS_ROUTE,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MIDDLEWARE,
    AgentSettings,
    Copy,
    Desired,
    ObjectRef,
    Problem,
    copy_from_service,
    desired_state,
)
from devstack.agent.informer import (
    Backoff,
    Clock,
    Informer,
    LoopClock,
    ObjectKey,
    Timer,
    key_of,
    slim,
)
from devstack.agent.kube import (
    SERVICES,
    KubeApi,
    KubeRequestError,
    RawObject,
    traefik_resources,
)
from devstack.agent.metrics import Metrics
from devstack.agent.plan import Step, Verb, interned, own, plan, spec_drifted, summary
from devstack.agent.writer import KubeWriter, NameTakenError, Writer, kinds
from devstack.core.errors import AuthError, PermanentError, TemporaryError
from devstack.core.logging import get_logger
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL

log = get_logger("agent.controller")

RouteKey = tuple[str, str | None]
_M = TypeVar("_M")


@dataclass(frozen=True, kw_only=True)
class ControllerSettings:
    """Scope and timings. Empty ``namespaces``: all namespaces."""

    namespaces: tuple[str, ...] = ()
    backoff: Backoff = field(default_factory=Backoff)
    permanent_retry: float = 60.0
    resync_period: float = 300.0
    watch_timeout: int = 300
    concurrency: int = 32


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def route_key(obj: RawObject) -> RouteKey:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return (str(labels.get(SERVICE_LABEL, "")), labels.get(OWNER_LABEL))


def slim_service(obj: RawObject) -> RawObject:
    """A Service as the agent needs it: identity, labels, our annotations,
    ports (name and number), and whether it is being deleted. Label and
    annotation keys, label values and the namespace are interned, and
    Services with the same ports share one (read-only) ``spec``: the same
    few recur on every Service. Its strings are its own (see
    :func:`~devstack.agent.plan.own`)."""
    meta = obj.get("metadata") or {}
    keep = (
        "name",
        "namespace",
        "uid",
        "labels",
        "creationTimestamp",
        "resourceVersion",
        "deletionTimestamp",
    )
    out_meta: dict[str, Any] = {k: own(meta[k]) for k in keep if k in meta}
    if "namespace" in out_meta:
        out_meta["namespace"] = interned(out_meta["namespace"])
    if "labels" in out_meta:
        labels = out_meta["labels"] or {}
        out_meta["labels"] = {interned(k): interned(v) for k, v in labels.items()}
    annotations = {
        interned(k): own(v)
        for k, v in (meta.get("annotations") or {}).items()
        if k.startswith("devstack.dev/")
    }
    if annotations:
        out_meta["annotations"] = annotations
    ports = tuple(
        (own(p.get("name")), p.get("port"))
        for p in (obj.get("spec") or {}).get("ports") or []
        if isinstance(p, dict)
    )
    spec = _SPECS.get(ports)
    if spec is None:
        spec = {
            "ports": [
                {k: v for k, v in (("name", name), ("port", port)) if v is not None}
                for name, port in ports
            ]
        }
        if len(_SPECS) < _MAX_SPECS:
            _SPECS[ports] = spec
    return {"metadata": out_meta, "spec": spec}


#: The Service specs (ports) :func:`slim_service` shares, by their ports.
_SPECS: dict[tuple[tuple[Any, Any], ...], RawObject] = {}
_MAX_SPECS = 4096


class Controller:
    """Keeps Traefik objects equal to the desired state of the Services."""

    def __init__(
        self,
        api: KubeApi,
        agent: AgentSettings,
        settings: ControllerSettings = ControllerSettings(),
        *,
        writer: Writer | None = None,
        metrics: Metrics | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        now: Callable[[], datetime.datetime] = utcnow,
        clock: Clock | None = None,
    ) -> None:
        self.api = api
        self.clock: Clock = clock or LoopClock()
        self.agent = agent
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.is_leader = is_leader
        self.now = now
        ir, mw = traefik_resources(agent.crd_group)
        self.writer: Writer = writer or KubeWriter(api, kinds(ir, mw))
        self._resources = kinds(ir, mw)
        scopes: Iterable[str | None] = settings.namespaces or (None,)
        self.service_informers: list[Informer] = []
        self.object_informers: dict[tuple[str, str | None], Informer] = {}
        for ns in scopes:
            self.service_informers.append(
                Informer(
                    api,
                    SERVICES,
                    namespace=ns,
                    label_selector=SERVICE_LABEL,
                    on_change=self._on_service,
                    transform=slim_service,
                    backoff=settings.backoff,
                    watch_timeout=settings.watch_timeout,
                    metrics=self.metrics,
                    clock=self.clock,
                )
            )
            for kind, resource in ((INGRESS_ROUTE, ir), (MIDDLEWARE, mw)):
                self.object_informers[(kind, ns)] = Informer(
                    api,
                    resource,
                    namespace=ns,
                    label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}",
                    on_change=self._object_handler(kind),
                    transform=summary,
                    backoff=settings.backoff,
                    watch_timeout=settings.watch_timeout,
                    metrics=self.metrics,
                    clock=self.clock,
                )
        self._services: dict[ObjectKey, RawObject] = {}
        # (Tuples, not sets: most keys have one or two members, and a set
        # costs four times a tuple's memory, at tens of thousands of keys.)
        self._services_by_key: dict[RouteKey, tuple[ObjectKey, ...]] = {}
        self._objects: dict[ObjectRef, RawObject] = {}
        self._objects_by_key: dict[RouteKey, tuple[ObjectRef, ...]] = {}
        self._dirty: set[RouteKey] = set()
        self._queue: asyncio.Queue[RouteKey] = asyncio.Queue()
        self._queued: set[RouteKey] = set()
        self._active: set[RouteKey] = set()
        self._attempts: dict[RouteKey, int] = {}
        self._quiet = False
        self._timers: dict[RouteKey, Timer] = {}
        self._problems: dict[RouteKey, tuple[Problem, ...]] = {}
        # Per key: the write that failed for good at its last pass.
        self._write_problems: dict[RouteKey, Problem] = {}
        # Per key: the copies (uid, expiry) that were expired at its last pass.
        self._expired: dict[RouteKey, set[tuple[str, str]]] = {}
        self._synced = False
        self._tasks: list[asyncio.Task[None]] = []
        self.idle = asyncio.Event()
        self.reconciles = 0
        # (service, owner) -> since when that copy sleeps (the sleeper sets it).
        self.asleep: dict[tuple[str, str], datetime.datetime] = {}

    # -- indexes ---------------------------------------------------------------------

    def _on_service(self, old: RawObject | None, new: RawObject | None) -> None:
        if new is not None and (new.get("metadata") or {}).get("deletionTimestamp"):
            # Being deleted (a finalizer or an orphaning delete holds it):
            # gone for routing, so its routes go now and nothing is written
            # back onto it (such as the owner references an orphaning
            # delete strips from its routes).
            new = None
        for obj, present in ((old, False), (new, True)):
            if obj is None:
                continue
            key, okey = route_key(obj), key_of(obj)
            if present:
                self._services[okey] = obj
                _index_add(self._services_by_key, key, okey)
            else:
                _index_discard(self._services_by_key, key, okey)
                if new is None:
                    self._services.pop(okey, None)
            self.enqueue(key)
        self.metrics.set("devstack_agent_services", len(self._services))

    def _object_handler(self, kind: str) -> Callable[[RawObject | None, RawObject | None], None]:
        def handle(old: RawObject | None, new: RawObject | None) -> None:
            for obj, present in ((old, False), (new, True)):
                if obj is None:
                    continue
                ns, name = key_of(obj)
                ref = ObjectRef(kind=kind, namespace=ns, name=name)
                key = route_key(obj)
                if present:
                    self._objects[ref] = obj
                    _index_add(self._objects_by_key, key, ref)
                else:
                    _index_discard(self._objects_by_key, key, ref)
                    if new is None:
                        self._objects.pop(ref, None)
                self.enqueue(key)
            self.metrics.set("devstack_agent_managed_objects", len(self._objects))

        return handle

    # -- scheduling ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._synced

    def healthy(self) -> bool:
        return not any(t.done() for t in self._tasks)

    def _can_write(self) -> bool:
        return self._synced and self.is_leader()

    def enqueue(self, key: RouteKey) -> None:
        """Mark ``key`` for another look. Keys being worked on are not queued
        twice: their worker queues them again when it is done."""
        if self._quiet:
            return
        self._dirty.add(key)
        self.idle.clear()
        if self._can_write() and key not in self._active and key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def resync_all(self) -> None:
        """Look at every known key again (after sync, on leadership, periodically)."""
        for key in sorted(
            {*self._services_by_key, *self._objects_by_key, *self._dirty},
            key=lambda k: (k[0], k[1] or ""),
        ):
            self.enqueue(key)
        self._check_idle()

    @property
    def busy(self) -> bool:
        return bool(self._queued or self._active)

    def _check_idle(self) -> None:
        if not self._queued and not self._active:
            self.idle.set()

    async def _worker(self) -> None:
        """One of ``concurrency`` workers: takes a key, works on it alone."""
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            if not self._can_write() or key not in self._dirty:
                self._check_idle()
                continue
            self._active.add(key)
            self._dirty.discard(key)
            try:
                await self._work(key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self.enqueue(key)
                self._check_idle()

    async def _work(self, key: RouteKey) -> None:
        try:
            await self.reconcile(key)
            self._attempts.pop(key, None)
            self.metrics.inc("devstack_agent_reconciles_total", result="ok")
        except TemporaryError as e:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            delay = self.settings.backoff.delay(attempt, hint=e.delay)
            self.metrics.inc("devstack_agent_reconciles_total", result="retry")
            log.warning(
                "agent.reconcile_retry",
                service=key[0],
                owner=key[1],
                error=str(e),
                reason=e.reason,
                delay=round(delay, 3),
            )
            self._schedule(key, delay)
        except PermanentError as e:
            self.metrics.inc("devstack_agent_reconciles_total", result="error")
            if isinstance(e, AuthError):
                # A refusal may be RBAC not granted yet, or a just-restarted
                # server whose authorizer caches are not filled: try again
                # soon, then less and less often (still reported each time).
                attempt = self._attempts.get(key, 0)
                self._attempts[key] = attempt + 1
                delay = self.settings.backoff.delay(attempt)
            else:
                delay = self.settings.permanent_retry
            log.error(
                "agent.reconcile_failed",
                service=key[0],
                owner=key[1],
                error=str(e),
                reason=e.reason,
                delay=round(delay, 3),
            )
            self._schedule(key, delay)
        except Exception as e:  # a bug must not kill the worker: report it, retry later
            self.metrics.inc("devstack_agent_reconciles_total", result="crash")
            log.exception("agent.reconcile_crashed", service=key[0], owner=key[1], error=repr(e))
            self._schedule(key, self.settings.permanent_retry)

    def _schedule(self, key: RouteKey, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = self.clock.call_later(max(0.0, delay), lambda: self._fire(key))

    def _fire(self, key: RouteKey) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    # -- one pass ------------------------------------------------------------------------

    def desired_for(self, key: RouteKey) -> Desired:
        services = [self._services[k] for k in sorted(self._services_by_key.get(key, ()))]
        return desired_state(services, self.agent, self.now(), self.asleep)

    async def reconcile(self, key: RouteKey) -> None:
        """Make the Traefik objects of ``key`` match its desired state."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.reconciles += 1
        desired = self.desired_for(key)
        actual = {ref: self._objects[ref] for ref in sorted(self._objects_by_key.get(key, ()))}
        for ref in spec_drifted(desired.objects, actual):
            # The cache holds digests (plan.summary): read what is there.
            found = await self.api.get_or_none(
                self._resources[ref.kind], namespace=ref.namespace, name=ref.name
            )
            if found is None:
                del actual[ref]
            else:
                actual[ref] = slim(found)
        self._report_expired(key, desired)
        self._report_problems(key, desired.problems)
        for step in plan(desired.objects, actual):
            if not self._can_write():
                return
            try:
                await self._write(key, step)
            except PermanentError as e:
                self._write_failed(key, step, e)
                if isinstance(e, NameTakenError | KubeRequestError):
                    # the object itself cannot be written: not routed at all
                    await self._unroute(key)
                raise
        if self._write_problems.pop(key, None) is not None:
            self._count_problems()
        if desired.next_expiry is not None:
            delay = (desired.next_expiry - self.now()).total_seconds()
            self._schedule(key, delay + 0.01)
        self.metrics.observe("devstack_agent_reconcile_seconds", loop.time() - started)

    async def _write(self, key: RouteKey, step: Step) -> None:
        """Apply one step and keep the caches in step with it."""
        written = await self.writer.apply(step)
        self.metrics.inc("devstack_agent_writes_total", verb=step.verb.value, kind=step.ref.kind)
        log.info(
            "agent.write",
            verb=step.verb.value,
            kind=step.ref.kind,
            namespace=step.ref.namespace,
            name=step.ref.name,
            service=key[0],
            owner=key[1],
        )
        informer = self._informer_for(step.ref)
        if informer is not None:
            # Our own write: update the cache without queueing the key
            # again (this pass already made it right).
            self._quiet = True
            try:
                if step.verb is Verb.DELETE:
                    informer.forget(step.ref.namespace, step.ref.name)
                elif written is not None:
                    informer.observe(written)
            finally:
                self._quiet = False

    def _write_failed(self, key: RouteKey, step: Step, error: PermanentError) -> None:
        problem = Problem(
            reason=error.reason,
            namespace=step.ref.namespace,
            name=step.ref.name,
            message=f"cannot {step.verb.value} {step.ref.kind} {step.ref.namespace}/"
            f"{step.ref.name}: {error}",
            service=key[0],
        )
        if self._write_problems.get(key) != problem:
            _log_problem(problem, owner=key[1])
        self._write_problems[key] = problem
        self._count_problems()

    async def _unroute(self, key: RouteKey) -> None:
        """Remove every object the agent manages for ``key`` (those it wrote
        before this pass and in it): a key is routed whole or not at all.
        A removal that fails is logged; the next pass tries again."""
        actual = {ref: self._objects[ref] for ref in sorted(self._objects_by_key.get(key, ()))}
        for step in plan({}, actual):
            if not self._can_write():
                return
            try:
                await self._write(key, step)
            except (PermanentError, TemporaryError) as e:
                log.warning(
                    "agent.unroute_failed",
                    kind=step.ref.kind,
                    namespace=step.ref.namespace,
                    name=step.ref.name,
                    service=key[0],
                    owner=key[1],
                    error=str(e),
                    reason=e.reason,
                )

    def _report_expired(self, key: RouteKey, desired: Desired) -> None:
        """Log each copy of ``key`` that is expired now and was not at the
        last pass (so a copy whose expiry was extended and that then
        expires again is reported again); keep the gauge at the number of
        copies expired right now."""
        before = self._expired.get(key, set())
        now: set[tuple[str, str]] = set()
        for copy in desired.expired:
            ident = (copy.uid, copy.expires_at.isoformat() if copy.expires_at else "")
            now.add(ident)
            if ident in before:
                continue
            self.metrics.inc("devstack_agent_copy_expirations_total")
            log.info(
                "agent.copy_expired",
                service=copy.service,
                owner=copy.owner,
                namespace=copy.namespace,
                name=copy.name,
                expired_at=copy.expires_at.isoformat() if copy.expires_at else None,
            )
        if now:
            self._expired[key] = now
        else:
            self._expired.pop(key, None)
        self.metrics.set(
            "devstack_agent_expired_copies", float(sum(len(v) for v in self._expired.values()))
        )

    def _report_problems(self, key: RouteKey, problems: tuple[Problem, ...]) -> None:
        before = set(self._problems.get(key, ()))
        for p in problems:
            if p not in before:
                _log_problem(p, owner=key[1])
        if problems:
            self._problems[key] = problems
        else:
            self._problems.pop(key, None)
        self._count_problems()

    def _count_problems(self) -> None:
        self.metrics.set(
            "devstack_agent_problems",
            float(sum(len(v) for v in self._problems.values()) + len(self._write_problems)),
        )

    def _informer_for(self, ref: ObjectRef) -> Informer | None:
        return self.object_informers.get((ref.kind, ref.namespace)) or self.object_informers.get(
            (ref.kind, None)
        )

    # -- sleep (devstack.agent.sleeper) --------------------------------------------------

    def set_asleep(self, asleep: dict[tuple[str, str], datetime.datetime]) -> None:
        """Which copies sleep now: each that changed is looked at again, with
        its service's baseline (which carries a sleeping copy's routes)."""
        changed = {k for k in {*asleep, *self.asleep} if asleep.get(k) != self.asleep.get(k)}
        self.asleep = dict(asleep)
        for service, owner in sorted(changed):
            self.enqueue((service, owner))
            self.enqueue((service, None))

    def copies(self) -> list[Copy]:
        """Every personal copy's Service as routing reads it."""
        out = []
        for raw in self._services.values():
            parsed = copy_from_service(raw)
            if isinstance(parsed, Copy) and parsed.owner is not None:
                out.append(parsed)
        return out

    # -- the view ---------------------------------------------------------------------------

    def routes(self) -> dict[str, Any]:
        """What ``/v1/routes`` shows: every service, owner, host and preview URL."""
        desired = desired_state(list(self._services.values()), self.agent, self.now(), self.asleep)
        blocked = set(self._write_problems)
        return {
            "ready": self.ready,
            "leader": self.is_leader(),
            "domain": self.agent.domain,
            "preview_domain": self.agent.preview_domain,
            "services": [_unblocked(r.as_json(), blocked) for r in desired.routes],
            "problems": [
                {
                    "reason": p.reason,
                    "service": p.service,
                    "namespace": p.namespace,
                    "name": p.name,
                    "message": p.message,
                }
                for p in (*desired.problems, *self._write_problems.values())
            ],
        }

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start the informers, wait for them to sync, then reconcile forever."""
        informers = [*self.service_informers, *self.object_informers.values()]
        self._tasks = [asyncio.create_task(i.run(), name=f"informer {i.name}") for i in informers]
        workers = [
            asyncio.create_task(self._worker(), name=f"worker {n}")
            for n in range(self.settings.concurrency)
        ]
        try:
            await asyncio.gather(*(i.synced.wait() for i in informers))
            self._synced = True
            self.metrics.set("devstack_agent_ready", 1)
            log.info("agent.synced", services=len(self._services), objects=len(self._objects))
            while True:
                self.resync_all()
                await asyncio.sleep(self.settings.resync_period)
        finally:
            for task in [*self._tasks, *workers]:
                task.cancel()
            for timer in self._timers.values():
                timer.cancel()
            await asyncio.gather(*self._tasks, *workers, return_exceptions=True)

    def on_started_leading(self) -> None:
        self.metrics.set("devstack_agent_is_leader", 1)
        if self._synced:
            self.resync_all()

    def on_stopped_leading(self) -> None:
        self.metrics.set("devstack_agent_is_leader", 0)


def _index_add(index: dict[RouteKey, tuple[_M, ...]], key: RouteKey, member: _M) -> None:
    members: tuple[_M, ...] = index.get(key, ())
    if member not in members:
        index[key] = (*members, member)


def _index_discard(index: dict[RouteKey, tuple[_M, ...]], key: RouteKey, member: _M) -> None:
    members: tuple[_M, ...] = index.get(key, ())
    if member in members:
        rest = tuple(m for m in members if m != member)
        if rest:
            index[key] = rest
        else:
            del index[key]


def _unblocked(service: RawObject, blocked: set[RouteKey]) -> RawObject:
    """A service's entry in ``/v1/routes`` without what is not routed
    because a write failed: the baseline, or an owner's copy."""
    name = service["service"]
    if (name, None) in blocked:
        service = {**service, "baseline": None, "preview_url": None}
    owners = [o for o in service["owners"] if (name, o["owner"]) not in blocked]
    return {**service, "owners": owners}


def _log_problem(problem: Problem, *, owner: str | None) -> None:
    log.warning(
        "agent.cannot_route",
        reason=problem.reason,
        namespace=problem.namespace,
        name=problem.name,
        service=problem.service,
        owner=owner,
        message=problem.message,
    )
