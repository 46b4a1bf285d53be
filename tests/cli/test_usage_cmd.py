"""``devstack usage`` (devstack.cli.usage) end to end through ``main``: a real
HTTP server on 127.0.0.1 answers ``GET /v1/usage`` with documents shaped as
the issue 10 contract says, and the command prints them as a table with a bar
chart (on 40, 60 and wide terminals), JSON, YAML and CSV, or fails with one
line saying what to do.

The server is a stand-in for the agent (:class:`StandIn`): it serves the
documents each test gives it, so every format and every way of failing can be
shown here. The real agent's ``/v1/usage``, reached the way the command
reaches it, is tested in tests/cluster by the usage helper's tests."""

from __future__ import annotations

import asyncio
import copy
import csv
import io
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from devstack.cli import usage
from devstack.cli.main import build_parser, main
from tests.support.net import free_port

HOUR = 3600.0


def row(owner: str | None, team: str, core_h: float, **more: Any) -> dict[str, Any]:
    """A contract row: ``core_h`` core-hours; the rest in the contract's fields."""
    r: dict[str, Any] = {
        "team": team,
        "cpu_core_seconds": core_h * HOUR,
        "memory_gib_seconds": 2 * core_h * HOUR,
        "pod_seconds": 3 * HOUR,
        "storage_gib_seconds": 0.0,
        "load_balancer_seconds": 0.0,
        "cpu_used_core_seconds": None,
        "memory_used_gib_seconds": None,
        "sleep_seconds": 5 * HOUR,
        "saved_core_seconds": 0.5 * core_h * HOUR,
        "saved_gib_seconds": core_h * HOUR,
        "cost": None,
        "saved_cost": None,
    }
    if owner is not None:
        r = {"owner": owner, **r}
    r.update(more)
    return r


PRICES = {"core_hour": 0.031, "gib_hour": 0.004, "storage_gib_hour": 0.0001, "currency": "USD"}
NO_METRICS = {"available": False, "reason": "metrics.k8s.io is not served: no metrics-server"}


def document(
    rows: list[dict[str, Any]],
    *,
    by: str = "owner",
    prices: dict[str, Any] | None = None,
    actual: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``/v1/usage`` document; with prices, each row's cost from them."""
    rows = copy.deepcopy(rows)
    if prices is not None:
        for r in rows:
            r["cost"] = round(
                r["cpu_core_seconds"] / HOUR * prices["core_hour"]
                + r["memory_gib_seconds"] / HOUR * prices["gib_hour"],
                6,
            )
            r["saved_cost"] = round(r["saved_core_seconds"] / HOUR * prices["core_hour"], 6)
    key = "cost" if prices is not None else "cpu_core_seconds"
    rows.sort(key=lambda r: -r[key])
    totals: dict[str, Any] = {}
    for name in usage.NUMERIC_FIELDS:
        values = [r[name] for r in rows]
        totals[name] = None if any(v is None for v in values) else sum(values)
    return {
        "since": "2026-11-25T00:00:00Z",
        "until": "2026-12-02T07:00:00Z",
        "by": by,
        "interval_seconds": 60.0,
        "actual_usage": actual or NO_METRICS,
        "prices": prices,
        "rows": rows,
        "totals": totals,
    }


OWNERS = [
    row("alice", "payments", 40.0),
    row("bob", "search", 10.0),
    row("carol.with.a.long.name@example.com", "", 1.0),
]


@dataclass
class StandIn:
    """An HTTP server on 127.0.0.1 standing in for the agent's API: it answers
    ``/v1/usage`` with ``status`` and ``body`` and records each query. (The
    real agent is tested in tests/cluster; this one lets every answer be
    chosen.)"""

    url: str = ""
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    queries: list[dict[str, str]] = field(default_factory=list)

    def serve(self, doc: Any, status: int = 200) -> None:
        self.status, self.body, self.content_type = (
            status,
            json.dumps(doc).encode(),
            "application/json",
        )

    def serve_text(self, text: str, status: int = 200) -> None:
        self.status, self.body, self.content_type = status, text.encode(), "text/html"

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)


