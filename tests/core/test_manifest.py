import concurrent.futures
import gc
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devstack.core import ignore
from devstack.core.manifest import (
    HELD_FOLDERS_MAX,
    DigestCache,
    Entry,
    Kind,
    Skipped,
    SyncState,
    gc_paused,
    hash_bytes,
    hash_file,
    make_entry,
    open_regular,
    scan,
    stat_key,
)
from devstack.core.paths import MAX_PATH_BYTES

T = TypeVar("T")


def _scan(root: Path, cache: DigestCache | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return scan(
        root, rules=ignore.load(root), cache=cache if cache is not None else DigestCache(), **kw
    )  # type: ignore[arg-type]


def test_scan_records_every_kind(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f.txt").write_bytes(b"abc")
    (tmp_path / "x.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "x.sh", 0o755)
    os.symlink("d/f.txt", tmp_path / "link")
    os.mkfifo(tmp_path / "pipe")
    skipped: list = []
    m = _scan(tmp_path, skipped=skipped)
    assert m["d"].kind == Kind.DIRECTORY
    assert m["d/e"].kind == Kind.DIRECTORY
    assert m["d/f.txt"].digest == hash_bytes(b"abc")
    assert m["d/f.txt"].size == 3
    assert m["x.sh"].mode == 0o755
    assert m["link"].kind == Kind.SYMLINK and m["link"].target == "d/f.txt"
    assert "pipe" not in m
    assert [s.path for s in skipped] == ["pipe"]


def test_ignored_and_reserved_are_left_out(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / ".devstack").mkdir()
    (tmp_path / "a.pyc").write_bytes(b"x")
    (tmp_path / "a.py").write_bytes(b"x")
    assert set(_scan(tmp_path)) == {"a.py"}


def test_cache_avoids_rehash_and_notices_change(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"one")
    cache = DigestCache()
    first = _scan(tmp_path, cache)["f"].digest
    # Poison the cache entry: a hit must be served from it, proving no rehash.
    key = next(iter(cache._entries.values()))[0]
    cache.put("f", key, b"\x00" * 16)
    assert _scan(tmp_path, cache)["f"].digest == b"\x00" * 16
    f.write_bytes(b"two!")
    assert _scan(tmp_path, cache)["f"].digest == hash_bytes(b"two!") != first


def test_cache_persists(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"one")
    cache = DigestCache()
    _scan(tmp_path / "src", cache)
    cache.save(tmp_path / "c.json")
    again = DigestCache.load(tmp_path / "c.json")
    assert len(again) == 1
    assert DigestCache.load(tmp_path / "missing.json").__len__() == 0
    (tmp_path / "bad.json").write_text("{not json")
    assert len(DigestCache.load(tmp_path / "bad.json")) == 0


def test_subtree_scan(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_text("c")
    (tmp_path / "z").write_text("z")
    assert set(_scan(tmp_path, under="a")) == {"a", "a/b", "a/b/c"}
    assert set(_scan(tmp_path, under="z")) == {"z"}
    assert _scan(tmp_path, under="missing") == {}


def test_cache_round_trips_in_its_binary_format(tmp_path: Path) -> None:
    cache = DigestCache()
    cache.put("a/名前 ü.txt", (3, -5_000_000_000, 17, 2**64 - 1), b"\x01" * 16)
    cache.put("b", (0, 1, 2, 3), hash_bytes(b""))
    cache.save(tmp_path / "c")
    assert (tmp_path / "c").read_bytes().startswith(b"dsdc")
    again = DigestCache.load(tmp_path / "c")
    assert again._entries == cache._entries and not again.dirty
    assert set(again) == {"a/名前 ü.txt", "b"}


def test_cache_reads_the_json_of_version_1_and_writes_it_anew(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text('{"version": 1, "entries": {"f": [3, 10, 11, 12, "' + "ab" * 16 + '"]}}')
    cache = DigestCache.load(old)
    assert cache.get("f", (3, 10, 11, 12)) == b"\xab" * 16
    assert cache.dirty  # so the next save writes the binary format


@pytest.mark.parametrize("damage", ["torn", "version", "counts", "garbage"])
def test_a_damaged_cache_is_an_empty_one(tmp_path: Path, damage: str) -> None:
    cache = DigestCache()
    for i in range(5):
        cache.put(f"f{i}", (i, i, i, i), bytes([i]) * 16)
    cache.save(tmp_path / "c")
    data = bytearray((tmp_path / "c").read_bytes())
    if damage == "torn":
        data = data[:-7]
    elif damage == "version":
        data[4] = 99
    elif damage == "counts":
        data[8] = 4  # four entries announced, five written
    else:
        data = bytearray(b"dsdc" + os.urandom(60))
    (tmp_path / "c").write_bytes(bytes(data))
    assert len(DigestCache.load(tmp_path / "c")) == 0


def test_scan_collects_the_nested_gitignores_it_applied(tmp_path: Path) -> None:
    (tmp_path / "web" / "dist").mkdir(parents=True)
    (tmp_path / "web" / ".gitignore").write_text("dist/\n")
    (tmp_path / "web" / "dist" / "x.js").write_text("x")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / ".gitignore").write_text("# only a comment\n")
    nested: dict[str, tuple[str, ...]] = {}
    m = _scan(tmp_path, nested=nested)
    assert "web/dist" not in m and "web/.gitignore" in m
    assert nested == {"web": ("dist/",), "api": ("# only a comment",)}


def test_scan_can_defer_hashing_new_small_files(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"s" * 10)
    (tmp_path / "big").write_bytes(b"b" * 100)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "known").write_bytes(b"k" * 10)
    cache = DigestCache()
    _scan(tmp_path, cache, under="known")  # the cache knows this one
    deferred: list[str] = []
    m = _scan(tmp_path, cache, deferred=deferred, defer_max=50)
    assert deferred == ["small"]
    assert m["small"].digest == b"" and m["small"].size == 10
    assert m["big"].digest == hash_bytes(b"b" * 100)
    assert m["empty"].digest == hash_bytes(b"")
    assert m["known"].digest == hash_bytes(b"k" * 10)
    assert cache.get("small", stat_key(os.lstat(tmp_path / "small"))) is None


@pytest.mark.parametrize("every", [1, 7, 10_000])
def test_scan_emits_every_entry_once_as_it_goes_each_folder_before_its_content(
    tmp_path: Path, every: int
) -> None:
    for i in range(6):
        folder = tmp_path / f"d{i}" / "inner"
        folder.mkdir(parents=True)
        for j in range(4):
            (folder / f"f{j}.txt").write_text(f"{i}{j}")
        (tmp_path / f"d{i}" / "top.txt").write_text("t")
    (tmp_path / "d0" / "link").symlink_to("top.txt")
    (tmp_path / "d1" / ".gitignore").write_text("inner/\n")
    segments: list[list[Entry]] = []
    into: dict[str, Entry] = {}
    m = _scan(tmp_path, into=into, emit=segments.append, emit_every=every)
    assert m is into
    emitted = [e for seg in segments for e in seg]
    assert [e.path for e in emitted] == list(m)  # each once, in the order found
    assert emitted == list(m.values())
    assert "d1/inner" not in m and "d0/link" in m  # the scan's rules hold for what it emits
    seen: set[str] = set()
    for e in emitted:
        parent = e.path.rpartition("/")[0]
        assert not parent or parent in seen, f"{e.path} went out before its folder"
        seen.add(e.path)
    # A segment goes out once ``every`` entries gathered (after a folder's
    # listing), the rest at the end.
    assert all(len(seg) >= every for seg in segments[:-1])
    if every == 10_000:
        assert len(segments) == 1
    if every == 1:  # one a folder listed (those that hold something)
        assert len(segments) == 1 + 6 + 5


def test_scan_gives_each_entry_its_state_from_the_ancestors(tmp_path: Path) -> None:
    (tmp_path / "same").write_bytes(b"1")
    (tmp_path / "changed").write_bytes(b"2")
    (tmp_path / "dir").mkdir()
    os.symlink("same", tmp_path / "link")
    ancestors = {
        "same": (int(Kind.FILE), hash_bytes(b"1"), ""),
        "changed": (int(Kind.FILE), hash_bytes(b"old"), ""),
        "dir": (int(Kind.DIRECTORY), b"", ""),
        "link": (int(Kind.SYMLINK), b"", "elsewhere"),
    }
    m = _scan(tmp_path, ancestors=ancestors)
    assert m["same"].state == SyncState.SYNCED
    assert m["changed"].state == SyncState.DIRTY
    assert m["dir"].state == SyncState.SYNCED
    assert m["link"].state == SyncState.DIRTY
    assert _scan(tmp_path, ancestors=ancestors, under="same")["same"].state == SyncState.SYNCED
    assert all(e.state == SyncState.UNTRACKED for e in _scan(tmp_path).values())


def test_gc_paused_nests_and_restores_the_collector() -> None:
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_make_entry_builds_the_same_value_as_the_constructor() -> None:
    e = make_entry(("p", Kind.FILE, 3, 0o644, b"d" * 16, "", SyncState.SYNCED))
    assert e == Entry("p", Kind.FILE, 3, 0o644, b"d" * 16, state=SyncState.SYNCED)
    assert isinstance(e, Entry) and e.state is SyncState.SYNCED


# ------------------------------------------------------------------ hostile trees

_DIR = os.O_RDONLY | os.O_DIRECTORY


def _chain(root: Path, names: list[str], *, leaves: tuple[str, ...] = ()) -> str:
    """Folders ``names[0]/names[1]/...`` under ``root``, each with the empty
    subfolders ``leaves`` and a file ``f`` ("f" + its depth), made one level
    at a time (no absolute path names the deepest); the deepest's path."""
    fd = os.open(root, _DIR)
    try:
        for depth, name in enumerate(names):
            os.mkdir(name, dir_fd=fd)
            for leaf in leaves:
                os.mkdir(leaf, dir_fd=fd)
            f = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"f%d" % depth)
            os.close(f)
            fd, old = os.open(name, _DIR, dir_fd=fd), fd
            os.close(old)
    finally:
        os.close(fd)
    return "/".join(names)


def test_scan_reads_back_a_tree_deeper_than_an_absolute_path_can_name(tmp_path: Path) -> None:
    # 4,080 bytes of folders: with the root's own path, more than PATH_MAX.
    deep = _chain(tmp_path, ["d" * 9] * 408)
    assert len(os.fsencode(tmp_path)) + 1 + len(deep) > MAX_PATH_BYTES
    last = "/".join(deep.split("/")[:-1]) + "/f"
    m = _scan(tmp_path)
    assert m[deep].kind == Kind.DIRECTORY
    assert m[last].digest == hash_bytes(b"f407")
    assert _scan(tmp_path, under=last) == {last: m[last]}  # the laptop's rescan of one path
    assert set(_scan(tmp_path, under=deep)) == {deep}


def test_paths_longer_than_the_protocol_allows_are_skipped(tmp_path: Path) -> None:
    # One name past MAX_PATH_BYTES: no sync operation could name it.
    deep = _chain(tmp_path, ["d" * 9] * 409 + ["e" * 20])
    skipped: list[Skipped] = []
    m = _scan(tmp_path, skipped=skipped)
    too_long = deep.rpartition("/")[0] + "/" + "e" * 20
    assert too_long == deep and len(deep) > MAX_PATH_BYTES
    fits = deep.rpartition("/")[0] + "/f"
    assert len(fits) <= MAX_PATH_BYTES and fits in m and deep not in m
    assert [(s.path, s.reason) for s in skipped] == [
        (deep, f"path longer than {MAX_PATH_BYTES} bytes is never synced")
    ]
    assert _scan(tmp_path, under=deep + "/x") == {}


def test_scan_keeps_a_bounded_number_of_folders_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At every level, subfolders still to list beside the one it goes down
    # into: one descriptor per level would be three times the bound.
    deep = _chain(tmp_path, ["a"] * (3 * HELD_FOLDERS_MAX), leaves=("b", "c"))
    live: set[int] = set()
    most = 0
    real_open, real_close = os.open, os.close

    def counting_open(*args: Any, **kw: Any) -> int:
        nonlocal most
        fd = real_open(*args, **kw)
        live.add(fd)
        most = max(most, len(live))
        return fd

    def counting_close(fd: int) -> None:
        live.discard(fd)
        real_close(fd)

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "close", counting_close)
    m = _scan(tmp_path)
    monkeypatch.undo()
    assert live == set()
    assert most <= HELD_FOLDERS_MAX + 3  # the root, the one listed, one being walked
    assert len(m) == 4 * 3 * HELD_FOLDERS_MAX and deep in m
    assert m[deep.rpartition("/")[0] + "/b"].kind == Kind.DIRECTORY


def _never_blocks(fifo: Path, fn: Callable[[], T]) -> T:
    """``fn()``; if it hangs opening ``fifo`` for reading, a writer comes
    (so the thread ends) and the test fails."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(fn)
    try:
        return future.result(timeout=30)
    except concurrent.futures.TimeoutError:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError(f"blocked on the FIFO {fifo}") from None
    finally:
        pool.shutdown(wait=False)


def test_a_fifo_is_never_opened_for_a_blocking_read(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "p")
    os.mkfifo(tmp_path / "sub" / ".gitignore")
    (tmp_path / "sub" / "kept").write_text("k")
    assert _never_blocks(tmp_path / "p", lambda: open_regular(str(tmp_path / "p"))) is None
    assert _never_blocks(tmp_path / "p", lambda: hash_file(str(tmp_path / "p"))) is None
    skipped: list[Skipped] = []
    m = _never_blocks(tmp_path / "sub" / ".gitignore", lambda: _scan(tmp_path, skipped=skipped))
    assert set(m) == {"sub", "sub/kept"}
    assert {s.path for s in skipped} == {"p", "sub/.gitignore"}
    m = _never_blocks(tmp_path / "sub" / ".gitignore", lambda: _scan(tmp_path, under="sub/kept"))
    assert set(m) == {"sub/kept"}


def test_a_nested_gitignore_that_is_a_symlink_is_not_read(tmp_path: Path) -> None:
    # As git (2.32 and later): an in-tree .gitignore is never followed.
    (tmp_path / "rules").write_text("*.log\n")
    for folder in ("link", "real"):
        (tmp_path / folder / "in").mkdir(parents=True)
        (tmp_path / folder / "in" / "x.log").write_text("x")
    os.symlink("../rules", tmp_path / "link" / ".gitignore")
    (tmp_path / "real" / ".gitignore").write_text("*.log\n")
    m = _scan(tmp_path)
    assert "link/in/x.log" in m and "real/in/x.log" not in m
    # The same when only a folder below is scanned again.
    assert set(_scan(tmp_path, under="link/in")) == {"link/in", "link/in/x.log"}
    assert set(_scan(tmp_path, under="real/in")) == {"real/in"}


def test_a_socket_is_not_a_regular_file(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s"))
        assert open_regular(str(tmp_path / "s")) is None  # not ENXIO
        assert hash_file(str(tmp_path / "s")) is None


def _cache(entries: dict[str, tuple[int, bytes]]) -> DigestCache:
    c = DigestCache()
    for path, (size, digest) in entries.items():
        c.put(path, (size, 1, 1, 1), digest)
    return c


@pytest.mark.parametrize(
    ("base", "filled", "mine", "expected", "took"),
    [
        # hashed elsewhere, untouched here meanwhile: taken
        ({}, {"a": (1, b"A")}, {}, {"a": (1, b"A")}, 1),
        # rehashed elsewhere (the file changed before), untouched here: taken
        ({"a": (1, b"A")}, {"a": (2, b"B")}, {"a": (1, b"A")}, {"a": (2, b"B")}, 1),
        # written here meanwhile (a batch): ours is newer, kept
        ({}, {"a": (1, b"A")}, {"a": (3, b"C")}, {"a": (3, b"C")}, 0),
        ({"a": (1, b"A")}, {"a": (2, b"B")}, {"a": (3, b"C")}, {"a": (3, b"C")}, 0),
        # forgotten here meanwhile (deleted): stays forgotten
        ({"a": (1, b"A")}, {"a": (2, b"B")}, {}, {}, 0),
        # nothing new elsewhere: nothing taken, nothing dirtied
        ({"a": (1, b"A")}, {"a": (1, b"A")}, {"a": (1, b"A")}, {"a": (1, b"A")}, 0),
    ],
)
def test_a_cache_filled_elsewhere_merges_back_without_clobbering(
    base: dict[str, tuple[int, bytes]],
    filled: dict[str, tuple[int, bytes]],
    mine: dict[str, tuple[int, bytes]],
    expected: dict[str, tuple[int, bytes]],
    took: int,
) -> None:
    here = _cache(mine)
    here.dirty = False
    assert here.merge(_cache(filled), _cache(base)) == took
    assert {p: here.get(p, (size, 1, 1, 1)) for p, (size, _) in expected.items()} == {
        p: d for p, (_, d) in expected.items()
    }
    assert set(here) == set(expected)
    assert here.dirty is bool(took)


def test_a_copy_is_a_cache_of_its_own() -> None:
    c = _cache({"a": (1, b"A")})
    other = c.copy()
    other.put("b", (2, 1, 1, 1), b"B")
    assert set(c) == {"a"} and set(other) == {"a", "b"}
