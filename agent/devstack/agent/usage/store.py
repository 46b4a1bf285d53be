"""Where the day records live: one ConfigMap per UTC day (does I/O through ``kube``).

``<lease-name>-usage-YYYY-MM-DD`` in the agent's namespace (the Lease's),
labelled ``app.kubernetes.io/managed-by: devstack-agent`` and
``devstack.dev/role: usage``; its data is :meth:`DayRecord.to_data`. A
ConfigMap rather than a custom resource: nothing to install, readable with
``kubectl get configmap -o yaml``, and a day of 1,000 owners is ~300 KB, a
third of what a ConfigMap holds. Writes are conditional (``resourceVersion``
on update; create fails with 409 when the day exists): a 409 means another
replica wrote, and the caller re-reads and recomputes from the record's own
watermark.
"""

from __future__ import annotations

from dataclasses import dataclass

from devstack.agent.kube import CONFIG_MAPS, KubeApi, RawObject
from devstack.agent.usage.ledger import DayRecord
from devstack.core.logging import get_logger

log = get_logger("agent.usage")

ROLE_LABEL = "devstack.dev/role"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "devstack-agent"
SELECTOR = f"{ROLE_LABEL}=usage,{MANAGED_BY_LABEL}={MANAGED_BY}"


@dataclass(frozen=True)
class RecordStore:
    api: KubeApi
    namespace: str
    lease_name: str

    def name(self, day: str) -> str:
        return f"{self.lease_name}-usage-{day}"

    def _record(self, obj: RawObject) -> DayRecord | None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name.startswith(f"{self.lease_name}-usage-"):
            return None  # another agent's (another lease name) in the same namespace
        try:
            record = DayRecord.from_data(obj.get("data") or {}, meta.get("resourceVersion"))
        except ValueError as e:
            log.error("usage.record_unreadable", configmap=name, error=str(e))
            return None
        return record if name == self.name(record.day) else None

    async def load(self) -> dict[str, DayRecord]:
        items, _ = await self.api.list(
            CONFIG_MAPS, namespace=self.namespace, label_selector=SELECTOR
        )
        out: dict[str, DayRecord] = {}
        for item in items:
            record = self._record(item)
            if record is not None:
                out[record.day] = record
        return out

    async def write(self, record: DayRecord) -> DayRecord:
        """Create (no ``resource_version``) or conditionally update; the
        record as written, with its new ``resource_version``. A 409
        (:class:`~devstack.agent.kube.ConflictError`) goes to the caller."""
        meta: RawObject = {
            "name": self.name(record.day),
            "namespace": self.namespace,
            "labels": {ROLE_LABEL: "usage", MANAGED_BY_LABEL: MANAGED_BY},
        }
        obj: RawObject = {"apiVersion": "v1", "kind": "ConfigMap", "data": record.to_data()}
        if record.resource_version is None:
            written = await self.api.create(CONFIG_MAPS, {**obj, "metadata": meta})
        else:
            meta["resourceVersion"] = record.resource_version
            written = await self.api.replace(CONFIG_MAPS, {**obj, "metadata": meta})
        out = record.copy()
        out.resource_version = str((written.get("metadata") or {}).get("resourceVersion") or "")
        return out

    async def delete(self, day: str) -> None:
        await self.api.delete(CONFIG_MAPS, namespace=self.namespace, name=self.name(day))
