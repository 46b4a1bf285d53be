"""The spans usage is integrated over (pure data; no I/O).

A span is one thing an owner held for a while: a Pod's requests from its
start to its end, a PVC's storage, a LoadBalancer Service, or a copy asleep
(what it would have held had it not slept). Times are seconds since the
epoch (UTC); ``until`` is ``None`` while the span is open.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SleepSpan:
    """A personal copy asleep, from ``since`` until it woke (``None``: still
    asleep). ``cpu_cores`` and ``memory_bytes`` are what the copy requested
    before it slept (per-pod requests times its replicas): what sleep saved."""

    key: str  # "<namespace>/<deployment>"
    owner: str
    team: str
    since: float
    until: float | None
    cpu_cores: float
    memory_bytes: float


class SleepSpanSource(Protocol):
    """Where the usage ledger reads sleep from (the sleeper implements it).

    ``sleep_spans()`` returns every copy asleep now and every sleep that
    ended since this process started (or at least within the last day), so
    a sleep that ends between two samples is still counted to its end."""

    def sleep_spans(self) -> Iterable[SleepSpan]: ...
