"""Leader election with a ``coordination.k8s.io/v1`` Lease (does I/O via ``kube``).

The algorithm is client-go's: a replica takes the Lease when it is free or
when its holder has not renewed it for ``lease_duration`` seconds, measured
on this replica's own clock from when it last saw the record change (so clock
skew between nodes does not matter). Every write is a conditional PUT
(``resourceVersion``), so two replicas can never both win. The leader renews
every ``retry_period`` and steps down if it could not renew for
``renew_deadline``; on shutdown it releases the Lease so a peer takes over at
once.

A failed attempt, whatever the error, is retried after ``retry_period``: a
refusal (403) too, since it is often brief (a just-restarted API server
refuses what the roles grant until its RBAC caches are filled). A leader
that meets one keeps leading until ``renew_deadline`` has passed since its
last renewal, as for a server that does not answer, so a moment's refusal
costs no leadership; a lasting one makes it step down. Refusals and other
permanent errors are logged at error level (``leader.error``), the rest as
warnings.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devstack.agent.kube import LEASES, ConflictError, KubeApi, RawObject
from devstack.core.errors import DevstackError, PermanentError
from devstack.core.logging import get_logger

log = get_logger("agent.leader")


@dataclass(frozen=True, kw_only=True)
class LeaseSettings:
    namespace: str = "default"
    name: str = "devstack-agent"
    identity: str = "devstack-agent"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def _micro_time(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds or waits for the Lease; ``is_leader`` says which."""

    def __init__(
        self,
        api: KubeApi,
        settings: LeaseSettings,
        *,
        on_started: Callable[[], None] = lambda: None,
        on_stopped: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.settings = settings
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.clock = clock
        self._leader = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0

    @property
    def is_leader(self) -> bool:
        return self._leader

    def _become(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        log.info(
            "leader.started" if leader else "leader.stopped",
            identity=self.settings.identity,
            lease=f"{self.settings.namespace}/{self.settings.name}",
        )
        (self.on_started if leader else self.on_stopped)()

    def _spec(self, *, acquire_time: str, transitions: int) -> RawObject:
        return {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration)),
            "acquireTime": acquire_time,
            "renewTime": _micro_time(datetime.datetime.now(datetime.UTC)),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this replica holds the Lease afterwards."""
        s = self.settings
        now_text = _micro_time(datetime.datetime.now(datetime.UTC))
        lease = await self.api.get_or_none(LEASES, namespace=s.namespace, name=s.name)
        if lease is None:
            try:
                await self.api.create(
                    LEASES,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": s.name, "namespace": s.namespace},
                        "spec": self._spec(acquire_time=now_text, transitions=0),
                    },
                )
            except ConflictError:
                return False
            return True
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), meta.get("resourceVersion"))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        if holder and holder != s.identity and now < self._observed_at + duration:
            return False
        mine = holder == s.identity
        new_spec = self._spec(
            acquire_time=str(spec.get("acquireTime") or now_text) if mine else now_text,
            transitions=int(spec.get("leaseTransitions") or 0) + (0 if mine or not holder else 1),
        )
        try:
            await self.api.replace(LEASES, {**lease, "spec": new_spec})
        except ConflictError:
            return False
        return True

    async def run(self) -> None:
        """Acquire, renew, step down on failure; forever (cancel to stop)."""
        s = self.settings
        while True:
            won: bool | None
            try:
                won = await self.try_acquire_or_renew()
            except DevstackError as e:
                # A refusal (403) included: retried like the rest (see above).
                report = log.error if isinstance(e, PermanentError) else log.warning
                report("leader.error", error=str(e), reason=e.reason, identity=s.identity)
                won = None  # unknown: keep leading until the renew deadline
            now = self.clock()
            if won:
                self._last_renew = now
                self._become(True)
            elif won is False or now - self._last_renew > s.renew_deadline:
                # Another replica holds it now, or we could not renew in time.
                self._become(False)
            await asyncio.sleep(s.retry_period)

    async def release(self) -> None:
        """Give the Lease up (on shutdown) so a peer takes over at once."""
        if not self._leader:
            return
        s = self.settings
        self._become(False)
        try:
            lease = await self.api.get_or_none(LEASES, namespace=s.namespace, name=s.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != s.identity:
                return
            spec = dict(lease.get("spec") or {})
            spec.update({"holderIdentity": "", "leaseDurationSeconds": 1})
            await self.api.replace(LEASES, {**lease, "spec": spec})
        except DevstackError as e:
            log.warning("leader.release_failed", error=str(e))
