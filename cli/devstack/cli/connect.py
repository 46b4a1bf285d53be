"""``devstack connect [PATH] --to ADDR --token-file FILE [--once]``: sync a
source tree to a sidecar, then keep it in sync; the terminal UI (progress
bar, live status line) lives here.

Exit codes: 0 in sync (or, while watching, stopped by Ctrl-C/SIGTERM); 2 a
clear error (bad input, a refused token or workspace, an unreachable or
failing sidecar); under ``--once`` 3 conflicts or rejected paths remain,
4 the tree kept changing, 130 stopped by Ctrl-C/SIGTERM before the trees
matched."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from devstack.cli.channel import add_target_arguments, load_token
from devstack.core.errors import PermanentError
from devstack.core.protocol import COMPRESS_MODES

if TYPE_CHECKING:
    from devstack.cli.syncer import Stats
    from devstack.core.plan import Plan
    from devstack.sync.v1 import sync_pb2 as pb


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
        help="sync until the trees match, then exit 0 (3: conflicts or rejected paths remain; "
        "4: the tree kept changing; 130: interrupted)",
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
        help="zlib for file content: auto compresses a file only if its first 64 KiB shrink "
        "by 10%% (and never what its extension says is compressed already); always tries "
        "every file; never sends raw bytes (default auto)",
    )


class TerminalReporter:
    """A progress bar for the initial sync, then one live status line on a
    terminal; plain lines otherwise."""

    def __init__(
        self, stream: TextIO = sys.stderr, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.out = stream
        self.clock = clock
        self.tty = stream.isatty()
        self.total_bytes = 0
        self.total_files = 0
        self.sent_bytes = 0
        self.initial = False
        self._last_draw: float | None = None
        from devstack.cli.syncer import Stats

        self._stats = Stats()

    def _line(self, text: str, *, final: bool = False) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def round_started(self, plan: Plan, *, initial: bool) -> None:
        self.initial = initial
        self.total_files = len(plan.changes)
        self.total_bytes = plan.bytes_to_send()
        self.sent_bytes = 0
        if initial:
            self._line(
                f"initial sync: {self.total_files} change(s), "
                f"{self.total_bytes / 1e6:.1f} MB to send"
                + (f", {len(plan.conflicts)} conflict(s)" if plan.conflicts else ""),
                final=True,
            )

    def progress(self, files: int, nbytes: int) -> None:
        self.sent_bytes += nbytes
        if not (self.tty and self.initial and self.total_bytes):
            return
        now = self.clock()
        if self._last_draw is not None and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        frac = min(1.0, self.sent_bytes / self.total_bytes)
        bar = "#" * int(frac * 30)
        self._line(
            f"[{bar:<30}] {frac * 100:5.1f}%  "
            f"{self.sent_bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB"
        )

    def round_finished(self, stats: Stats) -> None:
        self._stats = stats
        self._status(final=not self.tty)

    def _status(self, *, final: bool = False) -> None:
        s = self._stats
        parts = [
            "connected" if s.connected else "disconnected",
            f"{s.files_synced} file(s) synced",
            f"{s.bytes_sent / 1e6:.2f} MB sent",
            f"last reload: {s.last_reload or '-'}",
            f"conflicts: {len(s.conflicts)}",
        ]
        self._line(" · ".join(parts), final=final)

    def event(self, event: pb.Event) -> None:
        if event.kind == "applied":
            return
        text = f"{event.kind}: {event.message}"
        if event.kind in ("reload-failed", "process-exited") and event.output_tail:
            tail = event.output_tail.rstrip().splitlines()[-10:]
            text += "\n    " + "\n    ".join(tail)
        self._line(text, final=True)
        if event.kind.startswith("reload") or event.kind == "process-exited":
            self._status(final=not self.tty)

    def note(self, text: str) -> None:
        self._line(text, final=True)


def run(args: argparse.Namespace) -> int:
    return sync(args, load_token(args.token_file))


def sync(args: argparse.Namespace, token: str) -> int:
    """Sync ``args.path`` to the sidecar at ``args.to`` (``args.authority``,
    ``args.tls``) with ``token``."""
    # Imported here, not at the top: ``connect --help`` needs none of it.
    import asyncio
    import gc
    import signal

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
    reporter = TerminalReporter()
    syncer = Syncer(
        root,
        target,
        reporter=reporter,
        force=args.force,
        debounce_ms=args.debounce_ms,
        rescan_interval=args.rescan_interval,
        compress=args.compress,
    )

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, syncer.stop)
        return await syncer.run(once=args.once)

    code = asyncio.run(main())
    if code == EXIT_INTERRUPTED:
        reporter.note("interrupted before the trees matched")
    elif not args.once:
        reporter.note("disconnected")
    return int(code)
