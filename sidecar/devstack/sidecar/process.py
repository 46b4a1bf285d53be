"""Child processes of the sidecar (process I/O), for hot reload and
``Exec``: the one way to start a command (its own session and process group,
no token in its environment, 126/127 when it cannot start), keeping the tail
of a child's output while passing it through to our own stdout/stderr,
killing a whole process group, finding a signal target in ``/proc``, and
waiting for a restarted app to be ready (an HTTP answer or a line of
output)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from devstack.core.exits import ExitInfo, spawn_failure
from devstack.core.protocol import TOKEN_ENV_VARS

TAIL_LINES = 40
TAIL_BYTES = 4096


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment plus ``extra``, minus every variable that leads to
    the sync token: no child ever sees it."""
    env = {**os.environ, **(extra or {})}
    for name in TOKEN_ENV_VARS:
        env.pop(name, None)
    return env


async def spawn(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process | ExitInfo:
    """Start ``argv`` (no shell) in ``cwd``, in its own session and process
    group, stdin from /dev/null, stdout and stderr piped, with
    ``child_env(env)``. If it cannot start, the ``ExitInfo`` a shell would
    report (its message does not name the program): 127 for a missing
    program, 126 for one that is not executable (including a script without
    a ``#!`` line)."""
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=child_env(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        return spawn_failure(e)


class Tail:
    """The last ``TAIL_LINES`` lines (at most ``TAIL_BYTES``) of some output."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def feed(self, data: bytes) -> None:
        self.lines.extend(data.decode(errors="replace").splitlines())

    def text(self) -> str:
        return "\n".join(self.lines)[-TAIL_BYTES:]


async def pump(
    stream: asyncio.StreamReader | None,
    tail: Tail,
    sink: BinaryIO | None,
    *,
    on_line: Callable[[bytes], None] | None = None,
) -> None:
    """Copy a child's output line by line to ``sink`` (our own stdout or
    stderr, so ``kubectl logs`` shows it), keep a tail, and show each line to
    ``on_line``. Lines longer than the stream limit are passed in pieces."""
    if stream is None:
        return
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            line = e.partial
        except asyncio.LimitOverrunError as e:
            line = await stream.readexactly(e.consumed)
        if not line:
            return
        tail.feed(line)
        if on_line is not None:
            on_line(line)
        if sink is not None:
            with contextlib.suppress(OSError, ValueError):
                sink.write(line)
                sink.flush()


def kill_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``, if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _is_zombie(proc_dir: str) -> bool:
    try:
        stat = Path(proc_dir, "stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def find_pid(*, pid_file: str | None, process_name: str | None) -> int | None:
    """The signal target: the pid in ``pid_file``, or the lowest pid whose
    ``/proc/PID/comm``, program or script name is ``process_name`` (other
    than ourselves). With ``shareProcessNamespace`` the app's processes are
    visible here."""
    if pid_file:
        try:
            pid = int(Path(pid_file).read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid
    if not process_name:
        return None
    me = os.getpid()
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names = {comm, *(os.path.basename(a.decode(errors="replace")) for a in argv[:2] if a)}
        if process_name in names and not _is_zombie(entry.path):
            found.append(int(entry.name))
    return min(found) if found else None


class ReadyLine:
    """Set once a line of the child's output matches a regular expression."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.seen = asyncio.Event()

    def __call__(self, line: bytes) -> None:
        if not self.seen.is_set() and self.pattern.search(line.decode(errors="replace")):
            self.seen.set()


#: The HTTP statuses a readiness probe accepts, as the kubelet's httpGet
#: probe does: 200 to 399.
READY_STATUSES = range(200, 400)


async def http_status(url: str, *, timeout: float = 2.0) -> int | None:
    """The HTTP status ``url`` (plain ``http://``, normally on 127.0.0.1)
    answers with, or None if it gives no HTTP answer."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        await writer.drain()
        first = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return parse_status_line(first)


def parse_status_line(line: bytes) -> int | None:
    """The status code of an HTTP/1.x status line, or None if it is not one."""
    m = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})(?:[ \r\n]|$)", line)
    return int(m.group(1)) if m else None


@dataclass
class Readiness:
    """What the probes saw while waiting: the last HTTP status (None: no
    answer yet)."""

    last_status: int | None = None
    answered: bool = False

    def describe(self, url: str | None) -> str:
        if url is None:
            return ""
        if not self.answered:
            return f"{url} never answered"
        return f"{url} last answered {self.last_status}"


async def wait_ready(
    child: asyncio.subprocess.Process,
    *,
    url: str | None,
    line: ReadyLine | None,
    timeout: float,
    seen: Readiness | None = None,
) -> str:
    """Wait until the child is ready: ``"ready"``, ``"exited"`` (it died
    first) or ``"timeout"``. Ready means every configured probe passed: the
    URL answers 200-399 (another status is not ready: the probe keeps
    trying), the line was printed. ``seen`` records what the URL answered."""
    seen = seen if seen is not None else Readiness()
    deadline = time.monotonic() + timeout
    url_ok = url is None
    while time.monotonic() < deadline:
        if child.returncode is not None:
            return "exited"
        if not url_ok and url is not None:
            status = await http_status(url)
            if status is not None:
                seen.answered, seen.last_status = True, status
            url_ok = status in READY_STATUSES
        if url_ok and (line is None or line.seen.is_set()):
            return "ready"
        if line is not None and url_ok:
            # Only the line is missing: wake as soon as it arrives.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(line.seen.wait(), min(0.1, timeout))
        else:
            await asyncio.sleep(0.005 if not seen.answered else 0.05)
    return "timeout"


async def stays_up(child: asyncio.subprocess.Process, seconds: float) -> bool:
    """Whether the child is still running ``seconds`` from now (False as
    soon as it exits)."""
    if seconds <= 0:
        return child.returncode is None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(child.wait()), seconds)
    return child.returncode is None
