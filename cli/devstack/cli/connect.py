"""``devstack connect [PATH] --to ADDR --token-file FILE [--once]``: sync a
source tree to a sidecar, then keep it in sync; the terminal UI (progress
bar, live status line, the reconnecting line) lives here.

Exit codes: 0 in sync (or, while watching, stopped by Ctrl-C); 2 a clear
error (bad input, a refused token or workspace, an unreachable or failing
sidecar); under ``--once`` 3 conflicts or refused paths remain, 4 the tree
kept changing, 130 stopped by Ctrl-C before the trees matched; 143 stopped
by SIGTERM."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from devstack.cli.channel import add_target_arguments, load_token
from devstack.core.errors import PermanentError
from devstack.core.protocol import COMPRESS_MODES

if TYPE_CHECKING:
    from devstack.core.plan import Plan
    from devstack.core.sync.acks import Stats
    from devstack.core.sync.retry import Retry
    from devstack.sync.v1 import sync_pb2 as pb

#: Exit code of a ``connect`` stopped by SIGTERM (128 + 15).
EXIT_TERMINATED = 143


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default=".", help="source tree to sync (default: .)")
    add_target_arguments(parser)
    add_sync_arguments(parser)


def add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    """How to sync (everything but the tree and the sidecar's address and token)."""
    parser.add_argument(
        "--workspace",
        default=os.environ.get("DEVSTACK_WORKSPACE_NAME", ""),
        metavar="NAME",
        help="the workspace the sidecar must serve (its --name); refused if it serves another "
        "(env DEVSTACK_WORKSPACE_NAME; default: any)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="sync until the trees match, then exit 0 (3: conflicts or refused paths remain, "
        "each listed with its fix; 4: the tree kept changing; 130: Ctrl-C; 143: SIGTERM). "
        "Without it, connect keeps the trees in sync until Ctrl-C, and waits for a sidecar "
        "that restarts",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="on conflicts, take the laptop's side (overwrite files the app changed)",
    )
    parser.add_argument(
        "--debounce-ms", type=int, default=50, help="watcher debounce in ms (default 50)"
    )
    parser.add_argument(
        "--rescan-interval",
        type=float,
        default=30.0,
        help="full rescan every N idle seconds, a safety net for lost events (default 30)",
    )
    parser.add_argument(
        "--compress",
        choices=COMPRESS_MODES,
        default="auto",
        help="file content through the session's zstd stream (zlib with an older sidecar): "
        "auto compresses a large file only if its first 64 KiB shrink by 10%% (and never "
        "what its extension says is compressed already); always compresses every file; "
        "never sends raw bytes (default auto)",
    )


_UNITS = ("B", "kB", "MB", "GB", "TB")


def human_bytes(n: float, digits: int = 1) -> str:
    """``n`` bytes in decimal units: ``512 B``, ``4.0 MB``, ``1.25 GB``."""
    unit = 0
    while abs(n) >= 1000 and unit < len(_UNITS) - 1:
        n /= 1000
        unit += 1
    return f"{n:.0f} B" if unit == 0 else f"{n:.{digits}f} {_UNITS[unit]}"


def human_pair(done: float, total: float) -> str:
    """``1.0/4.0 MB``: both in the unit of ``total``."""
    unit, scale = 0, 1.0
    while total / scale >= 1000 and unit < len(_UNITS) - 1:
        scale *= 1000
        unit += 1
    if unit == 0:
        return f"{done:.0f}/{total:.0f} B"
    return f"{done / scale:.1f}/{total / scale:.1f} {_UNITS[unit]}"


def human_seconds(seconds: float) -> str:
    """``9 s``, ``1 min 05 s``, ``2 h 03 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def fit(
    parts: list[tuple[str, str]],
    width: int | None,
    *,
    sep: str = " · ",
    priority: list[int] | None = None,
) -> str:
    """Join ``(long, short)`` forms (in display order; an empty short form:
    leave the part out) into at most ``width`` characters (None: no limit).
    Long forms where they fit; then, least important first (``priority``:
    indices, most important first; default: display order), short forms,
    then parts left out; as a last resort the line is cut with an ellipsis."""
    order = list(range(len(parts))) if priority is None else priority
    forms = [long for long, _ in parts]

    def text() -> str:
        return sep.join(f for f in forms if f)

    if width is None or len(text()) <= width:
        return text()
    for i in reversed(order):
        forms[i] = parts[i][1]
        if len(text()) <= width:
            return text()
    for i in reversed(order[1:]):
        forms[i] = ""
        if len(text()) <= width:
            return text()
    return clip_line(text(), width)


def clip_line(text: str, width: int | None) -> str:
    if width is None or len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…"


def wants_color(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Colour only on a real terminal, and never with ``NO_COLOR`` set (to
    anything but the empty string) or ``TERM=dumb``."""
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False


class TerminalReporter:
    """What a person sees: the progress bar of a round with content to send
    (rate, ETA), one live status line, one live line while reconnecting; on
    a terminal each live line is redrawn in place and fits its width (down
    to 60 columns and less). Not on a terminal: plain lines, no bar, no
    colour. ``once``: conflicts are listed at the end (by ``connect``), not
    as they appear."""

    #: Seconds of history the transfer rate is measured over.
    RATE_WINDOW = 3.0

    def __init__(
        self,
        stream: TextIO = sys.stderr,
        *,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
        color: bool | None = None,
        once: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.out = stream
        self.clock = clock
        self.tty = stream.isatty()
        self._width = width
        env = os.environ if env is None else env
        self.color = self.tty and (wants_color(stream, env) if color is None else color)
        self.once = once
        #: How to list and settle conflicts (``devstack conflicts ...``) for
        #: the paths given; shown once, when the first conflicts appear.
        self.conflict_hint: Callable[[Collection[str]], str] | None = None
        self.total_bytes = 0
        self.total_files = 0
        self.sent_bytes = 0
        self.sent_files = 0
        self.initial = False
        self._sessions = 0
        self._bar = False
        self._samples: list[tuple[float, int]] = []
        self._last_draw: float | None = None
        #: What the live line shows now: "status", "bar", "reconnect" or "".
        self._live = ""
        self._told_conflicts: set[str] = set()
        self._hinted = False
        from devstack.core.sync.acks import Stats

        self._stats = Stats()

    # -------------------------------------------------------------- drawing

    def width(self) -> int | None:
        """Columns a live line may use (one less than the terminal's, so
        that it never wraps); None when there is no terminal to ask."""
        if self._width is not None:
            return max(1, self._width - 1)
        if not self.tty:
            return None
        try:
            return max(1, os.get_terminal_size(self.out.fileno()).columns - 1)
        except (OSError, ValueError, AttributeError):
            return None

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _line(self, text: str, *, final: bool = False) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def _live_line(self, text: str, kind: str) -> None:
        """Redraw the live line (on a terminal); a plain line otherwise."""
        self._live = kind if self.tty else ""
        self._line(text, final=not self.tty)

    def _final(self, text: str) -> None:
        """A line that stays; the live line, if one showed, comes back below it."""
        live = self._live
        self._live = ""
        self._line(text, final=True)
        if live == "status":
            self._status()

    # --------------------------------------------------------------- rounds

    def round_started(self, plan: Plan, *, initial: bool) -> None:
        self.initial = initial
        self.total_files = len(plan.changes)
        self.total_bytes = plan.bytes_to_send()
        self.sent_bytes = 0
        self.sent_files = 0
        self._samples = [(self.clock(), 0)]
        self._last_draw = None
        # A bar for the first round of a session, or any round with a lot to send.
        self._bar = bool(self.total_bytes) and (initial or self.total_bytes >= 10_000_000)
        if initial:
            self._sessions += 1
            label = "initial sync" if self._sessions == 1 else "resync"
            self._live = ""
            self._line(
                f"{label}: {self.total_files} change(s), "
                f"{human_bytes(self.total_bytes)} to send"
                + (f", {len(plan.conflicts)} conflict(s)" if plan.conflicts else ""),
                final=True,
            )

    def progress(self, files: int, nbytes: int) -> None:
        self.sent_bytes += nbytes
        self.sent_files += files
        if not (self.tty and self._bar):
            return
        now = self.clock()
        self._samples.append((now, self.sent_bytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.RATE_WINDOW:
            self._samples.pop(0)
        if self._last_draw is not None and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._live_line(self._bar_text(now), "bar")

    def rate(self, now: float) -> float | None:
        """Bytes per second over the last ``RATE_WINDOW`` seconds (None: too
        early to tell)."""
        t0, b0 = self._samples[0]
        if now - t0 < 0.2 or self.sent_bytes <= b0:
            return None
        return (self.sent_bytes - b0) / (now - t0)

    def _bar_text(self, now: float) -> str:
        total = self.total_bytes
        frac = min(1.0, self.sent_bytes / total)
        stats = [f"{frac * 100:5.1f}%", human_pair(min(self.sent_bytes, total), total)]
        rate = self.rate(now)
        if rate is not None:
            stats.append(f"{human_bytes(rate)}/s")
            if frac < 1:
                stats.append(f"ETA {human_seconds((total - self.sent_bytes) / rate)}")
        width = self.width()
        tail = "  ".join(stats)
        if width is None:
            bar_width = 30
        else:
            while len(stats) > 2 and width - len("  ".join(stats)) - 3 < 10:
                stats.pop()  # the ETA, then the rate: the bar and the sizes matter more
            tail = "  ".join(stats)
            bar_width = min(30, width - len(tail) - 3)
        if bar_width < 5:
            return clip_line(tail, width)
        bar = "#" * int(frac * bar_width)
        return clip_line(f"[{bar:<{bar_width}}] {tail}", width)

    def round_finished(self, stats: Stats) -> None:
        self._stats = stats
        self._bar = False
        if not self.once:
            self._tell_conflicts(stats)
        self._status()

    def _tell_conflicts(self, stats: Stats) -> None:
        """Each conflict once, as it appears, and how to settle them once
        (again after all were settled and new ones came)."""
        self._told_conflicts &= stats.conflicts.keys()  # a settled path may conflict again
        if not stats.conflicts:
            self._hinted = False
        new = sorted(p for p in stats.conflicts if p not in self._told_conflicts)
        if not new:
            return
        self._told_conflicts.update(new)
        for path in new[:10]:
            self._final(f"conflict: {path}: {stats.conflicts[path]}")
        if len(new) > 10:
            self._final(f"... and {len(new) - 10} more conflict(s)")
        if self.conflict_hint is not None and not self._hinted:
            self._hinted = True
            self._final(self.conflict_hint(stats.conflicts))

    def _status(self) -> None:
        s = self._stats
        state = "connected" if s.connected else "disconnected"
        files = f"{s.files_synced} file(s) synced"
        sent = human_bytes(s.bytes_sent, 2)
        reload = s.last_reload or "-"
        parts = [
            (state, state),
            (files, f"{s.files_synced} files"),
            (f"{sent} sent", f"{sent} sent"),
            (f"last reload: {reload}", f"reload: {reload}"),
            (f"conflicts: {len(s.conflicts)}", f"conflicts: {len(s.conflicts)}"),
        ]
        if s.problems:
            parts.append((f"refused: {len(s.problems)}", f"refused: {len(s.problems)}"))
        # What ``fit`` shortens or leaves out last: the state, then what
        # needs a person (conflicts, refusals), the last reload, the counters.
        line = fit(parts, self.width(), priority=[0, *range(4, len(parts)), 3, 1, 2])
        line = line.replace(state, self._paint(state, "32" if s.connected else "31"), 1)
        if s.conflicts:
            c = f"conflicts: {len(s.conflicts)}"
            line = line.replace(c, self._paint(c, "33"), 1)
        self._live_line(line, "status")

    # --------------------------------------------------------------- events

    def reconnecting(self, retry: Retry) -> None:
        """One live line while the sidecar is away (a plain line each attempt
        when not on a terminal)."""
        self._stats.connected = False
        if not self.tty:
            self._line(retry.line)
            return
        text = fit([(retry.live, retry.live), (str(retry.error), "")], self.width(), sep=": ")
        painted = text.replace("reconnecting", self._paint("reconnecting", "33"), 1)
        self._live_line(painted, "reconnect")

    def event(self, event: pb.Event) -> None:
        if event.kind == "applied":
            return
        if event.kind == "conflict":
            self._told_conflicts.update(event.paths)
        text = f"{event.kind}: {event.message}"
        if event.kind in ("reload-failed", "process-exited") and event.output_tail:
            tail = event.output_tail.rstrip().splitlines()[-10:]
            text += "\n    " + "\n    ".join(tail)
        self._live = ""
        self._line(text, final=True)
        if event.kind.startswith("reload") or event.kind == "process-exited":
            self._status()

    def note(self, text: str) -> None:
        self._final(text)


def run(args: argparse.Namespace) -> int:
    return sync(args, load_token(args.token_file))


def sidecar_words(args: argparse.Namespace) -> str:
    """How ``devstack conflicts`` and ``resolve`` name the sidecar ``args``
    reach: the service (plus ``--tree DIR`` when PATH was given), or
    ``--to HOST:PORT --token-file FILE`` (plus ``--tree DIR`` unless ``.``)."""
    service = None if getattr(args, "token_file", None) else getattr(args, "first", None)
    if service:
        tree = getattr(args, "second", None)
        return shlex.quote(service) + (f" --tree {shlex.quote(tree)}" if tree else "")
    words = f"--to {shlex.quote(args.to)} --token-file {shlex.quote(args.token_file or '')}"
    path = str(args.path)
    return words + (f" --tree {shlex.quote(path)}" if path != "." else "")


def sync(args: argparse.Namespace, token: str) -> int:
    """Sync ``args.path`` to the sidecar at ``args.to`` (``args.authority``,
    ``args.tls``) with ``token``. Ctrl-C and SIGTERM stop it at once, in
    whatever state (connecting, backing off, mid-batch, watching)."""
    import signal

    # Until the event loop takes over: SIGTERM exits 143 (Ctrl-C raises
    # KeyboardInterrupt, which the CLI edge turns into 130), no traceback.
    signal.signal(signal.SIGTERM, _terminated)

    # Imported here, not at the top: ``connect --help`` needs none of it.
    import asyncio
    import gc

    from devstack.cli.syncer import EXIT_INTERRUPTED, Syncer, Target
    from devstack.core import logging as dlog

    dlog.configure(level=os.environ.get("DEVSTACK_LOG_LEVEL", "warning"))
    if args.once:
        # A run that ends: the cyclic collector would only walk the
        # manifests' entries (hundreds of thousands of them, which hold no
        # cycles) again and again. Reference counting frees the rest.
        gc.disable()
    root = Path(args.path)
    if not root.exists():
        raise PermanentError(f"{root} does not exist")
    if not root.is_dir():
        raise PermanentError(f"{root} is not a directory")
    target = Target(
        args.to, token, authority=args.authority, tls=args.tls, workspace=args.workspace
    )
    from devstack.cli.conflicts import resolve_hint

    where = sidecar_words(args)
    reporter = TerminalReporter(once=args.once)
    reporter.conflict_hint = lambda paths: resolve_hint(paths, where=where)
    syncer = Syncer(
        root,
        target,
        reporter=reporter,
        force=args.force,
        debounce_ms=args.debounce_ms,
        rescan_interval=args.rescan_interval,
        compress=args.compress,
    )
    signals: list[int] = []

    def stop(sig: int) -> None:
        if signals:  # a second Ctrl-C: whatever is still running, go now
            sys.stderr.flush()
            os._exit(_signal_exit(sig, once=args.once))
        signals.append(sig)
        syncer.stop()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        return await syncer.run(once=args.once)

    code = asyncio.run(main())
    if syncer.stopped:
        code = _signal_exit(signals[0] if signals else signal.SIGINT, once=args.once)
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED) and args.once:
        reporter.note("interrupted before the trees matched")
    elif not args.once:
        reporter.note("disconnected")
    elif syncer.stats.conflicts:
        reporter.note(resolve_hint(syncer.stats.conflicts, where=where))
    if syncer.stopped:
        # A signal means now: what matters (the digest cache) was saved, and
        # the interpreter's own teardown (grpc's shutdown, joining worker
        # threads still reading a file) would add a few hundred ms.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if args.once:
        # Done, and the digest cache saved: the console script may end the
        # process without the interpreter's teardown (a caller's context
        # managers, such as the copy's heartbeat, still exit first).
        from devstack.cli import main as cli_main

        cli_main.skip_teardown = True
    return int(code)


def _signal_exit(sig: int, *, once: bool) -> int:
    """The exit code of a run a signal stopped: 143 for SIGTERM; for Ctrl-C,
    130 under ``--once`` (the trees may not match) and 0 while watching
    (Ctrl-C is how watching ends)."""
    import signal

    if sig == signal.SIGTERM:
        return EXIT_TERMINATED
    return 130 if once else 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_TERMINATED)
