"""The usage ledger (pure: no I/O; every instant is passed in).

Integration
    Each span (a Pod's requests, a PVC's storage, a LoadBalancer Service, a
    copy asleep, a sampled rate of actual use) is integrated over its own
    lifetime clipped to the interval being flushed, and split at UTC
    midnights: how many samples were taken never matters, only when each
    object started and ended. Sums are kept per (UTC day, owner, team).

Day records and the watermark
    One record per UTC day (a ConfigMap ``<lease-name>-usage-YYYY-MM-DD``,
    see :mod:`devstack.agent.usage.store`) holds that day's sums and
    ``complete_until``: the instant up to which they are complete. The
    newest record's ``complete_until`` is the *watermark*: usage before it
    is in the records, usage after it is not.

Who writes
    Every replica keeps the spans from its own informers (so a standby
    knows the Pods that ended while it was not leading); only the leader
    flushes. A flush integrates ``[watermark, now)`` and writes each day
    touched, oldest first, each with a conditional update
    (``resourceVersion``). Because a flush always starts from the watermark
    the record itself holds, and moves it in the same write as the sums,
    a flush that is retried after a 409 (re-read, recomputed), or done by a
    new leader after a restart or a leader change, adds exactly what lies
    after the last successful write: nothing is counted twice and nothing
    between two flushes is lost. A crash between two days' writes leaves
    the older day complete to its midnight; the next flush continues from
    there. The one loss: a Pod that both starts (or runs) and is deleted
    while *no* replica is running is counted only up to the last flush
    (its object is gone; nothing tells when it ended): run two replicas.

With no record at all, counting starts at ``origin`` (when the first
leader started).
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from devstack.agent.usage.model import (
    AMOUNT_FIELDS,
    GIB,
    Amounts,
    LoadBalancerSpan,
    PodSpan,
    UsedSpan,
    VolumeSpan,
)
from devstack.agent.usage.spans import SleepSpan
from devstack.core.timestamps import format_time, parse_time

DAY = 86400.0
AnySpan = PodSpan | VolumeSpan | LoadBalancerSpan | UsedSpan | SleepSpan
RowKey = tuple[str, str]  # (owner, team)
CellKey = tuple[str, str, str]  # (day, owner, team)


def day_of(epoch: float) -> str:
    """The UTC day an instant falls in, ``YYYY-MM-DD``."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d")


def day_start(day: str) -> float:
    return datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.UTC).timestamp()


def _midnight_after(epoch: float) -> float:
    return (math.floor(epoch / DAY) + 1) * DAY


def _add_span(cell: Amounts, span: AnySpan, seconds: float) -> None:
    if isinstance(span, PodSpan):
        cell.cpu_core_seconds += span.cpu_cores * seconds
        cell.memory_gib_seconds += span.memory_bytes / GIB * seconds
        cell.pod_seconds += seconds
    elif isinstance(span, VolumeSpan):
        cell.storage_gib_seconds += span.storage_bytes / GIB * seconds
    elif isinstance(span, LoadBalancerSpan):
        cell.load_balancer_seconds += seconds
    elif isinstance(span, UsedSpan):
        cell.cpu_used_core_seconds += span.cpu_cores * seconds
        cell.memory_used_gib_seconds += span.memory_bytes / GIB * seconds
    else:
        cell.sleep_seconds += seconds
        cell.saved_core_seconds += span.cpu_cores * seconds
        cell.saved_gib_seconds += span.memory_bytes / GIB * seconds


def span_id(span: AnySpan) -> str:
    """A span's identity, the same on every replica (a Pod's, PVC's or
    Service's uid; a sleep by its copy and when it began)."""
    if isinstance(span, PodSpan):
        return f"pod:{span.key}"
    if isinstance(span, VolumeSpan):
        return f"pvc:{span.key}"
    if isinstance(span, LoadBalancerSpan):
        return f"lb:{span.key}"
    if isinstance(span, UsedSpan):
        return f"used:{span.key}"
    return f"sleep:{span.key}@{span.since:.6f}"


def _pieces(lo: float, hi: float) -> Iterable[tuple[str, float, float]]:
    while lo < hi:
        cut = min(hi, _midnight_after(lo))
        yield day_of(lo), lo, cut
        lo = cut


def integrate(spans: Iterable[AnySpan], start: float, end: float) -> dict[CellKey, Amounts]:
    """Every span over its part of ``[start, end)``, split at UTC midnights."""
    out: dict[CellKey, Amounts] = {}
    for span in spans:
        lo = max(span.since, start)
        hi = end if span.until is None else min(span.until, end)
        for day, a, b in _pieces(lo, hi):
            _add_span(out.setdefault((day, span.owner, span.team), Amounts()), span, b - a)
    return out


# --- day records ---------------------------------------------------------------------


