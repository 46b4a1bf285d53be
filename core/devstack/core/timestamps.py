"""RFC 3339 timestamps as the Kubernetes API server writes them, to and from
epoch seconds (pure). One home for the agent's usage ledger, its sleeper
and the CLI that reads their records."""

from __future__ import annotations

import datetime
from typing import Any


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp in epoch seconds (``None`` for nothing or
    garbage; a time without a zone is taken as UTC)."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def format_time(epoch: float, *, to_second: bool = False) -> str:
    """Epoch seconds as RFC 3339 UTC: microseconds only when there are some,
    and never with ``to_second`` (for what people read)."""
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    if when.microsecond and not to_second:
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
