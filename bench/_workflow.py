"""What the workflow benchmarks (``workflow_local.py``, ``workflow_cluster.py``)
share: figures over repeated runs, the machine line, the load average, and
the report's two outputs (Markdown on stdout, every raw figure as JSON).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    """Progress, on stderr (stdout holds only the report)."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def pct(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (as ``reload_latency.pct``)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def spread(xs: Sequence[float]) -> dict[str, Any]:
    """Median, p90, p99, min and max of ``xs`` (any unit), and the values."""
    return {
        "n": len(xs),
        "median": statistics.median(xs) if xs else math.nan,
        "p90": pct(xs, 90),
        "p99": pct(xs, 99),
        "min": min(xs) if xs else math.nan,
        "max": max(xs) if xs else math.nan,
        "values": list(xs),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def seconds(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.2f} s"


def millis(x: float) -> str:
    """``x`` in seconds, shown in ms."""
    return "-" if not math.isfinite(x) else f"{x * 1000:.0f} ms"


def loadavg() -> float:
    return os.getloadavg()[0]


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return (
        f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}. Run {now}."
    )


def load_line(before: Sequence[float]) -> str:
    """The 1-minute load averages taken before each timed run."""
    if not before:
        return ""
    note = " (above ~0.5, something else shared the CPUs)" if max(before) > 0.5 else ""
    return (
        f"1-minute load average before the timed runs: {min(before):.2f} to "
        f"{max(before):.2f}{note}."
    )


def emit(markdown: str, result: dict[str, Any], json_path: Path | None) -> None:
    """The report on stdout; with ``json_path``, the raw figures there too."""
    sys.stdout.write(markdown)
    sys.stdout.flush()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"raw figures in {json_path}")
