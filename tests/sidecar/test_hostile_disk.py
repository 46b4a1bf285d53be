"""What a hostile client, or the app beside it, can leave on the disk: a
path as deep as the rules allow, a FIFO where a file was. Against a real
sidecar process: each is answered at once, every later session still gets
its manifest, and nothing outside the workspace changes."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from devstack.core.errors import UnsafePathError
from devstack.core.manifest import Entry, Kind, hash_bytes
from devstack.core.paths import MAX_PATH_BYTES
from devstack.core.protocol import entry_to_pb
from devstack.sidecar.workspace import Workspace, _DirCache
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.rawclient import (
    RawSession,
    copy_chunk,
    delta_op,
    mkdir_op,
    rename_op,
    status,
    write_op,
)
from tests.support.sync import Sidecar

TOKEN = "s3cret-token"
#: Seconds an answer may take on a loaded machine; a hang fails the test.
ANSWER_TIMEOUT = 60.0
T = TypeVar("T")


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    ws = tmp_path / "box" / "ws"
    ws.mkdir(parents=True)
    (tmp_path / "box" / "canary").write_text("outside")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


def outside(sidecar: Sidecar) -> dict[str, tuple[int, bytes]]:
    """What is beside the workspace: name -> (mode, content). Not a walk
    into the workspace, which may be deeper than an absolute path names."""
    return {
        p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
        for p in sidecar.workspace.parent.iterdir()
        if p.name != "ws"
    }


def answered(fn: Callable[[], T]) -> T:
    """``fn()``, failing the test instead of hanging if the sidecar never answers."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn).result(timeout=ANSWER_TIMEOUT)
    finally:
        pool.shutdown(wait=False)  # a hung call ends with the sidecar


def still_serves(sidecar: Sidecar, before: dict[str, tuple[int, bytes]]) -> None:
    assert outside(sidecar) == before
    assert answered(lambda: status(sidecar.address, TOKEN)).workspace == "ws"
    assert not any("Traceback" in line for line in sidecar.raw)


def deepest_path() -> tuple[list[str], str]:
    """Folders (outermost first) and a file in the last one, the file's path
    exactly ``MAX_PATH_BYTES`` long: deeper than the workspace's own path
    leaves room for, and than the scan keeps folder descriptors for."""
    names = ["d" * 9] * (MAX_PATH_BYTES // 10 - 1)
    folders = ["/".join(names[: i + 1]) for i in range(len(names))]
    file = folders[-1] + "/" + "f" * (MAX_PATH_BYTES - len(folders[-1]) - 1)
    assert len(file) == MAX_PATH_BYTES
    return folders, file


def test_a_file_at_the_deepest_allowed_path_reads_back_in_every_later_session(
    sidecar: Sidecar,
) -> None:
    before = outside(sidecar)
    folders, deep = deepest_path()
    assert len(os.fsencode(sidecar.workspace)) + 1 + len(deep) > MAX_PATH_BYTES
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, *(mkdir_op(f) for f in folders), write_op(deep, b"deep"), write_op(deep + "x", b""))
    ack = answered(lambda: s.commit(1))
    s.close()
    # One byte longer is refused up front, with one line.
    assert ack.applied == len(folders) + 1
    assert [(p.path, p.reason) for p in ack.problems] == [(deep + "x", "unsafe-path")]
    assert f"longer than {MAX_PATH_BYTES} bytes" in ack.problems[0].message
    for _ in range(2):  # every later session, not only the next
        again = answered(lambda: RawSession(sidecar.address, TOKEN))
        assert again.manifest[deep].digest == hash_bytes(b"deep")
        assert all(again.manifest[f].kind == pb.KIND_DIRECTORY for f in folders)
        again.close()
    # The workspace stays usable, the deep file included.
    s = answered(lambda: RawSession(sidecar.address, TOKEN))
    replace = write_op(deep, b"deeper")
    replace.expected_absent = False
    replace.expected.CopyFrom(s.manifest[deep])
    s.batch(2, replace, write_op("after", b"fine"))
    ack = answered(lambda: s.commit(2))
    s.close()
    assert (ack.applied, list(ack.problems)) == (2, [])
    assert (sidecar.workspace / "after").read_bytes() == b"fine"
    again = answered(lambda: RawSession(sidecar.address, TOKEN))
    assert again.manifest[deep].digest == hash_bytes(b"deeper")
    again.close()
    still_serves(sidecar, before)


