"""The session stream end to end: `devstack connect`'s Syncer against a real
`devstack sidecar` process, the bytes counted on the wire by a TCP proxy
between them. Content repeated across files crosses once; an older sidecar
(one that does not choose the stream) still gets every file, through zlib."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.cli.syncer import Syncer, Target
from devstack.core.protocol import INLINE_MAX
from tests.support.sync import QuietReporter, Sidecar, tree_state
from tests.support.tcpproxy import TcpProxy


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    ws = tmp_path / "ws"
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


def repeated_tree(src: Path) -> int:
    """Files that repeat each other's content, as vendored copies and
    generated code do: 12 copies of one 40 KB piece of noise (small files,
    inline) and two copies of a 1.5 MB log (chunked). Returns its bytes."""
    noise = random.Random(7).randbytes(40_000)
    log = b"".join(b"%08d request handled in %d ms\n" % (i, i % 97) for i in range(45_000))
    assert len(log) > 3 * INLINE_MAX
    for i in range(12):
        (src / f"pkg{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"pkg{i % 3}" / f"vendored{i}.txt").write_bytes(noise)
    (src / "logs").mkdir()
    (src / "logs" / "a.log").write_bytes(log)
    (src / "logs" / "b.log").write_bytes(log)
    return 12 * len(noise) + 2 * len(log)


def sync_through_proxy(src: Path, sc: Sidecar, compress: str) -> tuple[Syncer, int]:
    proxy = TcpProxy(sc.port).start()
    try:
        syncer = Syncer(
            src,
            Target(proxy.address, "tok-123"),
            reporter=QuietReporter(),
            cache_path=src.parent / f"cache-{compress}",
            compress=compress,
        )
        assert asyncio.run(syncer.run(once=True)) == 0
        return syncer, proxy.sent
    finally:
        proxy.stop()


def test_content_repeated_across_files_crosses_the_wire_once(
    tmp_path: Path, sidecar: Sidecar
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    total = repeated_tree(src)
    syncer, wire = sync_through_proxy(src, sidecar, "auto")
    assert syncer.stream is not None
    assert tree_state(sidecar.workspace) == tree_state(src)
    # One copy of the noise (40 KB) and one compressed log, not 12 + 2.
    assert wire < 40_000 + 200_000 < total // 10, wire
    assert syncer.stats.bytes_sent < wire


def test_an_older_sidecar_gets_every_file_through_zlib(tmp_path: Path) -> None:
    """A sidecar that takes no stream (``--max-streams 0``) answers the
    client's offer with the Welcome an older sidecar sends (it never sets
    stream_compression): file by file zlib, as before."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "token").write_text("tok-123\n")
    older = Sidecar(ws, tmp_path / "token", "--max-streams", "0").start()
    src = tmp_path / "src"
    src.mkdir()
    total = repeated_tree(src)
    try:
        syncer, wire = sync_through_proxy(src, older, "auto")
    finally:
        older.stop()
    assert [e["stream"] for e in older.events("session.open")] == [False]
    assert syncer.stream is None
    assert tree_state(ws) == tree_state(src)
    # Each noise copy crosses whole (zlib cannot shrink it, nor see the
    # copy before), each log shrinks by itself.
    assert 12 * 40_000 < wire < total


def test_never_sends_every_byte_raw(tmp_path: Path, sidecar: Sidecar) -> None:
    src = tmp_path / "src"
    src.mkdir()
    total = repeated_tree(src)
    syncer, wire = sync_through_proxy(src, sidecar, "never")
    assert syncer.stream is None
    assert tree_state(sidecar.workspace) == tree_state(src)
    assert wire > total
