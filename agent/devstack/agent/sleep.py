"""When a personal copy is idle, and what sleeping it means (pure; no I/O).

A copy (a Deployment with ``devstack.dev/service`` and ``devstack.dev/owner``)
is *idle* when, for ``idle_after`` seconds, nothing happened to it. What
counts as something:

- a sync session: ``devstack connect`` writes the Deployment annotation
  ``devstack.dev/last-sync`` (RFC 3339) when a session starts and every 60 s;
- a request routed to it: the counter ``traefik_service_requests_total`` of
  a Traefik service of the copy's IngressRoute grew between two scrapes of
  Traefik's Prometheus metrics (Traefik needs
  ``metrics.prometheus.addServicesLabels: true``). Traefik v3 names the
  service of each IngressRoute route ``<namespace>-<ingressroute>-<hash>``
  (normalized: every run of characters other than letters and digits
  becomes one ``-``; the hash is 20 hex digits of the route's rule) with
  ``@kubernetescrd`` (seen with the real binary in
  ``tests/cluster/test_sleep.py``), so ``devstack-web--alice`` in ``dev``
  has ``dev-devstack-web-alice-<hash>@kubernetescrd`` for each of its three
  routes;
- the copy's creation, its last wake, and this agent's start (what happened
  before a restart is not known, so a restart never puts a copy to sleep);
- a scrape that failed: requests may have been routed that the agent did
  not see, so it counts as activity for every copy.

Traefik's metrics, not its access log: in a cluster the agent cannot read
Traefik's log files (another pod's), while ``/metrics`` is an HTTP endpoint
every Traefik replica serves. See docs/sleep.md.

:class:`IdleTracker` holds what the agent learnt (request counters, wake
times) and :meth:`IdleTracker.decide` turns the copies as they are now into
:class:`Action`\\ s for the sleeper to carry out. Times are epoch seconds.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from devstack.core import timestamps
from devstack.core.errors import ConfigError
from devstack.core.timestamps import parse_time

#: The Deployment annotation ``devstack connect`` refreshes (RFC 3339 UTC).
LAST_SYNC_ANNOTATION = "devstack.dev/last-sync"
#: The response header a request routed to the baseline instead of a
#: sleeping copy carries.
ASLEEP_HEADER = "X-Devstack-Asleep"
#: The label of the sleep ConfigMap (``<lease-name>-sleep``), which the CLI
#: finds it by.
ROLE_LABEL = "devstack.dev/role"
SLEEP_ROLE = "sleep"
#: Traefik's counter of requests per service.
TRAEFIK_REQUESTS = "traefik_service_requests_total"

Reason = Literal["idle", "expired"]
CopyKey = tuple[str, str]  # (namespace, deployment)

DEFAULT_IDLE_AFTER = 2 * 3600.0
DEFAULT_CHECK_INTERVAL = 60.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: str, *, what: str) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``, ``"1w"`` or plain seconds;
    one :class:`ConfigError` naming ``what`` for anything else."""
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{what} {value!r}: use a duration such as 90s, 30m, 2h or 1d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{what} {value!r}: must be more than 0")
    return seconds


@dataclass(frozen=True, kw_only=True)
class SleepSettings:
    """Whether copies sleep, after how long, how often the agent looks, and
    which Traefik ``/metrics`` URLs tell it about routed requests."""

    enabled: bool = True
    idle_after: float = DEFAULT_IDLE_AFTER
    check_interval: float = DEFAULT_CHECK_INTERVAL
    traefik_metrics_urls: tuple[str, ...] = ()


def format_time(epoch: float) -> str:
    """Epoch seconds as RFC 3339 UTC, to the second (records and headers
    people read)."""
    return timestamps.format_time(epoch, to_second=True)


def _normalize(name: str) -> str:
    """Traefik's ``provider.Normalize``: runs of anything but letters and
    digits become one ``-``."""
    return "-".join(p for p in re.split(r"[^0-9A-Za-z]+", name) if p)


_ROUTE_SERVICE = re.compile(r"^(.*)-[0-9a-f]{20}@kubernetescrd$")


