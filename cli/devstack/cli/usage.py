"""``devstack usage``: what each owner's (or team's) personal copies held
over a period, from the cluster agent's ``GET /v1/usage``, as a table with a
bar chart of the biggest spenders, or as JSON, YAML or CSV.

Two halves, as everywhere in devstack:

- **pure**: :func:`check_since` (``30m``, ``12h``, ``7d``, ``2w`` or an RFC
  3339 time), :func:`usage_document` (is the answer a usage document?),
  :func:`render_table`, :func:`render_chart` and :func:`render_csv` (the
  table and the chart fit ``width`` columns: columns drop and names are
  truncated, lines never wrap);
- **the shell**: :func:`fetch` reaches the agent as ``devstack doctor``
  does (:mod:`devstack.cli.agent_client`): at ``--agent-url``, else its
  Service through the API server's service proxy, and turns each way of
  failing into one line with the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import csv
import datetime
import io
import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from devstack.cli.agent_client import (
    DirectHttp,
    Http,
    add_agent_arguments,
    check_agent_service,
    locate_agent,
)
from devstack.cli.doctor_checks import AGENT_SELECTOR, Answer
from devstack.cli.project import add_kube_arguments, add_output_argument, resolve_kube
from devstack.core import logging as dlog
from devstack.core.errors import ConfigError, PermanentError, ProtocolError, UnreachableError

log = dlog.get_logger("devstack.cli.usage")

#: The agent's endpoint (docs/usage.md).
USAGE_PATH = "/v1/usage"
#: Seconds the agent has to answer (``--timeout``).
DEFAULT_TIMEOUT = 10.0
DEFAULT_SINCE = "7d"
#: ``-o``: the project's table, json and yaml, and csv for spreadsheets.
OUTPUTS_HERE = ("table", "json", "csv", "yaml")
#: The most rows the bar chart shows (the biggest; the table has them all).
CHART_ROWS = 10
#: How short the table's names get before its columns are dropped.
NAME_FLOOR = 12
#: What the table shows for a team no label or mapping names.
UNASSIGNED = "unassigned"

#: A row's numeric fields, in the order the contract (and the CSV) has them.
NUMERIC_FIELDS = (
    "cpu_core_seconds",
    "memory_gib_seconds",
    "pod_seconds",
    "storage_gib_seconds",
    "load_balancer_seconds",
    "cpu_used_core_seconds",
    "memory_used_gib_seconds",
    "sleep_seconds",
    "saved_core_seconds",
    "saved_gib_seconds",
    "cost",
    "saved_cost",
)

EXAMPLES = """\
examples:
  devstack usage                        each owner's usage over the last 7 days, with a chart
  devstack usage --since 30d --by team  per team, over the last 30 days
  devstack usage --since 2026-11-01T00:00:00Z -o csv > november.csv
                                        since a point in time, as CSV for a spreadsheet
  devstack usage -o json                the agent's document as it is, for scripts
  devstack usage --agent-url http://127.0.0.1:8080
                                        the agent there (after `kubectl -n devstack
                                        port-forward svc/devstack 8080`)

Core-hours and GiB-hours are the copies' CPU and memory requests held over
time; "asleep" is the hours copies were scaled to zero while idle, and
"saved" what they would have held. Costs appear when the agent has unit
prices (docs/usage.md). The agent must run (the agent chart, docs/helm.md).
"""


# --- --since (pure) ---------------------------------------------------------------------------

_RELATIVE = re.compile(r"[1-9][0-9]*[mhdw]")
#: RFC 3339's date-time, as the agent reads it (``T`` and ``Z`` upper case).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")


def check_since(text: str, now: datetime.datetime) -> str:
    """``--since`` as the agent takes it: a span back from now (``30m``,
    ``12h``, ``7d``, ``2w``) or an RFC 3339 time, not in the future."""
    given = text.strip()
    if _RELATIVE.fullmatch(given):
        return given
    hint = "give a span such as 30m, 12h, 7d or 2w, or an RFC 3339 time (2026-11-01T00:00:00Z)"
    if not _RFC3339.fullmatch(given):
        raise ConfigError(f"--since {text!r}: {hint}")
    try:
        when = datetime.datetime.fromisoformat(given)
    except ValueError as e:
        raise ConfigError(f"--since {text!r}: not a real time ({e}); {hint}") from e
    if when > now:
        raise ConfigError(f"--since {text!r}: that is in the future; give a time before now")
    return given


# --- the document (pure) ----------------------------------------------------------------------


def usage_document(body: Any, where: str) -> dict[str, Any]:
    """The agent's answer, if it has a usage document's shape."""
    if isinstance(body, dict) and isinstance(body.get("rows"), list):
        rows = body["rows"]
        if isinstance(body.get("totals"), dict) and all(isinstance(r, dict) for r in rows):
            return body
    start = (body if isinstance(body, str) else json.dumps(body))[:80]
    start = " ".join(start.split())
    raise ProtocolError(
        f"{where} answered {USAGE_PATH} with something that is not a usage document "
        f"({start!r}): check that it is the devstack agent (--agent-url), and that its chart "
        "is as new as this devstack (docs/helm.md)"
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _hours(row: Mapping[str, Any], field: str) -> float | None:
    seconds = _number(row.get(field))
    return None if seconds is None else seconds / 3600.0


def quantity(value: float | None) -> str:
    """A human number: ``-`` for none, ``<0.01``, ``3.42``, ``42.1``, ``1,234``, ``12.3k``."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    size = abs(value)
    if size < 0.01:
        return "<0.01"
    if size < 10:
        return f"{value:.2f}"
    if size < 1000:
        return f"{value:.1f}"
    if size < 10_000:
        return f"{value:,.0f}"
    for limit, suffix in ((1e6, "k"), (1e9, "M")):
        if size < limit:
            return f"{value / (limit / 1000):.1f}{suffix}"
    return f"{value / 1e9:.1f}G"