@dataclass
class DayRecord:
    """One UTC day's sums, complete from its midnight to ``complete_until``."""

    day: str
    complete_until: float
    rows: dict[RowKey, Amounts] = field(default_factory=dict)
    actual: bool = False  # whether actual use was sampled for some of it
    resource_version: str | None = None  # of the ConfigMap it was read from / written to
    #: Spans that ended after ``complete_until`` and are counted in this day
    #: to their end already (span id -> end): not again, whoever flushes next.
    done: dict[str, float] = field(default_factory=dict)

    def copy(self) -> DayRecord:
        return DayRecord(
            self.day,
            self.complete_until,
            {k: v.copy() for k, v in self.rows.items()},
            self.actual,
            self.resource_version,
            dict(self.done),
        )

    def to_data(self) -> dict[str, str]:
        """The ConfigMap's ``data``."""
        rows = [
            {"owner": owner, "team": team, **amounts.as_dict()}
            for (owner, team), amounts in sorted(self.rows.items())
        ]
        return {
            "day": self.day,
            "complete-until": format_time(self.complete_until),
            "actual-usage": "true" if self.actual else "false",
            "rows.json": json.dumps(rows, separators=(",", ":")),
            "done.json": json.dumps(
                {k: format_time(v) for k, v in sorted(self.done.items())}, separators=(",", ":")
            ),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, str], resource_version: str | None = None) -> DayRecord:
        """Read a record back; ``ValueError`` when it is not one."""
        day = str(data.get("day") or "")
        until = parse_time(data.get("complete-until"))
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) or until is None:
            raise ValueError("not a usage record (day or complete-until missing)")
        rows: dict[RowKey, Amounts] = {}
        for row in json.loads(data.get("rows.json") or "[]"):
            key = (str(row.get("owner") or ""), str(row.get("team") or ""))
            rows.setdefault(key, Amounts()).add(Amounts.from_dict(row))
        done: dict[str, float] = {}
        for key, when in json.loads(data.get("done.json") or "{}").items():
            end = parse_time(when)
            if end is not None:
                done[str(key)] = end
        return cls(day, until, rows, data.get("actual-usage") == "true", resource_version, done)


def watermark(records: Iterable[DayRecord]) -> float | None:
    """Up to when the records are complete (the newest ``complete_until``)."""
    return max((r.complete_until for r in records), default=None)


def advance(
    records: Mapping[str, DayRecord],
    spans: Iterable[AnySpan],
    end: float,
    *,
    origin: float,
    now: float | None = None,
    actual: bool = False,
) -> list[DayRecord]:
    """The records a flush writes, oldest day first.

    Everything open is counted over ``[watermark, end)`` and the watermark
    moves to ``end`` (``complete_until``: ``end``, or the day's midnight).
    A span that has ended (by ``now``, when its end is known) is counted to
    its end at once, even past ``end``, and listed in that day's ``done``
    so that no later flush counts that part again; ``end`` trails ``now``
    only so that objects seen a moment after their start (timestamps are
    whole seconds) are still counted from it. ``origin`` is where counting
    starts when there is no record yet."""
    end = round(end, 6)  # what RFC 3339 with microseconds keeps
    now = end if now is None else max(end, now)
    start = watermark(records.values())
    start = origin if start is None else start
    end = max(end, start)
    cells: dict[CellKey, Amounts] = {}
    done: dict[str, dict[str, float]] = {}
    for span in spans:
        sid = span_id(span)
        closed = span.until is not None and span.until <= now
        hi = span.until if closed and span.until is not None else end
        if span.until is not None:
            hi = min(hi, span.until)
        for day, a, b in _pieces(max(span.since, start), hi):
            old = records.get(day)
            if old is not None and sid in old.done:
                continue  # counted to its end by an earlier flush
            _add_span(cells.setdefault((day, span.owner, span.team), Amounts()), span, b - a)
            if closed and hi > end:
                done.setdefault(day, {})[sid] = hi
    if end <= start and not cells:
        return []
    # the days with something to add, and the one the watermark is in (a
    # quiet day in between needs no record: nothing happened in it)
    days = {d for d, _, _ in cells} | {day_of(end) if end > start else day_of(start)}
    out: list[DayRecord] = []
    for day in sorted(days):
        old = records.get(day)
        record = old.copy() if old is not None else DayRecord(day, min(end, day_start(day)))
        for (d, owner, team), amounts in cells.items():
            if d == day:
                record.rows.setdefault((owner, team), Amounts()).add(amounts)
        record.complete_until = max(record.complete_until, min(end, day_start(day) + DAY))
        record.done = {k: v for k, v in {**record.done, **done.get(day, {})}.items() if v > end}
        record.actual = record.actual or actual
        out.append(record)
    return out


def row_deltas(old: DayRecord | None, new: DayRecord) -> dict[RowKey, Amounts]:
    """What a write of ``new`` over ``old`` adds, per owner and team."""
    out: dict[RowKey, Amounts] = {}
    for key, amounts in new.rows.items():
        before = old.rows.get(key) if old is not None else None
        delta = amounts.minus(before) if before is not None else amounts.copy()
        if not delta.is_zero():
            out[key] = delta
    return out


