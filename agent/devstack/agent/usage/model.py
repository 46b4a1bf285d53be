"""What usage is made of (pure: no I/O, no clock): the spans an owner held,
read from Kubernetes objects, and the amounts they add up to.

A span is one thing held from ``since`` to ``until`` (seconds since the
epoch, UTC; ``until`` ``None`` while it lasts):

- :class:`PodSpan`: a Pod's CPU and memory *requests*, from
  ``status.startTime`` to its end: the last container's
  ``terminated.finishedAt`` once it completed or failed, or the instant its
  deletion was requested (``deletionTimestamp`` minus
  ``deletionGracePeriodSeconds``), whichever comes first. A Pod that never
  started holds nothing. A Pod that vanished without any of those (a forced
  delete) ends when the agent saw it go.
- :class:`VolumeSpan`: a PVC's ``spec.resources.requests.storage`` from its
  ``creationTimestamp`` to its ``deletionTimestamp`` (or when it was seen go).
- :class:`LoadBalancerSpan`: a Service of ``type: LoadBalancer``, the same way.
- :class:`UsedSpan`: a rate of *actual* use measured by metrics-server,
  held between two samples.
- :class:`~devstack.agent.usage.spans.SleepSpan`: a copy asleep (what it
  would have requested); the sleeper reports those.

:class:`SpanTracker` keeps the spans of the objects an informer reports,
including the ones that ended, until the ledger has integrated past them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from devstack.core.routing import OWNER_LABEL, TEAM_LABEL
from devstack.core.timestamps import parse_time

RawObject = dict[str, Any]
GIB = float(1 << 30)

#: The numbers a row carries, in the order of the contract's JSON.
AMOUNT_FIELDS: tuple[str, ...] = (
    "cpu_core_seconds",
    "memory_gib_seconds",
    "pod_seconds",
    "storage_gib_seconds",
    "load_balancer_seconds",
    "cpu_used_core_seconds",
    "memory_used_gib_seconds",
    "sleep_seconds",
    "saved_core_seconds",
    "saved_gib_seconds",
)


@dataclass(slots=True)
class Amounts:
    """Integrated usage of one owner and team (mutable accumulator)."""

    cpu_core_seconds: float = 0.0
    memory_gib_seconds: float = 0.0
    pod_seconds: float = 0.0
    storage_gib_seconds: float = 0.0
    load_balancer_seconds: float = 0.0
    cpu_used_core_seconds: float = 0.0
    memory_used_gib_seconds: float = 0.0
    sleep_seconds: float = 0.0
    saved_core_seconds: float = 0.0
    saved_gib_seconds: float = 0.0

    def add(self, other: Amounts) -> None:
        for f in AMOUNT_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def minus(self, other: Amounts) -> Amounts:
        out = Amounts()
        for f in AMOUNT_FIELDS:
            setattr(out, f, getattr(self, f) - getattr(other, f))
        return out

    def copy(self) -> Amounts:
        out = Amounts()
        out.add(self)
        return out

    def as_dict(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in AMOUNT_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Amounts:
        known = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in data.items() if k in known and v is not None})

    def is_zero(self) -> bool:
        return all(getattr(self, f) == 0.0 for f in AMOUNT_FIELDS)


@dataclass(frozen=True, slots=True)
class PodSpan:
    key: str  # the Pod's uid
    owner: str
    team: str
    since: float
    until: float | None
    cpu_cores: float
    memory_bytes: float


@dataclass(frozen=True, slots=True)
class VolumeSpan:
    key: str  # the PVC's uid
    owner: str
    team: str
    since: float
    until: float | None
    storage_bytes: float


@dataclass(frozen=True, slots=True)
class LoadBalancerSpan:
    key: str  # the Service's uid
    owner: str
    team: str
    since: float
    until: float | None


@dataclass(frozen=True, slots=True)
class UsedSpan:
    """Actual use at a constant rate from ``since`` to ``until`` (closed)."""

    key: str
    owner: str
    team: str
    since: float
    until: float
    cpu_cores: float
    memory_bytes: float


# --- quantities and timestamps ------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")
_SUFFIXES: dict[str, float] = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity (``"250m"``, ``"1.5"``, ``"128Mi"``, ``"1e3"``)
    as a float; ``ValueError`` for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


# --- objects -> spans --------------------------------------------------------------

TeamOf = Callable[[str], str]  # owner -> team (from the agent's configuration)


def owner_and_team(obj: RawObject, team_of: TeamOf) -> tuple[str, str] | None:
    """The object's owner, and its team: its ``devstack.dev/team`` label,
    else the configured mapping, else ``""``. ``None`` without an owner."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    owner = labels.get(OWNER_LABEL)
    if not owner:
        return None
    team = labels.get(TEAM_LABEL) or team_of(str(owner))
    return str(owner), str(team or "")


