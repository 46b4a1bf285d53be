import os
from pathlib import Path

from devstack.core import ignore
from devstack.core.manifest import DigestCache, Kind, hash_bytes, scan


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
