"""The agent's Prometheus metrics, rendered in the text exposition format
(no I/O; the HTTP API serves :meth:`Metrics.render`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

LabelValues = tuple[tuple[str, str], ...]


def _labels(labels: LabelValues) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
    )
    return "{" + inner + "}"


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
            yield f"{self.name}{_labels(labels)} {value:g}"


class Metrics:
    """Counters and gauges, keyed by name and label values."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        for name, kind, text in (
            ("devstack_agent_reconciles_total", "counter", "Reconciles by result."),
            ("devstack_agent_writes_total", "counter", "API writes by verb and kind."),
            ("devstack_agent_watch_restarts_total", "counter", "Watch restarts by reason."),
            ("devstack_agent_reconcile_seconds_sum", "counter", "Time spent reconciling."),
            ("devstack_agent_reconcile_seconds_count", "counter", "Reconciles timed."),
            ("devstack_agent_is_leader", "gauge", "1 if this replica holds the lease."),
            ("devstack_agent_ready", "gauge", "1 once every cache has synced."),
            ("devstack_agent_services", "gauge", "Services with devstack.dev/service."),
            ("devstack_agent_managed_objects", "gauge", "Traefik objects the agent manages."),
            ("devstack_agent_expired_copies", "gauge", "Personal copies past their TTL."),
            ("devstack_agent_problems", "gauge", "Services the agent cannot route."),
        ):
            self._families[name] = _Family(name, kind, text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        values = self._families[name].values
        key = tuple(sorted(labels.items()))
        values[key] = values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._families[name].values[tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        return self._families[name].values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        return "\n".join(line for f in self._families.values() for line in f.lines()) + "\n"
