"""The agent's Prometheus metrics, held by ``prometheus_client`` (no I/O; the
HTTP API serves :meth:`Metrics.render` with :data:`CONTENT_TYPE`).

Every :class:`Metrics` has its own :class:`~prometheus_client.CollectorRegistry`
(:attr:`Metrics.registry`), never the library's global one: tests run several
agents in one process, and other parts of the agent (the usage ledger)
register their collectors on the same registry so that one scrape of
``/metrics`` returns them all. The registry also carries the process, platform
and garbage-collector collectors (``process_*``, ``python_info``,
``python_gc_*``).

Counters, histograms and summaries export no ``<name>_created`` series (the
registry drops them): they would double every counter's series for a
timestamp nobody queries.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector

#: The ``Content-Type`` of :meth:`Metrics.render`'s text.
CONTENT_TYPE: str = CONTENT_TYPE_LATEST

#: Bucket bounds (seconds) for the reconcile-time histogram.
RECONCILE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: name -> (help, label names) of the agent's counters.
_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "devstack_agent_reconciles_total": ("Reconciles by result.", ("result",)),
    "devstack_agent_writes_total": ("API writes by verb and kind.", ("kind", "verb")),
    "devstack_agent_watch_restarts_total": ("Watch restarts by reason.", ("reason", "resource")),
    "devstack_agent_copy_expirations_total": (
        "Times a personal copy expired (again after an extension).",
        (),
    ),
}

#: name -> help of the agent's gauges (none has labels).
_GAUGES: dict[str, str] = {
    "devstack_agent_is_leader": "1 if this replica holds the lease.",
    "devstack_agent_ready": "1 once every cache has synced.",
    "devstack_agent_services": "Services with devstack.dev/service.",
    "devstack_agent_managed_objects": "Traefik objects the agent manages.",
    "devstack_agent_expired_copies": "Personal copies past their TTL now.",
    "devstack_agent_problems": "Services the agent cannot route.",
}

_WITH_CREATED = frozenset({"counter", "histogram", "summary"})


class _Registry(CollectorRegistry):
    """A registry whose scrape leaves out the ``_created`` samples (the
    library's own switch, ``disable_created_metrics()``, is process-wide)."""

    def collect(self) -> Iterable[Metric]:
        for family in super().collect():
            if family.type not in _WITH_CREATED:
                yield family
                continue
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield kept


class Metrics:
    """The agent's counters, gauges and histogram, by name and label values.

    ``inc``/``set``/``observe`` take the metric's name and its labels as
    keywords (every label the metric declares); :meth:`get` reads one series
    back without creating it.
    """

    def __init__(self) -> None:
        self.registry: CollectorRegistry = _Registry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._counters = {
            name: Counter(name, text, labels, registry=self.registry)
            for name, (text, labels) in _COUNTERS.items()
        }
        self._gauges = {
            name: Gauge(name, text, registry=self.registry) for name, text in _GAUGES.items()
        }
        self._histograms = {
            "devstack_agent_reconcile_seconds": Histogram(
                "devstack_agent_reconcile_seconds",
                "Time spent reconciling one route key.",
                buckets=RECONCILE_BUCKETS,
                registry=self.registry,
            )
        }

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        gauge = self._gauges[name]
        (gauge.labels(**labels) if labels else gauge).set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation in histogram ``name``."""
        histogram = self._histograms[name]
        (histogram.labels(**labels) if labels else histogram).observe(value)

    def get(self, name: str, **labels: str) -> float:
        """A counter's or gauge's value; for a histogram, its count (0 when
        the series does not exist; reading does not create it)."""
        collector: Counter | Gauge | Histogram
        if name in self._histograms:
            collector, sample = self._histograms[name], name + "_count"
        elif name in self._counters:
            collector, sample = self._counters[name], name
        else:
            collector, sample = self._gauges[name], name
        for family in collector.collect():
            for s in family.samples:
                if s.name == sample and s.labels == labels:
                    return float(s.value)
        return 0.0

    def render(self) -> str:
        """Every collector on :attr:`registry`, in Prometheus' text format."""
        return generate_latest(self.registry).decode("utf-8")