# --- prices and the report -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Prices:
    """Unit prices: per core-hour and GiB-hour requested, per GiB-hour stored."""

    core_hour: float = 0.0
    gib_hour: float = 0.0
    storage_gib_hour: float = 0.0
    currency: str = "USD"

    def cost(self, a: Amounts) -> float:
        return (
            a.cpu_core_seconds * self.core_hour
            + a.memory_gib_seconds * self.gib_hour
            + a.storage_gib_seconds * self.storage_gib_hour
        ) / 3600.0

    def saved(self, a: Amounts) -> float:
        return (
            a.saved_core_seconds * self.core_hour + a.saved_gib_seconds * self.gib_hour
        ) / 3600.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "core_hour": self.core_hour,
            "gib_hour": self.gib_hour,
            "storage_gib_hour": self.storage_gib_hour,
            "currency": self.currency,
        }


@dataclass(frozen=True, kw_only=True)
class ActualUsage:
    """Whether actual use (metrics.k8s.io) is sampled, and if not, why."""

    available: bool
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"available": self.available}
        if self.reason:
            out["reason"] = self.reason
        return out


_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNIT = {"m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}
By = Literal["owner", "team"]


def parse_since(value: str, now: float) -> float:
    """``30m``, ``12h``, ``7d``, ``2w`` (before ``now``) or an RFC 3339
    instant; ``ValueError`` with the fix otherwise."""
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        return now - int(match.group(1)) * _UNIT[match.group(2)]
    if "T" in text:
        when = parse_time(text)
        if when is not None and re.search(r"(Z|[+-]\d{2}:\d{2})$", text):
            return when
    raise ValueError(
        f"since {value!r}: use a duration (30m, 12h, 7d, 2w) or an RFC 3339 time "
        "(2026-11-25T00:00:00Z)"
    )


def parse_by(value: str) -> By:
    if value == "owner":
        return "owner"
    if value == "team":
        return "team"
    raise ValueError(f"by {value!r}: use owner or team")


def _sum_cells(
    records: Iterable[DayRecord], pending: Mapping[CellKey, Amounts], first_day: str
) -> dict[RowKey, Amounts]:
    out: dict[RowKey, Amounts] = {}
    for record in records:
        if record.day < first_day:
            continue
        for key, amounts in record.rows.items():
            out.setdefault(key, Amounts()).add(amounts)
    for (day, owner, team), amounts in pending.items():
        if day >= first_day:
            out.setdefault((owner, team), Amounts()).add(amounts)
    return out


def _row(amounts: Amounts, actual: ActualUsage, prices: Prices | None) -> dict[str, float | None]:
    row: dict[str, float | None] = dict(amounts.as_dict())
    if not actual.available:
        row["cpu_used_core_seconds"] = None
        row["memory_used_gib_seconds"] = None
    row["cost"] = round(prices.cost(amounts), 6) if prices else None
    row["saved_cost"] = round(prices.saved(amounts), 6) if prices else None
    return row


def build_report(
    records: Iterable[DayRecord],
    *,
    pending: Mapping[CellKey, Amounts],
    since: float,
    until: float,
    by: By,
    interval: float,
    actual: ActualUsage,
    prices: Prices | None,
) -> dict[str, Any]:
    """``/v1/usage``: whole UTC days from the one ``since`` falls in (the
    records are per day, so ``since`` is reported as that midnight) up to
    ``until`` (how far the numbers are complete), plus ``pending`` (the
    leader's part not flushed yet), per owner or team, biggest first."""
    first_day = day_of(since)
    cells = _sum_cells(records, pending, first_day)
    grouped: dict[RowKey, Amounts] = {}
    for (owner, team), amounts in cells.items():
        key = (owner, team) if by == "owner" else ("", team)
        grouped.setdefault(key, Amounts()).add(amounts)
    rows: list[dict[str, Any]] = []
    total = Amounts()
    for (owner, team), amounts in grouped.items():
        total.add(amounts)
        head: dict[str, Any] = {"owner": owner, "team": team} if by == "owner" else {"team": team}
        rows.append({**head, **_row(amounts, actual, prices)})

    def order(row: dict[str, Any]) -> tuple[float, str, str]:
        primary = row["cost"] if prices else row["cpu_core_seconds"]
        return (-float(primary), row.get("owner", ""), row["team"])

    rows.sort(key=order)
    return {
        "since": format_time(day_start(first_day)),
        "until": format_time(until),
        "by": by,
        "interval_seconds": float(interval),
        "actual_usage": actual.as_dict(),
        "prices": prices.as_dict() if prices else None,
        "rows": rows,
        "totals": _row(total, actual, prices),
    }


__all__ = [
    "AMOUNT_FIELDS",
    "ActualUsage",
    "DayRecord",
    "Prices",
    "advance",
    "build_report",
    "day_of",
    "day_start",
    "integrate",
    "parse_by",
    "parse_since",
    "row_deltas",
    "watermark",
]
