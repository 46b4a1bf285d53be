"""SIGTERM and Ctrl-C stop a real `devstack connect` process at once, in
every state it can be in: dialing a sidecar that does not answer, scanning
(hashing a large file), backing off between reconnects to a stopped
sidecar, mid-batch (its chunks crawling through a slow toxiproxy link), and
watching an idle tree. Exit 143 for SIGTERM; for Ctrl-C 130 under
``--once`` and 0 while watching; never a traceback.

``STOP_BOUND`` is a bound, not a benchmark: generous for a loaded 2-core
machine, yet far below what any wait inside ``connect`` would take (a 10 s
connect timeout, seconds of hashing, a 1.6 s backoff, seconds of chunks
still to send).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.sync import ConnectProcess, Sidecar, wait_until
from tests.support.toxiproxy import Toxiproxy, running_toxiproxy

#: Seconds from the signal to the process's exit.
STOP_BOUND = 1.0
NO_RESCAN = ("--rescan-interval", "100000")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Sidecar]]:
    src, ws = tmp_path / "src", tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    (src / "a.txt").write_text("a\n")
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    sc = Sidecar(ws, token).start()
    yield src, sc
    sc.stop()


def stop_and_time(proc: ConnectProcess, sig: int) -> tuple[int, float]:
    """Send ``sig``; the exit code and the seconds until the process ended."""
    assert proc.proc.poll() is None, f"connect ended before the signal:\n{proc.stderr}"
    sent = time.monotonic()
    proc.proc.send_signal(sig)
    code = proc.proc.wait(30)
    took = time.monotonic() - sent
    proc._drained.wait(10)
    assert "Traceback" not in proc.stderr, proc.stderr
    return code, took


def dialing(src: Path, sc: Sidecar, *extra: str) -> tuple[ConnectProcess, Callable[[], None]]:
    """A ``connect`` dialing an address that accepts TCP connections and
    never answers (a listening socket nobody accepts on: the kernel
    completes the handshake, gRPC waits for the server's settings)."""
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    port = mute.getsockname()[1]
    proc = ConnectProcess(src, f"127.0.0.1:{port}", sc.token_file, *extra)
    wait_until(lambda: bool(proc.events("connect.dial")), 60, "connect to dial")
    time.sleep(0.3)  # well inside its 10 s connect timeout: still dialing
    assert not proc.events("connect.retry"), proc.stderr
    return proc, mute.close


def scanning(src: Path, sc: Sidecar, *extra: str) -> tuple[ConnectProcess, Callable[[], None]]:
    """A ``connect`` that reached the sidecar and is hashing a large file the
    cache does not know (8 GB, sparse: seconds of reading zeros)."""
    with (src / "huge.img").open("wb") as f:
        f.truncate(8 * 1024**3)
    proc = ConnectProcess(src, sc.address, sc.token_file, *NO_RESCAN, *extra)
    wait_until(lambda: bool(proc.events("connect.dial")), 60, "connect to dial")
    time.sleep(0.5)
    assert not any("initial sync" in ln for ln in proc.lines), "the scan was done already"
    return proc, lambda: None


def backing_off(src: Path, sc: Sidecar, *extra: str) -> tuple[ConnectProcess, Callable[[], None]]:
    """A watching ``connect`` whose sidecar stopped: it reconnects with
    backoff (0.2, 0.4, 0.8, 1.6 s, ...); stopped during the 1.6 s wait."""
    proc = ConnectProcess(src, sc.address, sc.token_file, *NO_RESCAN, *extra)
    wait_until(lambda: (sc.workspace / "a.txt").exists(), 60, "the initial sync")
    sc.stop()
    wait_until(lambda: len(proc.events("connect.retry")) >= 4, 60, "4 failed reconnects")
    retry = proc.events("connect.retry")[-1]
    assert retry["delay"] == pytest.approx(1.6), retry
    assert retry["failure"] == "connection-refused", retry  # known at once, no 10 s timeout
    return proc, lambda: None


def mid_batch(
    src: Path, sc: Sidecar, tp: Toxiproxy, *extra: str
) -> tuple[ConnectProcess, Callable[[], None]]:
    """A ``connect`` sending 12 MB through a link of 1 MB/s: stopped once
    the first files landed, with most of its chunks still to send."""
    for i in range(12):
        (src / f"big{i:02}.bin").write_bytes(os.urandom(1024 * 1024))
    link = tp.proxy("sidecar", sc.address)
    link.toxic("bandwidth", stream="upstream", rate=1024)
    proc = ConnectProcess(src, f"127.0.0.1:{link.port}", sc.token_file, *extra)
    wait_until(lambda: any(sc.workspace.glob("big*.bin")), 60, "the first file to land")
    return proc, lambda: None


def watching(src: Path, sc: Sidecar, *extra: str) -> tuple[ConnectProcess, Callable[[], None]]:
    proc = ConnectProcess(src, sc.address, sc.token_file, *NO_RESCAN, *extra)
    wait_until(lambda: (sc.workspace / "a.txt").exists(), 60, "the initial sync")
    wait_until(lambda: any("connected ·" in ln for ln in proc.lines), 30, "the status line")
    return proc, lambda: None


@pytest.mark.parametrize(
    ("state", "sig", "once", "code"),
    [
        ("dialing", signal.SIGTERM, False, 143),
        ("dialing", signal.SIGINT, True, 130),
        ("scanning", signal.SIGTERM, False, 143),
        ("scanning", signal.SIGINT, True, 130),
        ("backing-off", signal.SIGTERM, False, 143),
        ("backing-off", signal.SIGINT, False, 0),
        ("mid-batch", signal.SIGTERM, False, 143),
        ("mid-batch", signal.SIGTERM, True, 143),
        ("mid-batch", signal.SIGINT, True, 130),
        ("watching", signal.SIGTERM, False, 143),
        ("watching", signal.SIGINT, False, 0),
    ],
)
def test_a_signal_stops_connect_at_once_in_every_state(
    env: tuple[Path, Sidecar],
    tmp_path: Path,
    state: str,
    sig: int,
    once: bool,
    code: int,
) -> None:
    src, sc = env
    extra = ("--once",) if once else ()
    if state == "mid-batch":
        with running_toxiproxy(tmp_path) as tp:
            proc, cleanup = mid_batch(src, sc, tp, *extra)
            got, took = stop_and_time(proc, sig)
            assert len(list(sc.workspace.glob("big*.bin"))) < 12, "it finished before the signal"
    else:
        start = {
            "dialing": dialing,
            "scanning": scanning,
            "backing-off": backing_off,
            "watching": watching,
        }[state]
        proc, cleanup = start(src, sc, *extra)
        try:
            got, took = stop_and_time(proc, sig)
        finally:
            cleanup()
    print(f"{state} signal {sig} once={once}: exit {got} after {took:.3f} s")
    assert got == code, proc.stderr
    assert took < STOP_BOUND, f"{state}: exited {took:.2f} s after the signal"
    if once:
        assert "interrupted before the trees matched" in proc.stderr
