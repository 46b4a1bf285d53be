"""What a person sees on a terminal: the progress bar of the initial sync,
then one live status line (files, bytes, last reload, conflicts)."""

from __future__ import annotations

import io
import re

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