def traefik_route_base(namespace: str, ingress_route: str) -> str:
    """What the Traefik services of ``ingress_route``'s routes are named by
    (each is ``<base>-<hash>@kubernetescrd``)."""
    return _normalize(f"{namespace}-{ingress_route}")


def route_base_of(service_label: str) -> str | None:
    """The IngressRoute a Traefik ``service`` label belongs to (as
    :func:`traefik_route_base` gives it), ``None`` for other services."""
    match = _ROUTE_SERVICE.match(service_label)
    return match.group(1) if match else None


def asleep_message(service: str, owner: str, since: float) -> str:
    """The value of :data:`ASLEEP_HEADER`."""
    return (
        f"{service} copy of {owner} asleep since {format_time(since)}; "
        f"devstack connect {service} wakes it"
    )


def sleep_config_map_name(lease_name: str) -> str:
    return f"{lease_name}-sleep"


def record_key(key: CopyKey) -> str:
    """The sleep ConfigMap's data key of a copy: ``<namespace>.<deployment>``."""
    return f"{key[0]}.{key[1]}"


@dataclass(frozen=True, kw_only=True)
class SleepRecord:
    """Why a copy sleeps and what it held (one entry of the sleep ConfigMap)."""

    owner: str
    team: str
    service: str
    since: float
    reason: Reason
    replicas: int
    cpu_cores: float
    memory_bytes: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "owner": self.owner,
                "team": self.team,
                "service": self.service,
                "since": format_time(self.since),
                "reason": self.reason,
                "replicas": self.replicas,
                "cpu_cores": self.cpu_cores,
                "memory_bytes": self.memory_bytes,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SleepRecord | None:
        """The record, or ``None`` for an entry that is not one."""
        try:
            raw = json.loads(text)
            since = parse_time(raw["since"])
            reason = raw.get("reason")
            if since is None or reason not in ("idle", "expired"):
                return None
            return cls(
                owner=str(raw["owner"]),
                team=str(raw.get("team") or ""),
                service=str(raw["service"]),
                since=since,
                reason=reason,
                replicas=max(1, int(raw.get("replicas") or 1)),
                cpu_cores=float(raw.get("cpu_cores") or 0.0),
                memory_bytes=float(raw.get("memory_bytes") or 0.0),
            )
        except (ValueError, KeyError, TypeError):
            return None


def read_records(data: Mapping[str, str]) -> dict[CopyKey, SleepRecord]:
    """The sleep ConfigMap's ``data`` -> records by copy (bad entries skipped)."""
    out: dict[CopyKey, SleepRecord] = {}
    for k, v in data.items():
        namespace, sep, name = k.partition(".")
        record = SleepRecord.from_json(v) if sep else None
        if record is not None:
            out[(namespace, name)] = record
    return out


# --- Traefik's metrics -------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def service_requests(text: str) -> dict[str, float]:
    """Per Traefik service, its :data:`TRAEFIK_REQUESTS` summed over codes,
    methods and protocols, from Prometheus' text format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(TRAEFIK_REQUESTS):
            continue
        match = _SAMPLE.match(line)
        if not match or match.group(1) != TRAEFIK_REQUESTS:
            continue
        labels = dict(_LABEL.findall(match.group(3) or ""))
        service = labels.get("service")
        if service is None:
            continue
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        out[service] = out.get(service, 0.0) + value
    return out


# --- deciding -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CopyFacts:
    """One copy's Deployment as the agent sees it now."""

    key: CopyKey
    service: str
    owner: str
    team: str
    replicas: int
    created_at: float | None
    last_sync: float | None
    #: Its IngressRoute's :func:`traefik_route_base` (``None``: not routed).
    traefik_routes: str | None
    expired: bool
    #: Per-pod requests (cores, bytes): times ``replicas``, what sleep saves.
    pod_cpu_cores: float = 0.0
    pod_memory_bytes: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Sleep:
    """Scale ``key`` to zero and record why."""

    key: CopyKey
    record: SleepRecord
    idle_since: float | None  # the last activity (None: expired)


@dataclass(frozen=True, kw_only=True)
class Woke:
    """Someone scaled ``key`` up again: drop its record, restore its routes."""

    key: CopyKey
    record: SleepRecord