def money(value: float | None) -> str:
    """An amount: two decimals, ``<0.01`` for a little."""
    if value is None:
        return "-"
    if 0 < abs(value) < 0.01:
        return "<0.01"
    return f"{value:,.2f}"


def _name(row: Mapping[str, Any], by: str) -> str:
    if by == "team":
        return str(row.get("team") or "") or UNASSIGNED
    return str(row.get("owner") or "")


def _when(text: Any) -> str:
    """An RFC 3339 time as ``2026-11-25 00:00 UTC``."""
    try:
        when = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if when.tzinfo is not None:
        when = when.astimezone(datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _currency(doc: Mapping[str, Any]) -> str:
    prices = doc.get("prices")
    return str(prices.get("currency") or "") if isinstance(prices, dict) else ""


def _actual(doc: Mapping[str, Any]) -> tuple[bool, str]:
    actual = doc.get("actual_usage")
    if not isinstance(actual, dict):
        return False, "the agent did not say"
    return bool(actual.get("available")), str(actual.get("reason") or "")


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Mapping[str, Any]], str]
    #: Dropped first when the terminal is narrow: the lowest first; 0: never.
    keep: int
    left: bool = False


def columns(doc: Mapping[str, Any]) -> list[Column]:
    """The table's columns for this document, left to right."""
    by = str(doc.get("by") or "owner")
    priced = isinstance(doc.get("prices"), dict)
    actual, _ = _actual(doc)
    rows = [r for r in doc.get("rows") or () if isinstance(r, dict)]
    currency = _currency(doc)

    def hours(field: str) -> Callable[[Mapping[str, Any]], str]:
        return lambda r: quantity(_hours(r, field))

    out = [Column(by.upper(), lambda r: _name(r, by), 0, left=True)]
    if by == "owner":
        out.append(Column("TEAM", lambda r: str(r.get("team") or "") or UNASSIGNED, 4, left=True))
    out += [
        Column("CORE-H", hours("cpu_core_seconds"), 10 if priced else 0),
        Column("GIB-H", hours("memory_gib_seconds"), 8),
        Column("POD-H", hours("pod_seconds"), 3),
        Column("STORAGE GIB-H", hours("storage_gib_seconds"), 2),
    ]
    if any(_number(r.get("load_balancer_seconds")) for r in rows):
        out.append(Column("LB-H", hours("load_balancer_seconds"), 1))
    if actual:
        out += [
            Column("USED CORE-H", hours("cpu_used_core_seconds"), 7),
            Column("USED GIB-H", hours("memory_used_gib_seconds"), 2),
        ]
    out += [
        Column("ASLEEP H", hours("sleep_seconds"), 5),
        Column("SAVED CORE-H", hours("saved_core_seconds"), 6),
    ]
    if priced:
        cur = f" {currency}" if currency else ""
        out += [
            Column(f"COST{cur}", lambda r: money(_number(r.get("cost"))), 0),
            Column(f"SAVED{cur}", lambda r: money(_number(r.get("saved_cost"))), 9),
        ]
    return out


def _truncate(text: str, width: int, mark: str) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - len(mark), 0)] + mark if width > len(mark) else text[:width]


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=max(width, 1), break_on_hyphens=False) or [""]


