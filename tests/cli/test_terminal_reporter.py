"""What a person sees on a terminal: the progress bar of the initial sync,
then one live status line (files, bytes, last reload, conflicts)."""

from __future__ import annotations

import io
import re

import pytest

from devstack.cli.connect import TerminalReporter
from devstack.cli.syncer import Stats, describe_reload
from devstack.core.manifest import Entry, Kind
from devstack.core.plan import Action, Change, Plan
from devstack.sync.v1 import sync_pb2 as pb


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def frames(out: str) -> list[str]:
    """What the terminal shows, one redraw or line at a time."""
    return [f for f in re.split(r"\r\x1b\[2K|\n", out) if f]


def two_files() -> Plan:
    def write(path: str) -> Change:
        return Change(Action.WRITE, path, Entry(path, Kind.FILE, 2_000_000, 0o644), None)

    return Plan(changes=[write("a.bin"), write("b.bin")])


def test_progress_bar_then_live_status_line() -> None:
    tty, clock = FakeTTY(), Clock()
    r = TerminalReporter(tty, clock=clock)
    r.round_started(two_files(), initial=True)
    r.progress(1, 1_000_000)
    clock.now += 0.05
    r.progress(0, 1_000_000)  # within 0.1 s of the last draw: not redrawn
    clock.now += 0.2
    r.progress(1, 2_000_000)
    shown = frames(tty.getvalue())
    assert shown[0] == "initial sync: 2 change(s), 4.0 MB to send"
    bars = [f for f in shown if f.startswith("[")]
    assert len(bars) == 2
    assert "25.0%" in bars[0] and "1.0/4.0 MB" in bars[0]
    assert bars[1].startswith("[" + "#" * 30 + "]") and "100.0%" in bars[1]
    assert "4.0/4.0 MB" in bars[1]

    stats = Stats(files_synced=2, bytes_sent=4_000_000, connected=True)
    stats.conflicts["config.yaml"] = "changed on the laptop and in the workspace"
    r.round_finished(stats)
    live = frames(tty.getvalue())[-1]
    assert live == ("connected · 2 file(s) synced · 4.00 MB sent · last reload: - · conflicts: 1")
    assert not tty.getvalue().endswith("\n")  # a live line, redrawn in place

    ev = pb.Event(kind="reload-finished", message="restarted the app", duration_ms=12)
    stats.last_reload = describe_reload(ev)  # as the session does before reporting
    r.event(ev)
    shown = frames(tty.getvalue())
    assert shown[-2] == "reload-finished: restarted the app"
    assert "last reload: ok in 12 ms" in shown[-1] and "conflicts: 1" in shown[-1]

    ev = pb.Event(
        kind="reload-failed",
        message="step failed",
        reason="user-command-failed",
        exit_code=5,
        output_tail="building\nerror: boom\n",
    )
    stats.last_reload = describe_reload(ev)
    r.event(ev)
    shown = frames(tty.getvalue())
    assert shown[-4:] == [
        "reload-failed: step failed",
        "    building",
        "    error: boom",
        "connected · 2 file(s) synced · 4.00 MB sent · "
        "last reload: user-command-failed (exit 5) · conflicts: 1",
    ]


def test_not_a_terminal_gets_plain_lines_and_no_bar() -> None:
    out = io.StringIO()
    r = TerminalReporter(out, clock=Clock())
    r.round_started(two_files(), initial=True)
    r.progress(2, 4_000_000)
    r.round_finished(Stats(files_synced=2, bytes_sent=4_000_000, connected=True))
    assert "\r" not in out.getvalue() and "[" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        "initial sync: 2 change(s), 4.0 MB to send",
        "connected · 2 file(s) synced · 4.00 MB sent · last reload: - · conflicts: 0",
    ]


def big_plan(n: int = 10, size: int = 50_000_000) -> Plan:
    return Plan(
        changes=[
            Change(Action.WRITE, f"f{i}", Entry(f"f{i}", Kind.FILE, size, 0o644), None)
            for i in range(n)
        ]
    )


