"""The client's send pipeline against a real `devstack sidecar` (a process
on loopback): the next batch is built while this one is sent, and a batch
that needs the sidecar's signature (a delta) waits until the one before it
is sent."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.cli import syncer as syncer_mod
from devstack.cli.syncer import Syncer, Target
from devstack.core.delta import DELTA_THRESHOLD
from devstack.core.manifest import hash_bytes
from devstack.core.plan import Plan
from devstack.core.protocol import INLINE_MAX
from devstack.core.sync.acks import Stats
from devstack.core.sync.batching import Limits
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.sync import QuietReporter, Sidecar, tree_state


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Sidecar]]:
    src = tmp_path / "src"
    ws = tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    sc = Sidecar(ws, token).start()
    yield src, sc
    sc.stop()


class _Timeline:
    """What the client did, in order: each batch built (by the paths it
    carries), and each message written to the stream."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        build = Syncer._build_batch
        send = syncer_mod._Session.send
        events = self.events

        async def traced_build(self: Syncer, session: Any, packed: Any) -> Any:
            first = packed.items[0][0].path
            events.append(("build", first))
            return await build(self, session, packed)

        async def traced_send(self: Any, msg: pb.ClientMessage) -> None:
            which = msg.WhichOneof("msg")
            if which == "batch":
                events.append(("batch", msg.batch.ops[0].entry.path))
            elif which == "commit":
                events.append(("commit", str(msg.commit.seq)))
            await send(self, msg)

        monkeypatch.setattr(Syncer, "_build_batch", traced_build)
        monkeypatch.setattr(syncer_mod._Session, "send", traced_send)

    def index(self, kind: str, what: str) -> int:
        return self.events.index((kind, what))


def _sync_once(src: Path, sc: Sidecar) -> Syncer:
    syncer = Syncer(
        src,
        Target(sc.address, "tok-123"),
        reporter=QuietReporter(),
        cache_path=src.parent / "cache-of-this-story",
        compress="never",
    )
    assert asyncio.run(syncer.run(once=True)) == 0
    return syncer