@pytest.fixture
def agent() -> Iterator[StandIn]:
    stand_in = StandIn()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port = free_port()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_get(usage.USAGE_PATH, stand_in.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runner_box.append(runner)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30), "the stand-in agent did not start"
    stand_in.url = f"http://127.0.0.1:{port}"
    try:
        yield stand_in
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEVSTACK_AGENT_URL", "DEVSTACK_AGENT_SERVICE"):
        monkeypatch.delenv(name, raising=False)


def run_usage(
    agent: StandIn,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    columns: int = 200,
) -> tuple[int, str, str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    code = main(["usage", "--agent-url", agent.url, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str, first: str) -> list[list[str]]:
    """The grid's lines from its header (``first`` begins it) to the totals
    row, split into cells (two spaces or more between them), without the rule
    above the totals; the totals' empty TEAM cell put back."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("TOTAL"))
    grid = [re.split(r"\s{2,}", line.strip()) for line in lines[start : end + 1]]
    grid = [cells for cells in grid if set(cells[0]) - set("─-")]
    if "TEAM" in grid[0][1:]:
        grid[-1].insert(1, "")
    return grid


def bars(out: str) -> dict[str, int]:
    """The chart's bars: a name's bar length in eighths of a block (``#``: 8)."""
    widths = {"█": 8, "#": 8, **{c: i for i, c in enumerate(" ▏▎▍▌▋▊▉") if i}}
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("Cost by", "Core-hours by")))
    found = {}
    for line in lines[start + 1 :]:
        if not line or line.startswith(("…", "...")):
            break
        name = line.split(" ")[0]
        found[name] = sum(widths.get(c, 0) for c in line)
    return found


# --- the table and the chart ---------------------------------------------------------------


def test_the_table_shows_each_owner_in_human_units_with_cost_and_a_chart(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = document(OWNERS, prices=PRICES)
    agent.serve(doc)
    code, out, err = run_usage(agent, capsys, monkeypatch, columns=200)
    assert (code, err) == (0, "")
    assert agent.queries == [{"since": "7d", "by": "owner"}]
    assert "Usage by owner, 2026-11-25 00:00 UTC → 2026-12-02 07:00 UTC" in out
    assert "Prices: 0.031 USD a core-hour, 0.004 a GiB-hour, 0.0001 a storage GiB-hour." in out
    assert "Actual usage is not available (metrics.k8s.io is not served: no metrics-server)" in out
    grid = table_rows(out, "OWNER")
    header = grid[0]
    assert header == [
        "OWNER", "TEAM", "CORE-H", "GIB-H", "POD-H", "STORAGE GIB-H", "ASLEEP H",
        "SAVED CORE-H", "COST USD", "SAVED USD",
    ]  # fmt: skip
    alice = dict(zip(header, grid[1], strict=True))
    assert alice["OWNER"] == "alice" and alice["TEAM"] == "payments"
    assert alice["CORE-H"] == "40.0" and alice["GIB-H"] == "80.0" and alice["POD-H"] == "3.00"
    assert alice["ASLEEP H"] == "5.00" and alice["SAVED CORE-H"] == "20.0"
    assert alice["COST USD"] == f"{40 * 0.031 + 80 * 0.004:.2f}"
    assert alice["SAVED USD"] == f"{20 * 0.031:.2f}"
    carol = dict(zip(header, grid[3], strict=True))
    assert carol["TEAM"] == "unassigned"  # team "" in the document
    totals = dict(zip(header, grid[-1], strict=True))
    assert (totals["OWNER"], totals["TEAM"]) == ("TOTAL", "")
    assert totals["CORE-H"] == "51.0"  # 40 + 10 + 1 core-hours
    assert totals["COST USD"] == f"{doc['totals']['cost']:.2f}"
    # the chart: cost, the biggest spender's bar the longest, in proportion
    assert "Cost by owner (USD)" in out
    got = bars(out)
    assert set(got) == {"alice", "bob", "carol.with.a.lo…"}
    ratio = doc["rows"][1]["cost"] / doc["rows"][0]["cost"]
    assert got["alice"] > got["bob"] > got["carol.with.a.lo…"] > 0
    assert abs(got["bob"] / got["alice"] - ratio) < 0.02


@pytest.mark.parametrize("columns", [60, 40])
def test_on_a_narrow_terminal_columns_drop_and_names_shorten_but_nothing_wraps(
    agent: StandIn,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
) -> None:
    agent.serve(document(OWNERS, prices=PRICES))
    code, out, _ = run_usage(agent, capsys, monkeypatch, columns=columns)
    assert code == 0
    too_wide = [line for line in out.splitlines() if len(line) > columns]
    assert too_wide == []
    shown = table_rows(out, "OWNER")[0]
    # the name and the cost stay; what went is said
    assert shown[0] == "OWNER" and "COST USD" in shown
    assert "hidden to fit the terminal" in out
    said = " ".join(out.split())  # the note is wrapped to the width
    hidden = said.split("(hidden to fit the terminal: ")[1].split(";")[0]
    hidden_names = {h.strip() for h in hidden.split(",")}
    assert hidden_names and not hidden_names & set(shown)
    assert {"POD-H", "STORAGE GIB-H"} <= hidden_names  # the least telling go first
    assert "carol.with.a.long.name@example.com" not in out  # truncated, with a mark
    assert "carol" in out and "…" in out
    # the chart still ranks them, within the width
    got = bars(out)
    assert got["alice"] > got["bob"] > 0
    assert all(len(line) <= columns for line in out.splitlines())


def test_without_prices_no_cost_is_shown_and_the_chart_is_core_hours(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.serve(document(OWNERS))
    code, out, _ = run_usage(agent, capsys, monkeypatch, columns=120)
    assert code == 0
    assert "No prices are configured on the agent, so no cost is shown" in out
    header = table_rows(out, "OWNER")[0]
    assert "CORE-H" in header and not [h for h in header if "COST" in h or "SAVED U" in h]
    assert "Core-hours by owner" in out and "Cost by" not in out
    got = bars(out)
    assert abs(got["bob"] / got["alice"] - 10 / 40) < 0.02
    # core-hours stay on the narrowest terminal when there is no cost
    monkeypatch.setenv("COLUMNS", "40")
    assert main(["usage", "--agent-url", agent.url]) == 0
    narrow = capsys.readouterr().out
    assert "CORE-H" in narrow.splitlines()[next(
        i for i, line in enumerate(narrow.splitlines()) if line.startswith("OWNER")
    )]  # fmt: skip


def test_actual_usage_columns_appear_when_metrics_server_is_there(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        row("alice", "payments", 40.0, cpu_used_core_seconds=12 * HOUR,
            memory_used_gib_seconds=30 * HOUR),
        row("bob", "search", 10.0, cpu_used_core_seconds=2.5 * HOUR,
            memory_used_gib_seconds=4 * HOUR),
    ]  # fmt: skip
    agent.serve(document(rows, actual={"available": True, "reason": ""}))
    code, out, _ = run_usage(agent, capsys, monkeypatch, columns=200)
    assert code == 0
    assert "Actual usage (metrics-server) is in the USED columns." in out
    assert "not available" not in out
    grid = table_rows(out, "OWNER")
    alice = dict(zip(grid[0], grid[1], strict=True))
    assert (alice["USED CORE-H"], alice["USED GIB-H"]) == ("12.0", "30.0")
    assert dict(zip(grid[0], grid[-1], strict=True))["USED CORE-H"] == "14.5"


def test_by_team_asks_for_teams_and_names_the_unassigned(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [row(None, "payments", 40.0), row(None, "", 3.0)]
    agent.serve(document(rows, by="team", prices=PRICES))
    code, out, _ = run_usage(agent, capsys, monkeypatch, "--by", "team", "--since", "2w")
    assert code == 0
    assert agent.queries == [{"since": "2w", "by": "team"}]
    grid = table_rows(out, "TEAM")
    assert grid[0][0] == "TEAM" and "OWNER" not in grid[0]
    assert [g[0] for g in grid[1:]] == ["payments", "unassigned", "TOTAL"]
    assert "Cost by team (USD)" in out and set(bars(out)) == {"payments", "unassigned"}


def test_an_empty_period_says_so(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.serve(document([], prices=PRICES))
    code, out, _ = run_usage(agent, capsys, monkeypatch, "--since", "30m")
    assert code == 0
    assert "No usage recorded in this period" in out
    assert "TOTAL" not in out and "Cost by" not in out


def test_plain_ascii_when_the_output_is_not_utf8(agent: StandIn) -> None:
    agent.serve(document(OWNERS, prices=PRICES))
    args = build_parser(["usage"]).parse_args(["usage", "--agent-url", agent.url])
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    assert usage.run(args, out=stream) == 0
    stream.flush()
    text = raw.getvalue().decode("ascii")  # would fail on any non-ASCII character
    got = bars(text)
    assert got["alice"] > got["bob"] > 0
    assert "#" in text and "carol.with.a.lo~" in text
    assert "2026-11-25 00:00 UTC to 2026-12-02 07:00 UTC" in text


# --- json, yaml, csv ---------------------------------------------------------------------


def test_json_and_yaml_are_the_agents_document_as_it_is(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = document(OWNERS, prices=PRICES)
    agent.serve(doc)
    code, out, _ = run_usage(agent, capsys, monkeypatch, "-o", "json")
    assert code == 0 and json.loads(out) == doc
    assert out.startswith('{\n  "since"')  # pretty
    code, out, _ = run_usage(agent, capsys, monkeypatch, "-o", "yaml")
    assert code == 0 and yaml.safe_load(out) == doc


def test_csv_has_the_contracts_columns_and_quotes_as_rfc_4180(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [*OWNERS, row("dave", 'pay, "core"', 0.5)]
    doc = document(rows, prices=PRICES)
    agent.serve(doc)
    code, out, _ = run_usage(agent, capsys, monkeypatch, "-o", "csv")
    assert code == 0
    lines = out.split("\r\n")
    assert lines[-1] == "" and all("\n" not in line for line in lines)  # CRLF records
    assert lines[0] == (
        "owner,team,cpu_core_seconds,memory_gib_seconds,pod_seconds,storage_gib_seconds,"
        "load_balancer_seconds,cpu_used_core_seconds,memory_used_gib_seconds,sleep_seconds,"
        "saved_core_seconds,saved_gib_seconds,cost,saved_cost,currency"
    )
    assert '"pay, ""core"""' in out
    records = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [r["owner"] for r in records] == [r["owner"] for r in doc["rows"]]
    for got, want in zip(records, doc["rows"], strict=True):
        assert got["team"] == want["team"]
        assert float(got["cpu_core_seconds"]) == want["cpu_core_seconds"]
        assert float(got["cost"]) == want["cost"]
        assert got["cpu_used_core_seconds"] == ""  # null: no metrics-server
        assert got["currency"] == "USD"
    # per team: no owner column
    agent.serve(document([row(None, "payments", 1.0)], by="team"))
    code, out, _ = run_usage(agent, capsys, monkeypatch, "-o", "csv", "--by", "team")
    header = out.split("\r\n")[0].split(",")
    assert header[:2] == ["team", "cpu_core_seconds"] and header[-1] == "currency"
    assert out.split("\r\n")[1].startswith("payments,3600.0,") and out.endswith(",\r\n")


# --- failing, one line each -------------------------------------------------------------


def one_line_error(code: int, out: str, err: str) -> str:
    assert code != 0 and out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    "since",
    ["7x", "0d", "-1d", "7 d", "2026-13-01T00:00:00Z", "2026-11-01", "2999-01-01T00:00:00Z"],
)
def test_a_bad_since_is_refused_before_asking_the_agent(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, since: str
) -> None:
    agent.serve(document(OWNERS))
    line = one_line_error(*run_usage(agent, capsys, monkeypatch, f"--since={since}"))
    assert line.startswith(f"devstack usage: --since {since!r}: ")
    assert ("30m, 12h, 7d or 2w" in line) or ("future" in line)
    assert agent.queries == []


def test_an_rfc_3339_since_reaches_the_agent_as_given(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.serve(document(OWNERS))
    since = "2026-11-25T01:30:00.5+01:00"
    code, _, _ = run_usage(agent, capsys, monkeypatch, "--since", since, "-o", "json")
    assert code == 0 and agent.queries == [{"since": since, "by": "owner"}]


def test_an_agent_that_cannot_be_reached(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = main(["usage", "--agent-url", url])
    out, err = capsys.readouterr()
    line = one_line_error(code, out, err)
    assert f"cannot reach the agent at {url}: connection refused" in line
    assert "--agent-url" in line and "port-forward" in line


def test_a_400_from_the_agent_says_what_it_said(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.serve({"error": "since: 9w is before the retained records (30 days)"}, status=400)
    line = one_line_error(*run_usage(agent, capsys, monkeypatch, "--since", "9w"))
    assert "the agent refused the request: since: 9w is before the retained records" in line
    assert "give --since as" in line


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (200, "<html>a login page</html>", "not a usage document"),
        (200, json.dumps({"services": []}), "not a usage document"),
        (404, "404: Not Found", "has no /v1/usage (404): upgrade the agent chart"),
        (500, json.dumps({"error": "ledger unreadable"}), "with 500 (ledger unreadable)"),
    ],
)
def test_an_answer_that_is_not_a_usage_document(
    agent: StandIn,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: str,
    said: str,
) -> None:
    agent.serve_text(body, status=status)
    line = one_line_error(*run_usage(agent, capsys, monkeypatch))
    assert said in line and agent.url in line


def test_bad_flags_are_one_line_too(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = one_line_error(*run_usage(agent, capsys, monkeypatch, "--timeout", "0"))
    assert "--timeout 0: give a positive number of seconds" in line
    line = one_line_error(*run_usage(agent, capsys, monkeypatch, "--agent-service", "Nope"))
    assert "--agent-service 'Nope': give NAMESPACE/NAME" in line
    assert agent.queries == []


def test_an_api_server_that_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --agent-url: the agent is looked for through the kubeconfig's API
    server, which nothing serves here (tests/cluster/test_usage_cmd_discovery.py
    has a real one)."""
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    code = main(["usage", "--timeout", "5"])
    out, err = capsys.readouterr()
    line = one_line_error(code, out, err)
    assert line.startswith(
        "devstack usage: cannot look for the agent's Service in any namespace: "
    ), line
    assert "devstack doctor" in line and "--agent-url" in line
    # a context the kubeconfig does not have
    line = one_line_error(main(["usage", "--context", "nope"]), *capsys.readouterr())
    assert "--context nope: no such context in the kubeconfig (has: c)" in line


# --- the pure parts ----------------------------------------------------------------------


def test_human_units() -> None:
    cases = {None: "-", 0.0: "0", 0.004: "<0.01", 3.4219: "3.42", 42.06: "42.1", 1234.4: "1,234",
             12_345.0: "12.3k", 4_500_000.0: "4.5M", 7.2e9: "7.2G"}  # fmt: skip
    assert {k: usage.quantity(k) for k in cases} == cases
    assert [usage.money(v) for v in (None, 0.0, 0.004, 1234.567)] == [
        "-",
        "0.00",
        "<0.01",
        "1,234.57",
    ]


# --- the agent's side of the contract ------------------------------------------------------


def test_a_report_the_agents_own_builder_made_renders_in_every_format(
    agent: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document the agent's pure report builder (devstack.agent.usage.ledger)
    makes for two days of records: every format reads it, the numbers intact."""
    from devstack.agent.usage.ledger import ActualUsage, DayRecord, Prices, build_report
    from devstack.agent.usage.model import Amounts

    def amounts(core_h: float, asleep_h: float) -> Amounts:
        return Amounts(cpu_core_seconds=core_h * HOUR, memory_gib_seconds=4 * core_h * HOUR,
                       pod_seconds=core_h * HOUR, sleep_seconds=asleep_h * HOUR,
                       saved_core_seconds=asleep_h * HOUR)  # fmt: skip

    day1, day2 = 1_764_547_200.0, 1_764_633_600.0  # 2025-12-01 and -02, 00:00 UTC
    records = [
        DayRecord("2025-12-01", day2, {("alice", "payments"): amounts(20, 2),
                                       ("bob", ""): amounts(5, 0)}),
        DayRecord("2025-12-02", day2 + 3600, {("alice", "payments"): amounts(4, 1)}),
    ]  # fmt: skip
    prices = Prices(core_hour=0.05, gib_hour=0.01, storage_gib_hour=0.0, currency="EUR")
    doc = build_report(records, pending={}, since=day1 + 10, until=day2 + 3600, by="owner",
                       interval=60.0, prices=prices,
                       actual=ActualUsage(available=False, reason="no metrics-server"))  # fmt: skip
    agent.serve(doc)
    code, out, _ = run_usage(agent, capsys, monkeypatch, columns=100)
    assert code == 0
    grid = table_rows(out, "OWNER")
    alice = dict(zip(grid[0], grid[1], strict=True))
    assert (alice["OWNER"], alice["CORE-H"], alice["ASLEEP H"]) == ("alice", "24.0", "3.00")
    assert alice["COST EUR"] == f"{24 * 0.05 + 96 * 0.01:.2f}"
    assert dict(zip(grid[0], grid[2], strict=True))["TEAM"] == "unassigned"
    assert "Actual usage is not available (no metrics-server)" in out
    assert set(bars(out)) == {"alice", "bob"}
    code, out, _ = run_usage(agent, capsys, monkeypatch, "-o", "csv")
    records_out = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [(r["owner"], float(r["cpu_core_seconds"])) for r in records_out] == [
        ("alice", 24 * HOUR), ("bob", 5 * HOUR)
    ]  # fmt: skip
    assert records_out[0]["currency"] == "EUR" and records_out[0]["cpu_used_core_seconds"] == ""


SINCE_SAMPLES = [
    "30m", "12h", "7d", "2w", "10d", "0d", "0m", "7x", "7", "d", "-1d", "1.5d", " 7d", "7D",
    "2026-11-25T00:00:00Z", "2026-11-25T00:00:00.25Z", "2026-11-25T01:00:00+01:00",
    "2026-11-25T00:00:00", "2026-11-25 00:00:00Z", "2026-11-25", "2026-13-01T00:00:00Z",
    "2026-11-25t00:00:00z", "yesterday",
]  # fmt: skip


@pytest.mark.parametrize("since", SINCE_SAMPLES)
def test_what_since_accepts_here_the_agent_accepts_too(since: str) -> None:
    """Checked here first, so a typo is told before the cluster is reached:
    never refusing what the agent takes, except a zero span."""
    import datetime

    from devstack.agent.usage.ledger import parse_since
    from devstack.core.errors import ConfigError

    now = datetime.datetime(2026, 12, 2, 7, 0, tzinfo=datetime.UTC)
    try:
        usage.check_since(since, now)
        here = True
    except ConfigError:
        here = False
    try:
        parse_since(since, now.timestamp())
        there = True
    except ValueError:
        there = False
    if since in ("0d", "0m"):  # an empty period: surely a mistake here
        assert (here, there) == (False, True)
    else:
        assert here == there, (since, here, there)