def visible(frame: str) -> str:
    """A frame without its colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", frame)


@pytest.mark.parametrize("columns", [60, 80, 40])
def test_the_bar_shows_rate_eta_and_fits_the_terminal(columns: int) -> None:
    tty, clock = FakeTTY(), Clock()
    r = TerminalReporter(tty, clock=clock, width=columns)
    r.round_started(big_plan(), initial=True)  # 500 MB
    for _ in range(16):  # 25 MB/s for 2 s
        clock.now += 0.125
        r.progress(1, 3_125_000)
    bar = frames(tty.getvalue())[-1]
    assert len(bar) < columns, bar
    assert "10.0%" in bar and "50.0/500.0 MB" in bar
    if columns >= 60:
        assert "25.0 MB/s" in bar and "ETA 18 s" in bar
        inner = bar[1 : bar.index("]")]
        assert len(inner) >= 10 and inner.count("#") == int(len(inner) * 0.1), bar
    # A full round at the terminal's width: nothing wraps.
    assert all(len(f) < columns for f in frames(tty.getvalue())[1:])


@pytest.mark.parametrize("columns", [60, 50, 30])
def test_the_status_line_fits_the_terminal(columns: int) -> None:
    tty = FakeTTY()
    r = TerminalReporter(tty, clock=Clock(), width=columns)
    stats = Stats(files_synced=12_345, bytes_sent=1_234_567_890, connected=True)
    stats.last_reload = "user-command-failed (exit 5)"
    stats.conflicts["a"] = "changed on both sides"
    stats.problems["l"] = "symlink target leaves the workspace"
    r.round_finished(stats)
    line = frames(tty.getvalue())[-1]
    assert len(line) < columns, line
    assert line.startswith("connected")
    assert "conflicts: 1" in line  # what needs a person goes last
    wide = TerminalReporter(FakeTTY(), clock=Clock(), width=200)
    wide.once = True
    wide.round_finished(stats)
    assert frames(wide.out.getvalue())[-1] == (  # type: ignore[attr-defined]
        "connected · 12345 file(s) synced · 1.23 GB sent · "
        "last reload: user-command-failed (exit 5) · conflicts: 1 · refused: 1"
    )


def test_human_units() -> None:
    from devstack.cli.connect import human_bytes, human_pair, human_seconds

    assert [human_bytes(n) for n in (0, 999, 1000, 4_000_000, 1_250_000_000)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "4.0 MB",
        "1.2 GB",
    ]
    assert human_bytes(4_000_000, 2) == "4.00 MB"
    assert human_pair(512, 900) == "512/900 B"
    assert human_pair(1_000_000, 4_000_000) == "1.0/4.0 MB"
    assert [human_seconds(s) for s in (0.4, 9, 65, 3725)] == [
        "0 s",
        "9 s",
        "1 min 05 s",
        "1 h 02 min",
    ]


class RealTTY(FakeTTY):
    """A terminal as far as colour goes (``wants_color`` asks the fd)."""

    def fileno(self) -> int:
        return 0


def test_colour_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.isatty", lambda fd: True)
    stats = Stats(connected=True)
    stats.conflicts["a"] = "x"
    coloured = TerminalReporter(RealTTY(), clock=Clock(), env={"TERM": "xterm"}, once=True)
    coloured.round_finished(stats)
    shown = coloured.out.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[32mconnected\x1b[0m" in shown and "\x1b[33mconflicts: 1\x1b[0m" in shown
    for env in ({"NO_COLOR": "1", "TERM": "xterm"}, {"TERM": "dumb"}):
        plain = TerminalReporter(RealTTY(), clock=Clock(), env=env, once=True)
        plain.round_finished(stats)
        out = plain.out.getvalue()  # type: ignore[attr-defined]
        assert visible(out) == out, env
    # Not a terminal: never colour, whatever is asked.
    piped = TerminalReporter(io.StringIO(), clock=Clock(), color=True, once=True)
    piped.round_finished(stats)
    assert "\x1b" not in piped.out.getvalue()  # type: ignore[attr-defined]


def retry(attempt: int, delay: float) -> object:
    from devstack.core.errors import UnreachableError
    from devstack.core.sync.retry import Retry

    err = UnreachableError("cannot reach the sidecar at 10.0.0.7:7070: connection refused")
    return Retry(delay, attempt, err)


def test_reconnecting_is_one_live_line_then_a_resync() -> None:
    tty = FakeTTY()
    r = TerminalReporter(tty, clock=Clock(), width=60)
    r.round_started(two_files(), initial=True)
    r.round_finished(Stats(files_synced=2, connected=True))
    before = tty.getvalue().count("\n")
    for attempt, delay in [(1, 0.2), (2, 0.4), (3, 0.8)]:
        r.reconnecting(retry(attempt, delay))  # type: ignore[arg-type]
    assert tty.getvalue().count("\n") == before  # redrawn in place, no new lines
    live = frames(tty.getvalue())[-1]
    assert live.startswith("reconnecting (attempt 3, next in 0.8 s)") and len(live) < 60
    r.round_started(Plan(), initial=True)
    assert frames(tty.getvalue())[-1] == "resync: 0 change(s), 0 B to send"

    out = io.StringIO()
    plain = TerminalReporter(out, clock=Clock())
    plain.round_started(two_files(), initial=True)
    plain.reconnecting(retry(1, 0.2))  # type: ignore[arg-type]
    plain.round_started(two_files(), initial=True)
    assert out.getvalue().splitlines() == [
        "initial sync: 2 change(s), 4.0 MB to send",
        "disconnected (cannot reach the sidecar at 10.0.0.7:7070: connection refused); "
        "reconnecting (attempt 1, next in 0.2 s)",
        "resync: 2 change(s), 4.0 MB to send",
    ]


def test_watching_tells_each_conflict_once_and_how_to_settle_them() -> None:
    out = io.StringIO()
    r = TerminalReporter(out, clock=Clock())
    r.conflict_hint = lambda paths: f"settle {len(paths)}: devstack conflicts web"
    stats = Stats(connected=True)
    stats.conflicts["config.yaml"] = "changed on the laptop and in the workspace"
    r.round_finished(stats)
    r.round_finished(stats)
    stats.conflicts["b.txt"] = "deleted on the laptop, changed in the workspace"
    r.round_finished(stats)
    lines = out.getvalue().splitlines()
    assert [ln for ln in lines if ln.startswith(("conflict:", "settle"))] == [
        "conflict: config.yaml: changed on the laptop and in the workspace",
        "settle 1: devstack conflicts web",
        "conflict: b.txt: deleted on the laptop, changed in the workspace",
    ]
    # A conflict the sidecar announced as an event is not told twice.
    r.event(pb.Event(kind="conflict", message="'c': changed", paths=["c"]))
    stats.conflicts["c"] = "'c': changed"
    r.round_finished(stats)
    assert (
        sum(ln.split(":")[1].strip() == "c" for ln in out.getvalue().splitlines() if ":" in ln) <= 1
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"first": "web", "second": None, "token_file": None}, "web"),
        ({"first": "web", "second": "services/web", "token_file": None}, "web --tree services/web"),
        (
            {"first": ".", "token_file": "tok", "to": "127.0.0.1:7070", "path": "."},
            "--to 127.0.0.1:7070 --token-file tok",
        ),
        (
            {"token_file": "my token", "to": "h:1", "path": "src"},
            "--to h:1 --token-file 'my token' --tree src",
        ),
    ],
)
def test_how_conflicts_and_resolve_name_the_sidecar(args: dict[str, str], words: str) -> None:
    """The hint ``connect`` prints names the sidecar as it was reached."""
    import argparse

    from devstack.cli.connect import sidecar_words

    assert sidecar_words(argparse.Namespace(**args)) == words
