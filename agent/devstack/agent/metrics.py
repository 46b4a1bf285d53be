"""The agent's Prometheus metrics, rendered in the text exposition format
(no I/O; the HTTP API serves :meth:`Metrics.render`).

Counters and gauges hold one value per label set; histograms hold
cumulative buckets, a sum and a count, rendered as ``<name>_bucket{le=...}``,
``<name>_sum`` and ``<name>_count`` under one ``# TYPE <name> histogram``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

LabelValues = tuple[tuple[str, str], ...]

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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: LabelValues) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    values: dict[LabelValues, float] = field(default_factory=dict)

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {_number(value)}"


@dataclass
class _Histogram:
    name: str
    help: str
    bounds: tuple[float, ...]
    # label values -> (count per bucket, not cumulative, +Inf last; sum)
    series: dict[LabelValues, tuple[list[int], list[float]]] = field(default_factory=dict)
    kind: str = "histogram"

    def observe(self, labels: LabelValues, value: float) -> None:
        counts, total = self.series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))
        counts[bisect.bisect_left(self.bounds, value)] += 1
        total[0] += value

    def count(self, labels: LabelValues) -> float:
        counts, _ = self.series.get(labels, ([0], [0.0]))
        return float(sum(counts))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                cumulative += n
                le = (*labels, ("le", "+Inf" if math.isinf(bound) else repr(bound)))
                yield f"{self.name}_bucket{_labels(le)} {cumulative}"
            yield f"{self.name}_sum{_labels(labels)} {_number(total[0])}"
            yield f"{self.name}_count{_labels(labels)} {cumulative}"


class Metrics:
    """Counters, gauges and histograms, keyed by name and label values."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._histograms: dict[str, _Histogram] = {}
        for name, kind, text in (
            ("devstack_agent_reconciles_total", "counter", "Reconciles by result."),
            ("devstack_agent_writes_total", "counter", "API writes by verb and kind."),
            ("devstack_agent_watch_restarts_total", "counter", "Watch restarts by reason."),
            ("devstack_agent_is_leader", "gauge", "1 if this replica holds the lease."),
            ("devstack_agent_ready", "gauge", "1 once every cache has synced."),
            ("devstack_agent_services", "gauge", "Services with devstack.dev/service."),
            ("devstack_agent_managed_objects", "gauge", "Traefik objects the agent manages."),
            ("devstack_agent_expired_copies", "gauge", "Personal copies past their TTL now."),
            (
                "devstack_agent_copy_expirations_total",
                "counter",
                "Times a personal copy expired (again after an extension).",
            ),
            ("devstack_agent_problems", "gauge", "Services the agent cannot route."),
        ):
            self._families[name] = _Family(name, kind, text)
        self._histograms["devstack_agent_reconcile_seconds"] = _Histogram(
            "devstack_agent_reconcile_seconds",
            "Time spent reconciling one route key.",
            RECONCILE_BUCKETS,
        )

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        values = self._families[name].values
        key = tuple(sorted(labels.items()))
        values[key] = values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._families[name].values[tuple(sorted(labels.items()))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation in histogram ``name``."""
        self._histograms[name].observe(tuple(sorted(labels.items())), value)

    def get(self, name: str, **labels: str) -> float:
        """A counter's or gauge's value; for a histogram, its count."""
        key = tuple(sorted(labels.items()))
        if name in self._histograms:
            return self._histograms[name].count(key)
        return self._families[name].values.get(key, 0.0)

    def render(self) -> str:
        families: list[_Family | _Histogram] = [
            *self._families.values(),
            *self._histograms.values(),
        ]
        return "\n".join(line for f in families for line in f.lines()) + "\n"