def test_the_next_batch_is_built_while_this_one_is_sent_and_a_delta_waits(
    env: tuple[Path, Sidecar], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, sc = env
    big = bytes(range(256)) * ((max(DELTA_THRESHOLD, INLINE_MAX) * 2) // 256)
    (src / "m-big.bin").write_bytes(big)
    _sync_once(src, sc)

    # Three small files a batch; the large file's older version is in the
    # workspace, so it goes as a delta, in a batch of its own, spread into
    # the middle of the small ones (``interleave``).
    monkeypatch.setattr(syncer_mod, "Limits", functools.partial(Limits, max_ops=3))
    for name in "abcdefghijkl":
        (src / f"{name}.txt").write_bytes(name.encode() * 1000)
    (src / "m-big.bin").write_bytes(big[:1000] + b"one edit" + big[1008:])
    for name in "nopqrs":
        (src / f"{name}.txt").write_bytes(name.encode() * 1000)
    timeline = _Timeline(monkeypatch)
    syncer = _sync_once(src, sc)

    assert tree_state(sc.workspace) == tree_state(src)
    # Only the edit and its neighbourhood travelled for the large file.
    assert syncer.stats.bytes_sent < 18 * 1000 + len(big) // 4
    at = timeline.index
    # Batch "d..." was built before batch "a..." was committed: ahead.
    assert at("build", "d.txt") < at("commit", "1")
    assert at("build", "g.txt") < at("commit", "2")
    # The delta's batch was built only once the batch before it was sent.
    assert at("build", "m-big.bin") > at("commit", "3")
    # Every batch went in order, each committed before the next opened.
    batches = [what for kind, what in timeline.events if kind == "batch"]
    assert batches == ["a.txt", "d.txt", "g.txt", "m-big.bin", "j.txt", "n.txt", "q.txt"]


def test_a_file_that_vanishes_from_a_batch_built_ahead_is_left_for_the_next_round(
    env: tuple[Path, Sidecar], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, sc = env
    monkeypatch.setattr(syncer_mod, "Limits", functools.partial(Limits, max_ops=2))
    for name in "abcdef":
        (src / f"{name}.txt").write_bytes(name.encode() * 100)
    read = syncer_mod._read_inline
    gone = src / "e.txt"

    def vanishing(root: str, entry: Any) -> Any:
        if entry.path == "c.txt" and gone.exists():
            os.unlink(gone)  # while batch "c, d" is built, "e" (ahead or next) vanishes
        return read(root, entry)

    monkeypatch.setattr(syncer_mod, "_read_inline", vanishing)
    _sync_once(src, sc)
    assert not (sc.workspace / "e.txt").exists()
    assert tree_state(sc.workspace) == tree_state(src)


class _Told:
    """What the reporter was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def round_started(self, plan: Plan, *, initial: bool) -> None:
        self.events.append(("started", len(plan.changes), plan.bytes_to_send()))

    def progress(self, files: int, nbytes: int) -> None:
        self.events.append(("progress", files, nbytes))

    def round_finished(self, stats: Stats) -> None:
        self.events.append(("finished", stats.files_synced, 0))

    def event(self, event: pb.Event) -> None: ...
    def note(self, text: str) -> None: ...


def _landed(workspace: Path, paths: list[str], timeout: float = 60) -> bool:
    """Whether any of ``paths`` appears in the workspace within ``timeout``
    (a scan paused in its ``emit`` waits for the sidecar with this)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any((workspace / p).exists() for p in paths):
            return True
        time.sleep(0.01)
    return False


def test_a_first_sync_into_an_empty_workspace_is_applied_while_the_scan_goes_on(
    env: tuple[Path, Sidecar], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, sc = env
    for i in range(12):
        folder = src / f"pkg{i:02d}"
        folder.mkdir()
        for j in range(5):
            (folder / f"m{j}.py").write_text(f"# {i} {j}\n" * 50)
    (src / "pkg00" / "big.bin").write_bytes(os.urandom(INLINE_MAX + 1))
    monkeypatch.setattr(syncer_mod, "Limits", functools.partial(Limits, max_ops=4))
    real_scan = syncer_mod.scan
    waited: list[bool] = []

    def scan_that_waits_for_the_sidecar(*args: Any, **kw: Any) -> Any:
        emit = kw["emit"]
        if emit is None:  # a later round's scan
            return real_scan(*args, **kw)
        first: list[str] = []

        def emitting(entries: list[Any]) -> None:
            emit(entries)
            if first:
                return
            # The first segment went out: the scan goes on only once the
            # sidecar applied some of it (a scan that must end before
            # anything is sent never gets there, and this times out).
            first.extend(e.path for e in entries)
            waited.append(_landed(sc.workspace, first))

        kw["emit"], kw["emit_every"] = emitting, 8
        return real_scan(*args, **kw)

    monkeypatch.setattr(syncer_mod, "scan", scan_that_waits_for_the_sidecar)
    told = _Told()
    syncer = Syncer(
        src,
        Target(sc.address, "tok-123"),
        reporter=told,
        cache_path=src.parent / "cache-of-this-story",
        compress="never",
    )
    assert asyncio.run(syncer.run(once=True)) == 0
    assert waited == [True], "nothing was applied before the scan ended"
    assert tree_state(sc.workspace) == tree_state(src)
    # The totals are told first (once the scan ended), every file sent is
    # counted once, and the round planned every entry.
    kind, changes, nbytes = told.events[0]
    assert (kind, changes) == ("started", 12 + 12 * 5 + 1)
    assert nbytes == sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    sent = [e for e in told.events if e[0] == "progress"]
    assert sum(files for _, files, _ in sent) == changes
    assert sum(b for _, _, b in sent) == nbytes
    assert syncer.stats.files_synced == 12 * 5 + 1


def test_a_large_file_the_first_scan_finds_goes_out_before_the_scan_ends(
    env: tuple[Path, Sidecar], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a slow link the large files are most of the time: they must not
    wait for the scan's end. The scan pauses once it has found the first
    large file, until that file is in the workspace (a feed that held large
    files until the scan's end never gets there, and this times out); every
    large file still goes after the folder it is in, and the small batches
    go between the large ones."""
    src, sc = env
    (src / "assets").mkdir()
    bigs = [f"assets/big{k}.bin" for k in range(3)]
    for path in bigs:
        (src / path).write_bytes(os.urandom(INLINE_MAX + 1))
    for i in range(10):
        folder = src / f"pkg{i:02d}"
        folder.mkdir()
        for j in range(4):
            (folder / f"m{j}.py").write_text(f"# {i} {j}\n" * 50)
    monkeypatch.setattr(syncer_mod, "Limits", functools.partial(Limits, max_ops=4))
    real_scan = syncer_mod.scan
    waited: list[bool] = []

    def scan_that_waits_for_a_large_file(*args: Any, **kw: Any) -> Any:
        emit = kw["emit"]
        if emit is None:
            return real_scan(*args, **kw)

        def emitting(entries: list[Any]) -> None:
            emit(entries)
            if waited or not any(e.path == bigs[0] for e in entries):
                return
            waited.append(_landed(sc.workspace, bigs[:1]))

        kw["emit"], kw["emit_every"] = emitting, 8
        return real_scan(*args, **kw)

    batches: list[list[str]] = []
    send = syncer_mod._Session.send

    async def traced_send(self: Any, msg: pb.ClientMessage) -> None:
        if msg.WhichOneof("msg") == "batch":
            batches.append([op.entry.path for op in msg.batch.ops])
        await send(self, msg)

    monkeypatch.setattr(syncer_mod, "scan", scan_that_waits_for_a_large_file)
    monkeypatch.setattr(syncer_mod._Session, "send", traced_send)
    syncer = _sync_once(src, sc)
    assert waited == [True], "no large file went out before the scan ended"
    assert tree_state(sc.workspace) == tree_state(src)
    assert syncer.stats.files_synced == 3 + 40
    order = [p for batch in batches for p in batch]
    # Each large file after its folder, and last in its batch (a large file
    # ends a batch), with small files between any two of them.
    at = sorted(next(k for k, b in enumerate(batches) if b[-1] == path) for path in bigs)
    for path in bigs:
        assert order.index("assets") < order.index(path)
    assert all(b - a > 1 or len(batches[b]) > 1 for a, b in itertools.pairwise(at)), batches


def test_a_first_sync_into_a_workspace_that_holds_something_plans_after_the_scan(
    env: tuple[Path, Sidecar], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, sc = env
    (sc.workspace / "there.txt").write_text("already")
    for i in range(20):
        (src / f"f{i}.txt").write_text(str(i))
    real_scan = syncer_mod.scan
    done: list[bool] = []

    def scan_then_mark(*args: Any, **kw: Any) -> Any:
        got = real_scan(*args, **kw)
        done.append(True)
        return got

    sent_before_scan_ended: list[bool] = []
    send = syncer_mod._Session.send

    async def traced_send(self: Any, msg: pb.ClientMessage) -> None:
        if msg.WhichOneof("msg") == "batch":
            sent_before_scan_ended.append(not done)
        await send(self, msg)

    monkeypatch.setattr(syncer_mod, "scan", scan_then_mark)
    monkeypatch.setattr(syncer_mod._Session, "send", traced_send)
    _sync_once(src, sc)
    assert sent_before_scan_ended and not any(sent_before_scan_ended)
    assert (sc.workspace / "f19.txt").read_text() == "19"


@pytest.mark.parametrize("welcomed_first", [False, True])
def test_the_first_scan_hashes_what_it_deferred_until_the_workspace_manifest_is_here(
    tmp_path: Path, welcomed_first: bool
) -> None:
    """While the sidecar hashes a seeded workspace, the laptop hashes the
    new files its scan left unhashed; once the manifest is here it stops
    (a first round into an empty workspace hashes them as it reads them)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * 20)
    syncer = Syncer(
        src, Target("127.0.0.1:1", "tok"), reporter=QuietReporter(), cache_path=tmp_path / "cache"
    )

    async def first_scan() -> None:
        segments = syncer_mod._Segments(asyncio.get_running_loop())
        welcomed = threading.Event()
        if welcomed_first:
            welcomed.set()
        await asyncio.to_thread(syncer._scan_and_hash_ahead, segments, welcomed)

    asyncio.run(first_scan())
    assert len(syncer._deferred) == 30  # the scan deferred every one
    hashed = {p: e.digest for p, e in syncer.local.items() if e.digest}
    if welcomed_first:
        assert hashed == {}
    else:
        assert hashed == {f"f{i}.txt": hash_bytes(f"file {i}\n".encode() * 20) for i in range(30)}