def _requests(containers: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    out = []
    for c in containers:
        req = ((c.get("resources") or {}).get("requests")) or {}
        out.append((_quantity_or_zero(req.get("cpu")), _quantity_or_zero(req.get("memory"))))
    return out


def _quantity_or_zero(value: Any) -> float:
    if value is None:
        return 0.0
    try:
        return parse_quantity(value)
    except ValueError:
        return 0.0


def pod_requests(spec: Mapping[str, Any]) -> tuple[float, float]:
    """CPU cores and memory bytes a Pod requests, as the scheduler counts
    them: the larger of its containers' sum and its largest init container
    (init containers that keep running, ``restartPolicy: Always``, add to
    the sum), plus the Pod's ``overhead``."""
    main = _requests(spec.get("containers") or ())
    cpu = sum(c for c, _ in main)
    mem = sum(m for _, m in main)
    init_cpu = init_mem = 0.0
    sidecar_cpu = sidecar_mem = 0.0
    for c, (ic, im) in zip(
        spec.get("initContainers") or (), _requests(spec.get("initContainers") or ()), strict=True
    ):
        if c.get("restartPolicy") == "Always":
            sidecar_cpu += ic
            sidecar_mem += im
        else:
            init_cpu = max(init_cpu, sidecar_cpu + ic)
            init_mem = max(init_mem, sidecar_mem + im)
    cpu = max(cpu + sidecar_cpu, init_cpu)
    mem = max(mem + sidecar_mem, init_mem)
    overhead = spec.get("overhead") or {}
    cpu += _quantity_or_zero(overhead.get("cpu"))
    mem += _quantity_or_zero(overhead.get("memory"))
    return cpu, mem


def deletion_requested(meta: Mapping[str, Any]) -> float | None:
    """When the deletion of an object was asked for: ``deletionTimestamp``
    minus ``deletionGracePeriodSeconds`` (the server sets it to the request
    time plus the grace period)."""
    deleted = parse_time(meta.get("deletionTimestamp"))
    if deleted is None:
        return None
    return deleted - float(meta.get("deletionGracePeriodSeconds") or 0)


def pod_end(obj: RawObject) -> float | None:
    """When a Pod stopped holding its requests, as far as the object tells."""
    status = obj.get("status") or {}
    ends: list[float] = []
    if status.get("phase") in ("Succeeded", "Failed"):
        finished = [
            parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            for cs in status.get("containerStatuses") or ()
        ]
        known = [f for f in finished if f is not None]
        if known:
            ends.append(max(known))
    requested = deletion_requested(obj.get("metadata") or {})
    if requested is not None:
        ends.append(requested)
    return min(ends) if ends else None


def pod_finished_without_time(obj: RawObject) -> bool:
    """Completed or failed, but no container says when (end: when seen)."""
    status = obj.get("status") or {}
    return status.get("phase") in ("Succeeded", "Failed") and pod_end(obj) is None


def pod_span(obj: RawObject, team_of: TeamOf) -> PodSpan | None:
    """The span of a Pod (``None``: no owner, or not started)."""
    who = owner_and_team(obj, team_of)
    since = parse_time((obj.get("status") or {}).get("startTime"))
    if who is None or since is None:
        return None
    cpu, mem = pod_requests(obj.get("spec") or {})
    until = pod_end(obj)
    meta = obj.get("metadata") or {}
    return PodSpan(
        key=str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
        owner=who[0],
        team=who[1],
        since=since,
        until=None if until is None else max(since, until),
        cpu_cores=cpu,
        memory_bytes=mem,
    )


def volume_span(obj: RawObject, team_of: TeamOf) -> VolumeSpan | None:
    who = owner_and_team(obj, team_of)
    meta = obj.get("metadata") or {}
    since = parse_time(meta.get("creationTimestamp"))
    if who is None or since is None:
        return None
    storage = ((obj.get("spec") or {}).get("resources") or {}).get("requests") or {}
    until = parse_time(meta.get("deletionTimestamp"))
    return VolumeSpan(
        key=str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
        owner=who[0],
        team=who[1],
        since=since,
        until=None if until is None else max(since, until),
        storage_bytes=_quantity_or_zero(storage.get("storage")),
    )


def load_balancer_span(obj: RawObject, team_of: TeamOf) -> LoadBalancerSpan | None:
    """A Service of ``type: LoadBalancer`` (``None`` for any other type)."""
    if (obj.get("spec") or {}).get("type") != "LoadBalancer":
        return None
    who = owner_and_team(obj, team_of)
    meta = obj.get("metadata") or {}
    since = parse_time(meta.get("creationTimestamp"))
    if who is None or since is None:
        return None
    until = parse_time(meta.get("deletionTimestamp"))
    return LoadBalancerSpan(
        key=str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
        owner=who[0],
        team=who[1],
        since=since,
        until=None if until is None else max(since, until),
    )


Span = PodSpan | VolumeSpan | LoadBalancerSpan


class SpanTracker:
    """The spans of one kind of object, kept from informer events.

    ``update(old, new, now)`` is the informer's ``on_change`` with the time
    it was seen: an object that appears or changes has its span recomputed
    from what it says; one that goes away is closed (at what it says, else at
    ``now``). Once a span ended, its end only ever moves earlier. A span
    stays once it ended, until :meth:`prune` drops those that ended before
    the ledger's watermark.
    """

    def __init__(self, to_span: Callable[[RawObject], Span | None]) -> None:
        self._to_span = to_span
        self._spans: dict[str, Span] = {}

    def update(self, old: RawObject | None, new: RawObject | None, now: float) -> None:
        if new is None:
            if old is None:
                return
            span = self._to_span(old)
            key = span.key if span is not None else _uid(old)
            current = self._spans.get(key)
            if current is not None and current.until is None:
                until = span.until if span is not None and span.until is not None else now
                self._spans[key] = _closed(current, max(current.since, until))
            return
        span = self._to_span(new)
        key = span.key if span is not None else _uid(new)
        current = self._spans.get(key)
        if span is None:
            # No longer counted (its type changed, it lost its owner label): ends now.
            if current is not None and current.until is None:
                self._spans[key] = _closed(current, max(current.since, now))
            return
        if isinstance(span, PodSpan) and span.until is None and pod_finished_without_time(new):
            span = _closed(span, max(span.since, now))
        if isinstance(span, LoadBalancerSpan) and current is None and old is not None:
            # It became a LoadBalancer after it was created: from now on.
            span = LoadBalancerSpan(span.key, span.owner, span.team, max(span.since, now), None)
        ended = None if current is None else current.until
        if ended is not None and (span.until is None or span.until >= ended):
            # Closed already: a later event neither reopens it nor moves its
            # end later (after a graceful delete, the kubelet's own delete,
            # with grace 0, moves deletionTimestamp to its instant).
            return
        if current is not None and isinstance(span, LoadBalancerSpan):
            span = LoadBalancerSpan(span.key, span.owner, span.team, current.since, span.until)
        self._spans[key] = span

    def spans(self) -> list[Span]:
        return list(self._spans.values())

    def open_spans(self) -> list[Span]:
        return [s for s in self._spans.values() if s.until is None]

    def get(self, key: str) -> Span | None:
        return self._spans.get(key)

    def prune(self, before: float) -> None:
        """Forget spans that ended at or before ``before`` (integrated already)."""
        for key in [k for k, s in self._spans.items() if s.until is not None and s.until <= before]:
            del self._spans[key]

    def __len__(self) -> int:
        return len(self._spans)


def _uid(obj: RawObject) -> str:
    meta = obj.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def _closed(span: Span, until: float) -> Span:
    if isinstance(span, PodSpan):
        return PodSpan(
            span.key, span.owner, span.team, span.since, until, span.cpu_cores, span.memory_bytes
        )
    if isinstance(span, VolumeSpan):
        return VolumeSpan(span.key, span.owner, span.team, span.since, until, span.storage_bytes)
    return LoadBalancerSpan(span.key, span.owner, span.team, span.since, until)