def _span(widths: Sequence[int]) -> int:
    """How wide a line of columns this wide is (two spaces between them)."""
    return sum(widths) + 2 * (len(widths) - 1)


def render_table(doc: Mapping[str, Any], *, width: int, unicode: bool) -> str:
    """The heading, the notes (prices, actual usage), one row per owner or
    team and a totals row, then the bar chart; no line wider than ``width``."""
    by = str(doc.get("by") or "owner")
    rows = [r for r in doc.get("rows") or () if isinstance(r, dict)]
    arrow = "→" if unicode else "to"
    lines = _wrap(
        f"Usage by {by}, {_when(doc.get('since'))} {arrow} {_when(doc.get('until'))}", width
    )
    if not rows:
        lines += _wrap(
            f"No usage recorded in this period: no personal copy of any {by} ran.", width
        )
        return "\n".join(lines)
    prices = doc.get("prices")
    if isinstance(prices, dict):
        cur = _currency(doc)
        lines += _wrap(
            f"Prices: {prices.get('core_hour', 0):g} {cur} a core-hour, "
            f"{prices.get('gib_hour', 0):g} a GiB-hour, "
            f"{prices.get('storage_gib_hour', 0):g} a storage GiB-hour.",
            width,
        )
    else:
        lines += _wrap(
            "No prices are configured on the agent, so no cost is shown (docs/usage.md).", width
        )
    available, reason = _actual(doc)
    if available:
        lines += _wrap("Actual usage (metrics-server) is in the USED columns.", width)
    else:
        lines += _wrap(
            f"Actual usage is not available ({reason or 'no reason given'}): the figures are "
            "requests, not use.",
            width,
        )
    lines.append("")
    lines += _grid(doc, rows, width=width, unicode=unicode)
    lines.append("")
    lines += render_chart(doc, width=width, unicode=unicode).splitlines()
    return "\n".join(lines)


def _grid(
    doc: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], *, width: int, unicode: bool
) -> list[str]:
    mark = "…" if unicode else "~"
    cols = columns(doc)
    totals = {**doc.get("totals", {}), "owner": "TOTAL", "team": ""}
    if str(doc.get("by") or "owner") == "team":
        totals["team"] = "TOTAL"
    body = [[c.cell(r) for c in cols] for r in rows]
    total_cells = [c.cell(totals) for c in cols]
    if len(cols) > 1 and cols[1].header == "TEAM":
        total_cells[1] = ""

    full = [
        max(len(c.header), *(len(cells[i]) for cells in [*body, total_cells]))
        for i, c in enumerate(cols)
    ]
    kept = list(range(len(cols)))
    hidden: list[int] = []

    def span(name_width: int) -> int:
        return _span([name_width, *(full[i] for i in kept[1:])])

    # names give way to NAME_FLOOR characters before any column is dropped,
    # then columns go (the least telling first), then names give way further
    while span(min(full[0], NAME_FLOOR)) > width:
        droppable = [i for i in kept if cols[i].keep > 0]
        if not droppable:
            break
        gone = min(droppable, key=lambda i: cols[i].keep)
        kept.remove(gone)
        hidden.append(gone)
    # a less telling column may fit where a wider, more telling one did not
    for back in sorted(hidden, key=lambda i: -cols[i].keep):
        kept.append(back)
        kept.sort()
        if span(min(full[0], NAME_FLOOR)) > width:
            kept.remove(back)
        else:
            hidden.remove(back)
    cs = [cols[i] for i in kept]
    ws = [max(min(full[0], width - span(0)), 4), *(full[i] for i in kept[1:])]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for j, (c, w) in enumerate(zip(cs, ws, strict=True)):
            text = _truncate(cells[j], w, mark)
            parts.append(text.ljust(w) if c.left else text.rjust(w))
        return "  ".join(parts).rstrip()

    out = [line([c.header for c in cs])]
    out += [line([cells[i] for i in kept]) for cells in body]
    out.append(("─" if unicode else "-") * min(_span(ws), width))
    out.append(line([total_cells[i] for i in kept]))
    if hidden:
        out += _wrap(
            f"(hidden to fit the terminal: {', '.join(cols[i].header for i in sorted(hidden))};"
            " widen it, or use -o csv)",
            width,
        )
    return out