def test_a_fifo_the_app_made_is_refused_at_once_and_the_sidecar_stops_on_sigterm(
    sidecar: Sidecar,
) -> None:
    before = outside(sidecar)
    os.mkfifo(sidecar.workspace / "p")  # the app's
    s = RawSession(sidecar.address, TOKEN)
    assert "p" not in s.manifest  # never synced
    s.send(pb.ClientMessage(signature_request=pb.SignatureRequest(path="p")))
    sig = answered(lambda: s.next_of("signature")).signature
    assert (sig.path, sig.digest, list(sig.blocks)) == ("p", b"", [])
    # A delta against it, and a whole write over it, as if it were a file.
    fake = entry_to_pb(Entry("p", Kind.FILE, 10, 0o644, hash_bytes(b"0123456789")))
    over = write_op("p", b"replaced")
    over.expected_absent = False
    over.expected.CopyFrom(fake)
    s.batch(1, delta_op("p", b"0123456789", fake))
    s.send(copy_chunk(1, 0, 0, 10))
    ack1 = answered(lambda: s.commit(1))
    s.batch(2, over)
    ack2 = answered(lambda: s.commit(2))
    assert [(p.path, p.reason, p.message) for p in ack1.problems] == [
        ("p", "bad-frame", "'p': delta base is not a regular file")
    ]
    assert [(p.path, p.reason) for p in ack2.problems] == [("p", "unsafe-path")]
    assert "fifo" in ack2.problems[0].message
    assert ack1.applied == ack2.applied == 0
    # The same session goes on: a later batch is applied.
    s.batch(3, write_op("after", b"fine"))
    assert answered(lambda: s.commit(3)).applied == 1
    s.close()
    assert (sidecar.workspace / "p").is_fifo()
    assert (sidecar.workspace / "after").read_bytes() == b"fine"
    still_serves(sidecar, before)
    assert sidecar.stop() == 0  # SIGTERM, not the kill after its timeout


def test_a_folder_move_that_would_put_its_content_too_deep_is_refused(
    sidecar: Sidecar,
) -> None:
    # Each path is allowed, but the folder's content would end up deeper than
    # any operation could name, and than the scan reads back.
    before = outside(sidecar)
    folders, _ = deepest_path()
    child = "x/" + "g" * 40
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, *(mkdir_op(f) for f in folders[:-1]), mkdir_op("x"), write_op(child, b"x"))
    assert answered(lambda: s.commit(1)).applied == len(folders) + 1
    moved = folders[-2] + "/x"
    assert len(moved) <= MAX_PATH_BYTES < len(moved) + len(child) - 1
    s.batch(2, rename_op("x", moved, entry_to_pb(Entry("x", Kind.DIRECTORY, 0, 0o755))))
    ack = answered(lambda: s.commit(2))
    s.close()
    again = answered(lambda: RawSession(sidecar.address, TOKEN))
    assert [(p.path, p.reason) for p in ack.problems] == [(moved, "unsafe-path")]
    assert "deeper than 4096 bytes" in ack.problems[0].message
    assert again.manifest[child].digest == hash_bytes(b"x")
    again.batch(1, write_op("after", b"fine"))
    assert answered(lambda: again.commit(1)).applied == 1
    again.close()
    still_serves(sidecar, before)


def test_a_fifo_swapped_in_after_the_stat_is_not_opened_for_a_blocking_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process: the window between looking at a path and opening it cannot
    # be hit from outside, so the look is made to see the regular file the
    # app had there before it put a FIFO in its place.
    ws = Workspace(tmp_path)
    (tmp_path / "was").write_bytes(b"a file")
    os.mkfifo(tmp_path / "p")
    real_stat = os.stat

    def stale_stat(path: object, *args: object, **kw: object) -> os.stat_result:
        return real_stat("was" if path == "p" else path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stale_stat)
    dirs = _DirCache(ws.root_fd)
    try:
        with pytest.raises(UnsafePathError, match="fifo"):
            answered(lambda: ws._current(dirs, "p"))
    finally:
        monkeypatch.undo()
        # A blocked reader (the bug) gets a writer and ends.
        os.close(os.open(tmp_path / "p", os.O_RDWR | os.O_NONBLOCK))
        dirs.close()
        ws.close()
