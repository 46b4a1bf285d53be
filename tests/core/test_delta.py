import itertools
import os
import random
from pathlib import Path

import pytest

from devstack.core import delta


def _fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY)


def _rebuild(old: bytes, new_path: Path, steps: list[delta.Copy | delta.Literal]) -> bytes:
    new = new_path.read_bytes()
    out = bytearray()
    for s in steps:
        if isinstance(s, delta.Copy):
            out += old[s.offset : s.offset + s.length]
        else:
            out += new[s.offset : s.offset + s.length]
    return bytes(out)


@pytest.fixture
def text() -> bytes:
    rnd = random.Random(7)
    return b"".join(f"line {i} {rnd.random()}\n".encode() for i in range(60_000))


def test_blocks_are_bounded_and_cover_the_file(tmp_path: Path, text: bytes) -> None:
    p = tmp_path / "f"
    p.write_bytes(text)
    fd = _fd(p)
    blocks = list(delta.boundaries(fd, len(text)))
    os.close(fd)
    assert blocks[0][0] == 0
    assert sum(n for _, n in blocks) == len(text)
    for (o1, n1), (o2, _) in itertools.pairwise(blocks):
        assert o1 + n1 == o2
    assert all(n <= delta.MAX_BLOCK for _, n in blocks)
    assert all(n >= delta.MIN_BLOCK for _, n in blocks[:-1])


@pytest.mark.parametrize("edit", ["replace", "insert", "delete", "append", "prepend"])
def test_one_line_edit_sends_little_and_rebuilds_exactly(
    tmp_path: Path, text: bytes, edit: str
) -> None:
    old_p, new_p = tmp_path / "old", tmp_path / "new"
    old_p.write_bytes(text)
    mid = text.index(b"\n", len(text) // 2) + 1
    new = {
        "replace": text[:mid] + b"EDITED\n" + text[text.index(b"\n", mid) + 1 :],
        "insert": text[:mid] + b"a brand new line\n" + text[mid:],
        "delete": text[:mid] + text[text.index(b"\n", mid) + 1 :],
        "append": text + b"tail\n",
        "prepend": b"head\n" + text,
    }[edit]
    new_p.write_bytes(new)
    fo, fn = _fd(old_p), _fd(new_p)
    sig = delta.signature(fo, len(text))
    steps = delta.delta(fn, len(new), sig)
    os.close(fo)
    os.close(fn)
    literal = sum(s.length for s in steps if isinstance(s, delta.Literal))
    assert literal <= 2 * delta.MAX_BLOCK
    assert len(steps) <= 5
    assert _rebuild(text, new_p, steps) == new


def test_unrelated_content_is_all_literal(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(300_000))
    b.write_bytes(os.urandom(300_000))
    fa, fb = _fd(a), _fd(b)
    steps = delta.delta(fb, 300_000, delta.signature(fa, 300_000))
    os.close(fa)
    os.close(fb)
    assert steps == [delta.Literal(0, 300_000)]


def test_empty_and_tiny_files(tmp_path: Path) -> None:
    p = tmp_path / "t"
    p.write_bytes(b"")
    fd = _fd(p)
    assert list(delta.boundaries(fd, 0)) == []
    os.close(fd)
    p.write_bytes(b"tiny")
    fd = _fd(p)
    assert list(delta.boundaries(fd, 4)) == [(0, 4)]
    os.close(fd)