_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(value: float, top: float, width: int, unicode: bool) -> str:
    if top <= 0 or value <= 0 or width <= 0:
        return ""
    if not unicode:
        return "#" * max(1, round(value / top * width))
    eighths = max(1, round(value / top * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def render_chart(doc: Mapping[str, Any], *, width: int, unicode: bool) -> str:
    """A horizontal bar per owner (or team): its cost when prices are
    configured, else its core-hours; the biggest first, at most
    :data:`CHART_ROWS`; no line wider than ``width``."""
    by = str(doc.get("by") or "owner")
    rows = [r for r in doc.get("rows") or () if isinstance(r, dict)]
    priced = isinstance(doc.get("prices"), dict)
    if priced:
        cur = _currency(doc)
        title = f"Cost by {by}{f' ({cur})' if cur else ''}"

        def measure(r: Mapping[str, Any]) -> float:
            return _number(r.get("cost")) or 0.0

        def label(v: float) -> str:
            return money(v)
    else:
        title = f"Core-hours by {by}"

        def measure(r: Mapping[str, Any]) -> float:
            return (_number(r.get("cpu_core_seconds")) or 0.0) / 3600.0

        def label(v: float) -> str:
            return quantity(v)

    ranked = sorted(((measure(r), _name(r, by)) for r in rows), key=lambda p: -p[0])
    shown, rest = ranked[:CHART_ROWS], ranked[CHART_ROWS:]
    lines = _wrap(title, width)
    if not shown:
        return "\n".join(lines)
    top = shown[0][0]
    mark = "…" if unicode else "~"
    value_w = max(len(label(v)) for v, _ in shown)
    name_w = min(max(len(n) for _, n in shown), 16)
    # the bar gets at least a quarter of the line; the name gives way first
    bar_w = width - name_w - value_w - 2
    if bar_w < width // 4:
        name_w = max(4, name_w - (width // 4 - bar_w))
        bar_w = max(width - name_w - value_w - 2, 1)
    for v, n in shown:
        bar = _bar(v, top, bar_w, unicode)
        lines.append(
            f"{_truncate(n, name_w, mark).ljust(name_w)} {bar.ljust(bar_w)} "
            f"{label(v).rjust(value_w)}"[:width]
        )
    if rest:
        lines += _wrap(f"… and {len(rest)} more (see the table)" if unicode else
                       f"... and {len(rest)} more (see the table)", width)  # fmt: skip
    return "\n".join(lines)


def csv_header(doc: Mapping[str, Any]) -> list[str]:
    by = str(doc.get("by") or "owner")
    return [*(("owner",) if by == "owner" else ()), "team", *NUMERIC_FIELDS, "currency"]


def render_csv(doc: Mapping[str, Any]) -> str:
    """A header and one record per row (RFC 4180: CRLF, quoted where
    needed); the numbers as the agent gave them (seconds), empty for
    none; ``team`` empty when unassigned; ``currency`` when prices are set."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    header = csv_header(doc)
    writer.writerow(header)
    currency = _currency(doc)
    for row in doc.get("rows") or ():
        if not isinstance(row, dict):
            continue
        record = []
        for field in header:
            if field == "currency":
                record.append(currency)
                continue
            value = row.get(field)
            record.append("" if value is None else str(value))
        writer.writerow(record)
    return out.getvalue()


def is_utf8(stream: TextIO) -> bool:
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "utf-8"
    except LookupError:
        return False


def render(doc: Mapping[str, Any], output: str, *, width: int, unicode: bool) -> str:
    """The document in ``output``'s format (``json`` and ``yaml``: as the agent gave it)."""
    if output == "json":
        return json.dumps(doc, indent=2) + "\n"
    if output == "yaml":
        import yaml

        return yaml.safe_dump(dict(doc), sort_keys=False)
    if output == "csv":
        return render_csv(doc)
    return render_table(doc, width=width, unicode=unicode) + "\n"


# --- the shell: reaching the agent --------------------------------------------------------------


def explain(answer: Answer, where: str, *, service: str = "") -> dict[str, Any]:
    """The usage document in ``answer``, or the error saying what went wrong
    and what to do (``service``: ``NS/NAME`` when reached through the API server)."""
    ns, _, svc = service.partition("/")
    pods = f"`kubectl -n {ns} get pods -l app.kubernetes.io/component=agent`"
    forward = (
        f"`kubectl -n {ns} port-forward svc/{svc} 8080`, then --agent-url http://127.0.0.1:8080"
    )
    if not answer.answered:
        if service:
            raise UnreachableError(f"cannot reach the agent at {where}: {answer.error}; see {pods}")
        raise UnreachableError(
            f"cannot reach the agent at {where}: {answer.error}; is it running there? Check "
            "--agent-url (env DEVSTACK_AGENT_URL), or the port-forward"
        )
    if service and answer.status == 503 and "no endpoints available" in answer.error:
        raise UnreachableError(f"{where}: no agent pod is ready behind the Service; see {pods}")
    if service and answer.status == 403:
        raise PermanentError(
            f"{where}: forbidden to reach the agent through the API server (services/proxy): "
            f"{forward}"
        )
    said = answer.body.get("error") if isinstance(answer.body, dict) else None
    said = str(said or answer.error or "")
    if answer.status == 400:
        raise ConfigError(
            f"the agent refused the request: {said or 'bad request (400)'}; give --since as "
            "30m, 12h, 7d, 2w or an RFC 3339 time, and --by owner or team"
        )
    if answer.status == 404:
        raise PermanentError(
            f"{where} has no {USAGE_PATH} (404): upgrade the agent chart to this devstack's "
            "(docs/helm.md), or check --agent-url"
        )
    if answer.status != 200:
        logs = f"`kubectl -n {ns} logs deploy/{svc}`" if service else "the agent's log"
        raise PermanentError(
            f"{where} answered {USAGE_PATH} with {answer.status}"
            f"{f' ({said})' if said else ''}; see {logs}"
        )
    return usage_document(answer.body, where)


async def fetch(args: argparse.Namespace, query: Mapping[str, str]) -> dict[str, Any]:
    """The usage document, from ``--agent-url`` or the agent's Service."""
    timeout = float(args.timeout)
    if args.agent_url:
        http: Http = DirectHttp(args.agent_url, timeout)
        return explain(await http.get(USAGE_PATH, query), args.agent_url)
    from devstack.agent.kube import kube_client

    target = resolve_kube(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        environ=os.environ,
        home=os.environ.get("HOME") or str(Path.home()),
        read=_read,
    )
    async with kube_client(
        args.kubeconfig, target.context, user_agent="devstack-usage", request_timeout=timeout
    ) as api:
        found = await locate_agent(api, args.agent_service, target.namespace)
        if found.lookup_error:
            raise UnreachableError(
                f"cannot look for the agent's Service in {found.looked_in}: "
                f"{found.lookup_error}; check the cluster with `devstack doctor`, or pass "
                "--agent-url URL (after `kubectl -n NAMESPACE port-forward svc/devstack 8080`)"
            )
        if found.proxy is None:
            if args.agent_service:
                raise ConfigError(
                    f"no {found.looked_in}: name the agent chart's Service (`kubectl get svc -A "
                    "-l app.kubernetes.io/component=agent`), or leave --agent-service out"
                )
            raise ConfigError(
                f"no devstack agent in {found.looked_in} (a Service labelled "
                f"{AGENT_SELECTOR.replace(',', ', ')}): install the agent chart (docs/helm.md), "
                "or give its address with --agent-url"
            )
        answer = await found.proxy.get(USAGE_PATH, query)
        where = f"the agent's Service {found.via} (through the API server)"
        return explain(answer, where, service=found.via)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from e


# --- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show what each owner's (or team's) personal copies held over a period: CPU and\n"
        "memory requests in core-hours and GiB-hours, pod-hours, storage, the hours they\n"
        "slept and what that saved, and a cost when the agent has unit prices; with a bar\n"
        "chart of the biggest spenders. Read from the cluster agent's /v1/usage."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        metavar="SPAN|TIME",
        help=f"from when: 30m, 12h, 7d, 2w back from now, or an RFC 3339 time "
        f"(default {DEFAULT_SINCE})",
    )
    parser.add_argument(
        "--by",
        choices=("owner", "team"),
        default="owner",
        help="one row per owner or per team (default owner)",
    )
    add_output_argument(parser, choices=OUTPUTS_HERE)
    g = parser.add_argument_group("what to reach")
    add_agent_arguments(g)
    g.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long the agent may take to answer (default {DEFAULT_TIMEOUT:g})",
    )
    add_kube_arguments(parser)


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    dlog.configure(level=os.environ.get("DEVSTACK_LOG_LEVEL") or "warning")
    stream = out or sys.stdout
    check_agent_service(args.agent_service)
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    since = check_since(args.since, datetime.datetime.now(datetime.UTC))
    doc = asyncio.run(fetch(args, {"since": since, "by": args.by}))
    log.info("usage.read", rows=len(doc["rows"]), by=args.by, since=since)
    width = shutil.get_terminal_size((80, 24)).columns
    stream.write(render(doc, args.output, width=width, unicode=is_utf8(stream)))
    return 0
