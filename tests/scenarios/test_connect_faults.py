"""A real `devstack connect` and a real `devstack sidecar` with toxiproxy
between them (tests/support/toxiproxy.py): a slow link, a connection reset
mid-batch, a link that stalls. Each time the same ``connect`` process
recovers, the trees end equal, no file is ever seen half-written, and the
sidecar wrote each file exactly once (nothing applied twice)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scenarios.test_connect import expected_state, landed
from tests.support.rawclient import status
from tests.support.sync import ConnectProcess, Sidecar, tree_state, wait_until
from tests.support.toxiproxy import Proxy, Toxiproxy, running_toxiproxy

NO_RESCAN = ("--rescan-interval", "100000")
#: Files of the tree, and their size: chunked (over 256 KiB), one per batch.
FILES, SIZE = 16, 512 * 1024


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Sidecar, Toxiproxy]]:
    src, ws = tmp_path / "src", tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    for i in range(FILES):
        (src / f"part{i:02}.bin").write_bytes(os.urandom(SIZE))
    (src / "small.txt").write_text("small\n")
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    sc = Sidecar(ws, token).start()
    try:
        with running_toxiproxy(tmp_path) as tp:
            yield src, sc, tp
    finally:
        sc.stop()


def same(src: Path, ws: Path) -> bool:
    try:
        return tree_state(ws) == expected_state(src)
    except FileNotFoundError:
        return False


def converged(proc: ConnectProcess, src: Path, sc: Sidecar, files: int) -> None:
    """The trees match, the same process is still running, and the sidecar
    wrote ``files`` files in all: nothing twice."""
    wait_until(lambda: same(src, sc.workspace), 120, f"the trees to match:\n{proc.stderr}")
    assert proc.proc.poll() is None, proc.stderr
    assert status(sc.address, "tok-123").files_written == files
    staging = sc.workspace / ".devstack" / "staging"
    wait_until(lambda: os.listdir(staging) == [], 30, "staging to be empty")
    assert proc.stop(signal.SIGINT) == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def start(src: Path, link: Proxy, sc: Sidecar) -> ConnectProcess:
    return ConnectProcess(src, f"127.0.0.1:{link.port}", sc.token_file, *NO_RESCAN)


def test_latency_initial_sync_and_a_reconnect_through_it(
    env: tuple[Path, Sidecar, Toxiproxy],
) -> None:
    """50 ms each way: the initial sync gets through; the link is cut and
    comes back, and the round after the reconnect is a resync that sends
    only what changed meanwhile."""
    src, sc, tp = env
    link = tp.proxy("sidecar", sc.address)
    link.toxic("latency", stream="upstream", latency=50)
    link.toxic("latency", stream="downstream", latency=50)
    proc = start(src, link, sc)
    try:
        wait_until(lambda: same(src, sc.workspace), 120, "the initial sync")
        link.enabled(False)
        wait_until(lambda: bool(proc.events("connect.retry")), 60, "connect to notice the cut")
        (src / "while-away.txt").write_text("written while the link was down\n")
        link.enabled(True)
        wait_until(lambda: any(ln.startswith("resync:") for ln in proc.lines), 60, "a resync")
        converged(proc, src, sc, FILES + 2)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
    assert any(ln.startswith("initial sync:") for ln in proc.lines)
    dropped = [ln for ln in proc.lines if ln.startswith("disconnected (")]
    assert dropped and "; reconnecting (attempt 1, next in 0.2 s)" in dropped[0], dropped


def test_a_connection_reset_mid_batch(env: tuple[Path, Sidecar, Toxiproxy]) -> None:
    """At 1 MB/s the sync takes seconds; once some files landed, every
    connection is reset (TCP RST) and new ones too, until connect noticed;
    then the link is back."""
    src, sc, tp = env
    link = tp.proxy("sidecar", sc.address)
    slow = link.toxic("bandwidth", stream="upstream", rate=1024)
    proc = start(src, link, sc)
    try:
        wait_until(lambda: len(list(sc.workspace.glob("part*.bin"))) >= 3, 120, "3 files")
        reset = link.toxic("reset_peer", stream="upstream", timeout=0)
        wait_until(lambda: bool(proc.events("connect.retry")), 60, "connect to notice the reset")
        assert len(landed(sc.workspace, src, "part*.bin")) < FILES  # mid-sync, none half
        link.remove(reset)
        link.remove(slow)
        converged(proc, src, sc, FILES + 1)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()


def test_a_stalled_link_that_comes_back_needs_no_reconnect(
    env: tuple[Path, Sidecar, Toxiproxy],
) -> None:
    """Mid-sync the link holds every byte for 3 s (a Wi-Fi roam, a VPN
    renegotiating), then delivers them: the session carries on where it
    was, with no reconnect."""
    src, sc, tp = env
    link = tp.proxy("sidecar", sc.address)
    slow = link.toxic("bandwidth", stream="upstream", rate=1024)
    proc = start(src, link, sc)
    try:
        wait_until(lambda: len(list(sc.workspace.glob("part*.bin"))) >= 3, 120, "3 files")
        stall = link.toxic("latency", stream="upstream", latency=3000)
        landed_then = len(landed(sc.workspace, src, "part*.bin"))
        with pytest.raises(AssertionError):  # nothing new gets through meanwhile
            wait_until(
                lambda: len(list(sc.workspace.glob("part*.bin"))) > landed_then + 2, 2, "more"
            )
        link.remove(stall)
        link.remove(slow)
        converged(proc, src, sc, FILES + 1)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
    assert not proc.events("connect.retry"), proc.stderr


def test_a_stalled_link_the_network_then_closes_reconnects(
    env: tuple[Path, Sidecar, Toxiproxy],
) -> None:
    """Mid-sync the link stalls and, 1.5 s later, the proxy closes it (as a
    NAT or a VPN gives up on a silent connection): connect reconnects and
    sends only what had not landed."""
    src, sc, tp = env
    link = tp.proxy("sidecar", sc.address)
    slow = link.toxic("bandwidth", stream="upstream", rate=1024)
    proc = start(src, link, sc)
    try:
        wait_until(lambda: len(list(sc.workspace.glob("part*.bin"))) >= 3, 120, "3 files")
        stall = link.toxic("timeout", stream="upstream", timeout=1500)
        wait_until(lambda: bool(proc.events("connect.retry")), 60, "connect to notice the close")
        assert len(landed(sc.workspace, src, "part*.bin")) < FILES
        link.remove(stall)
        link.remove(slow)
        converged(proc, src, sc, FILES + 1)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