@dataclass(frozen=True, kw_only=True)
class Gone:
    """``key``'s Deployment is gone (or no longer a copy): drop its record."""

    key: CopyKey
    record: SleepRecord


Action = Sleep | Woke | Gone


@dataclass
class IdleTracker:
    """What the agent knows about activity it did not read from the API:
    routed requests (from Traefik's counters) and wakes it saw."""

    idle_after: float
    started_at: float
    #: The last time activity may have gone unseen (start, failed scrape).
    floor: float = field(init=False)
    #: (metrics URL, Traefik service) -> the counter at the last scrape.
    _counters: dict[tuple[str, str], float] = field(default_factory=dict)
    _scraped: set[str] = field(default_factory=set)
    #: IngressRoute (its route base) -> the last time a request was seen.
    _requests: dict[str, float] = field(default_factory=dict)
    #: Copy -> when it was last seen waking up.
    _woke: dict[CopyKey, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.floor = self.started_at

    def scraped(self, url: str, totals: Mapping[str, float] | None, now: float) -> None:
        """One scrape of ``url`` at ``now``: its totals, or ``None`` if it
        failed (which counts as activity for every copy)."""
        if totals is None:
            self.floor = max(self.floor, now)
            return
        first = url not in self._scraped
        self._scraped.add(url)
        for service, value in totals.items():
            before = self._counters.get((url, service))
            # A counter that grew, went down (Traefik restarted and served
            # some since) or appeared with requests after the first scrape.
            grew = before is not None and (value > before or 0 < value < before)
            base = route_base_of(service)
            if base is not None and (grew or (before is None and not first and value > 0)):
                self._requests[base] = now
            self._counters[(url, service)] = value
        for gone in [k for k in self._counters if k[0] == url and k[1] not in totals]:
            del self._counters[gone]

    def woke(self, key: CopyKey, now: float) -> None:
        self._woke[key] = now

    def last_activity(self, copy: CopyFacts) -> float:
        """The latest thing that counts as activity for ``copy``."""
        times = [self.floor]
        for t in (
            copy.created_at,
            copy.last_sync,
            self._woke.get(copy.key),
            self._requests.get(copy.traefik_routes) if copy.traefik_routes else None,
        ):
            if t is not None:
                times.append(t)
        return max(times)

    def decide(
        self,
        copies: Iterable[CopyFacts],
        records: Mapping[CopyKey, SleepRecord],
        now: float,
        *,
        sleep_idle: bool = True,
    ) -> list[Action]:
        """What to do now. A copy with a record that has replicas again woke
        (whoever scaled it); an expired copy with replicas sleeps with reason
        ``expired`` at once; an idle one (``sleep_idle``) with ``idle``."""
        actions: list[Action] = []
        seen: set[CopyKey] = set()
        for copy in sorted(copies, key=lambda c: c.key):
            seen.add(copy.key)
            record = records.get(copy.key)
            if record is not None:
                if copy.replicas > 0:
                    actions.append(Woke(key=copy.key, record=record))
                    self.woke(copy.key, now)
                elif copy.expired and record.reason != "expired":
                    # asleep, then expired: for good now (no fallback routes)
                    expired = dataclasses.replace(record, reason="expired")
                    actions.append(Sleep(key=copy.key, record=expired, idle_since=None))
                continue
            if copy.replicas <= 0:
                continue
            if copy.expired:
                actions.append(
                    Sleep(key=copy.key, record=_record(copy, "expired", now), idle_since=None)
                )
                continue
            last = self.last_activity(copy)
            if sleep_idle and now - last >= self.idle_after:
                actions.append(
                    Sleep(key=copy.key, record=_record(copy, "idle", now), idle_since=last)
                )
        for key in sorted(set(records) - seen):
            actions.append(Gone(key=key, record=records[key]))
            self._woke.pop(key, None)
        return actions


def _record(copy: CopyFacts, reason: Reason, now: float) -> SleepRecord:
    return SleepRecord(
        owner=copy.owner,
        team=copy.team,
        service=copy.service,
        since=now,
        reason=reason,
        replicas=copy.replicas,
        cpu_cores=copy.pod_cpu_cores * copy.replicas,
        memory_bytes=copy.pod_memory_bytes * copy.replicas,
    )
