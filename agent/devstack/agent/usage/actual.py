"""Actual use, from ``metrics.k8s.io`` (metrics-server), when the cluster serves it.

:class:`ActualUsageSource` is the seam: :class:`MetricsServerSource` asks
the API server (does I/O through ``kube``); tests of the sampling path use a
fake, because the testbed has no metrics-server. Whether the group is
served is asked with the call sampling makes (a ``list`` of ``PodMetrics``,
``limit=1``): the API server answers 404 for a group nobody serves, which
means no metrics-server, and the report says so instead of guessing. (A
resource request rather than discovery, so that the RBAC grant it needs is
the one sampling uses, and a missing grant shows as a refusal.)

:func:`used_spans` (pure) turns one sample into spans: each Pod's measured
rate held from the previous sample (or the Pod's start, if later) to this
one (or the Pod's end, if earlier). The first sample a leader takes counts
nothing before it: no rate is assumed for a time nobody measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from devstack.agent.kube import KubeApi, KubeForbiddenError, NotFoundError, Resource
from devstack.agent.usage.ledger import ActualUsage
from devstack.agent.usage.model import PodSpan, UsedSpan, parse_quantity
from devstack.core.errors import DevstackError
from devstack.core.routing import OWNER_LABEL

POD_METRICS = Resource(group="metrics.k8s.io", version="v1beta1", plural="pods", kind="PodMetrics")
NOT_SERVED = "metrics.k8s.io is not served: no metrics-server"


@dataclass(frozen=True, slots=True)
class PodUsage:
    """One Pod's measured use (the sum over its containers)."""

    namespace: str
    name: str
    cpu_cores: float
    memory_bytes: float


class ActualUsageSource(Protocol):
    async def availability(self) -> ActualUsage: ...

    async def sample(self) -> list[PodUsage]: ...


def pod_usage(item: Mapping[str, object]) -> PodUsage | None:
    """A ``PodMetrics`` object as :class:`PodUsage` (``None`` if unreadable)."""
    meta = item.get("metadata")
    containers = item.get("containers")
    if not isinstance(meta, Mapping) or not isinstance(containers, list):
        return None
    cpu = mem = 0.0
    try:
        for c in containers:
            usage = c.get("usage") or {}
            cpu += parse_quantity(usage.get("cpu", 0))
            mem += parse_quantity(usage.get("memory", 0))
    except (AttributeError, ValueError):
        return None
    return PodUsage(str(meta.get("namespace") or ""), str(meta.get("name") or ""), cpu, mem)


class MetricsServerSource:
    """The real source: the API server's ``metrics.k8s.io`` (does I/O)."""

    def __init__(self, api: KubeApi, namespaces: tuple[str, ...]) -> None:
        self.api = api
        self.namespaces = namespaces

    async def availability(self) -> ActualUsage:
        namespace = self.namespaces[0] if self.namespaces else None
        try:
            await self.api.request(
                "GET",
                POD_METRICS.path(namespace=namespace),
                query={"limit": 1, "labelSelector": OWNER_LABEL},
            )
        except NotFoundError:
            return ActualUsage(available=False, reason=NOT_SERVED)
        except KubeForbiddenError as e:
            return ActualUsage(
                available=False,
                reason=f"metrics.k8s.io: refused, grant list on its pods ({e})",
            )
        except DevstackError as e:
            return ActualUsage(available=False, reason=f"metrics.k8s.io: {e}")
        return ActualUsage(available=True)

    async def sample(self) -> list[PodUsage]:
        out: list[PodUsage] = []
        for namespace in self.namespaces or (None,):
            items, _ = await self.api.list(
                POD_METRICS, namespace=namespace, label_selector=OWNER_LABEL
            )
            out.extend(u for u in map(pod_usage, items) if u is not None)
        return out


def used_spans(
    samples: Iterable[PodUsage],
    pods: Mapping[tuple[str, str], PodSpan],
    *,
    previous: float | None,
    now: float,
) -> list[UsedSpan]:
    """The spans one sample at ``now`` adds (none for the first sample)."""
    if previous is None or now <= previous:
        return []
    out: list[UsedSpan] = []
    for s in samples:
        pod = pods.get((s.namespace, s.name))
        if pod is None:
            continue  # not an owner's Pod, or one that never started
        lo = max(previous, pod.since)
        hi = now if pod.until is None else min(now, pod.until)
        if lo < hi:
            out.append(
                UsedSpan(
                    f"{pod.key}@{now}", pod.owner, pod.team, lo, hi, s.cpu_cores, s.memory_bytes
                )
            )
    return out
