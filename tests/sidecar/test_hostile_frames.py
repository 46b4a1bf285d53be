"""Frames `devstack connect` never sends, against a real sidecar process:
each is refused and nothing lands outside the workspace."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.core.manifest import Entry, Kind
from devstack.core.protocol import entry_to_pb
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.rawclient import (
    RawSession,
    copy_chunk,
    delete_op,
    delta_op,
    mkdir_op,
    rename_op,
    run_exec,
    status,
    symlink_op,
    write_op,
)
from tests.support.sync import Sidecar, tree_state, wait_until

TOKEN = "s3cret-token"


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    ws = tmp_path / "box" / "ws"
    ws.mkdir(parents=True)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


def outside_files(sidecar: Sidecar) -> set[str]:
    box = sidecar.workspace.parent
    return {p.name for p in box.iterdir()} - {"ws"}


def test_wrong_or_missing_token_is_refused(sidecar: Sidecar) -> None:
    for token in ("wrong", ""):
        with pytest.raises(grpc.RpcError) as e:
            RawSession(sidecar.address, token)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        status(sidecar.address, None)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        run_exec(sidecar.address, "wrong", ["true"])
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status(sidecar.address, "s3cret-token").workspace == "ws"
    # The token never reaches the sidecar's log.
    assert not any("s3cret-token" in line for line in sidecar.raw)


@pytest.mark.parametrize("path", ["../escape", "/tmp/escape-abs", "a/../../escape", ".devstack/x"])
def test_traversal_and_absolute_paths(sidecar: Sidecar, path: str) -> None:
    s = RawSession(sidecar.address, "s3cret-token")
    s.batch(1, write_op(path, b"pwned"))
    ack = s.commit(1)
    s.close()
    assert ack.applied == 0
    assert [p.reason for p in ack.problems] == ["unsafe-path"]
    assert outside_files(sidecar) == set()
    assert not Path("/tmp/escape-abs").exists()


def test_symlink_escape(sidecar: Sidecar, tmp_path: Path) -> None:
    outside = sidecar.workspace.parent / "secret-dir"
    outside.mkdir()
    os.symlink(outside, sidecar.workspace / "door")
    s = RawSession(sidecar.address, "s3cret-token")
    link = pb.Op(kind=pb.OP_SYMLINK, expected_absent=True)
    link.entry.CopyFrom(entry_to_pb(Entry("evil", Kind.SYMLINK, 0, 0o777, b"", "../secret-dir")))
    s.batch(1, write_op("door/pwned", b"x"), link)
    ack = s.commit(1)
    s.close()
    assert ack.applied == 0
    assert {p.reason for p in ack.problems} == {"unsafe-path"}
    assert list(outside.iterdir()) == []
    assert not (sidecar.workspace / "evil").is_symlink()


def test_oversized_chunk_ends_the_session_and_writes_nothing(sidecar: Sidecar) -> None:
    big = os.urandom(2 * 1024 * 1024)
    s = RawSession(sidecar.address, "s3cret-token")
    s.batch(1, write_op("big", big, chunked=True))
    s.send(pb.ClientMessage(chunk=pb.Chunk(seq=1, op_index=0, data=big)))
    with pytest.raises(grpc.RpcError) as e:
        s.commit(1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the limit" in (e.value.details() or "")
    s.close()
    assert not (sidecar.workspace / "big").exists()


def test_zlib_bomb_is_refused(sidecar: Sidecar) -> None:
    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024))
    s = RawSession(sidecar.address, "s3cret-token")
    s.batch(1, write_op("bomb", b"\0" * 10, chunked=True))
    s.send(
        pb.ClientMessage(
            chunk=pb.Chunk(seq=1, op_index=0, data=bomb, compression=pb.COMPRESSION_ZLIB)
        )
    )
    with pytest.raises(grpc.RpcError) as e:
        s.commit(1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    s.close()
    assert not (sidecar.workspace / "bomb").exists()


def test_out_of_order_frames(sidecar: Sidecar) -> None:
    s = RawSession(sidecar.address, "s3cret-token")
    with pytest.raises(grpc.RpcError) as e:
        s.commit(7)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not open" in (e.value.details() or "")
    s.close()


def test_more_bytes_than_declared(sidecar: Sidecar) -> None:
    s = RawSession(sidecar.address, "s3cret-token")
    s.batch(1, write_op("f", b"12345", chunked=True))
    s.send(pb.ClientMessage(chunk=pb.Chunk(seq=1, op_index=0, data=b"1234567890")))
    with pytest.raises(grpc.RpcError) as e:
        s.commit(1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    s.close()
    assert not (sidecar.workspace / "f").exists()


def test_a_bad_frame_behind_a_commit_ends_the_session_after_its_ack(sidecar: Sidecar) -> None:
    s = RawSession(sidecar.address, "s3cret-token")
    # Sent at once: the sidecar reads ahead of its disk work.
    s.batch(1, write_op("first", b"applied"))
    s.send(pb.ClientMessage(commit=pb.Commit(seq=1)))
    s.send(pb.ClientMessage(commit=pb.Commit(seq=7)))
    assert s.next_of("ack").ack.seq == 1
    e = s.refused()
    s.close()
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not open" in (e.details() or "")
    assert (sidecar.workspace / "first").read_bytes() == b"applied"


def test_nothing_queued_behind_a_failed_frame_is_applied(sidecar: Sidecar) -> None:
    s = RawSession(sidecar.address, "s3cret-token")
    # Sent at once: the bad chunk and the commit are read (and queued) while
    # the batch's megabytes are still being staged.
    big = [write_op(f"big{i}", os.urandom(1 << 20)) for i in range(3)]
    s.batch(1, write_op("first", b"staged"), *big, write_op("f", b"12345", chunked=True))
    s.send(pb.ClientMessage(chunk=pb.Chunk(seq=1, op_index=9, data=b"12345")))
    s.send(pb.ClientMessage(commit=pb.Commit(seq=1)))
    e = s.refused()
    s.close()
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not exist" in (e.details() or "")
    # The batch is discarded once the session's queued work is done.
    staging = sidecar.workspace / ".devstack" / "staging"
    wait_until(lambda: os.listdir(staging) == [], what="staged files to be discarded")
    assert sorted(os.listdir(sidecar.workspace)) == [".devstack"]


def test_dropped_connection_mid_batch_changes_nothing(sidecar: Sidecar) -> None:
    (sidecar.workspace / "kept").write_bytes(b"old content")
    s = RawSession(sidecar.address, "s3cret-token")
    op = write_op("kept", b"new content!", chunked=True)
    op.expected_absent = False
    op.expected.CopyFrom(s.manifest["kept"])
    s.batch(1, op, write_op("fresh", b"never committed"))
    s.send(pb.ClientMessage(chunk=pb.Chunk(seq=1, op_index=0, data=b"new con")))
    s.close()  # the connection drops before Commit
    staging = sidecar.workspace / ".devstack" / "staging"
    from tests.support.sync import wait_until

    wait_until(lambda: os.listdir(staging) == [], what="staged files to be discarded")
    assert (sidecar.workspace / "kept").read_bytes() == b"old content"
    assert not (sidecar.workspace / "fresh").exists()


def test_exec_streams_output_and_exit_code(sidecar: Sidecar) -> None:
    (sidecar.workspace / "sub").mkdir()
    out, err, ex = run_exec(
        sidecar.address, "s3cret-token", ["sh", "-c", "pwd; echo oops >&2; exit 3"], cwd="sub"
    )
    assert out.decode().strip().endswith("/ws/sub")
    assert err == b"oops\n"
    assert (ex.code, ex.reason) == (3, "exit")
    _, _, ex = run_exec(sidecar.address, "s3cret-token", ["no-such-command-xyz"])
    assert (ex.code, ex.reason) == (127, "command-not-found")
    _, _, ex = run_exec(sidecar.address, "s3cret-token", ["sleep", "30"], timeout_seconds=1)
    assert ex.reason == "timeout"
    with pytest.raises(grpc.RpcError) as e:
        run_exec(sidecar.address, "s3cret-token", ["true"], cwd="../..")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------ symlinks


def link_entry(path: str, target: str) -> pb.Entry:
    return entry_to_pb(Entry(path, Kind.SYMLINK, 0, 0o777, b"", target))


def links_stay_inside(ws: Path, *, except_: tuple[str, ...] = ()) -> None:
    """Every symlink in the workspace (other than ``except_``, made by "the
    app") resolves inside it and outside .devstack/."""
    root = ws.resolve()
    for dirpath, dirnames, filenames in os.walk(ws):
        for n in dirnames + filenames:
            full = Path(dirpath, n)
            rel = full.relative_to(ws).as_posix()
            if not full.is_symlink() or rel in except_:
                continue
            real = full.resolve()
            assert real == root or real.is_relative_to(root), f"{rel} -> {real}"
            assert not real.is_relative_to(root / ".devstack"), f"{rel} -> {real}"


@pytest.fixture
def secret(sidecar: Sidecar) -> Path:
    """A file beside the workspace that no symlink sync makes may reach."""
    p = sidecar.workspace.parent / "secret"
    p.write_text("the secret")
    return p


def test_symlink_through_a_symlink_staged_in_the_same_batch(sidecar: Sidecar, secret: Path) -> None:
    # The reproduction: `up -> .` makes `up/../secret` mean `../secret`.
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, symlink_op("up", "."), symlink_op("evil", "up/../secret"))
    ack = s.commit(1)
    s.close()
    assert [(p.path, p.reason) for p in ack.problems] == [("evil", "unsafe-path")]
    assert "'..' after a name" in ack.problems[0].message
    assert not (sidecar.workspace / "evil").is_symlink()
    links_stay_inside(sidecar.workspace)


@pytest.mark.parametrize(
    ("name", "batches", "rejected"),
    [
        (
            "chained links, then '..' after them",
            [[symlink_op("a", "."), symlink_op("b", "a")], [symlink_op("evil", "b/../secret")]],
            {"evil"},
        ),
        (
            "the escaping link first, the link it climbs through later",
            [[symlink_op("evil", "up/../secret")], [symlink_op("up", ".")]],
            {"evil"},
        ),
        (
            "into the sidecar's state through a link",
            [[symlink_op("st", ".")], [symlink_op("evil", "st/.devstack/ancestors.json")]],
            {"evil"},
        ),
        (
            "a nested link climbing past the root",
            [[mkdir_op("a")], [symlink_op("a/evil", "../../secret")]],
            {"a/evil"},
        ),
    ],
)
def test_symlink_escapes_over_batches(
    sidecar: Sidecar, secret: Path, name: str, batches: list[list[pb.Op]], rejected: set[str]
) -> None:
    s = RawSession(sidecar.address, TOKEN)
    refused: set[str] = set()
    for seq, ops in enumerate(batches, 1):
        s.batch(seq, *ops)
        refused |= {p.path for p in s.commit(seq).problems if p.reason == "unsafe-path"}
    s.close()
    assert refused == rejected
    for path in rejected:
        assert not (sidecar.workspace / path).is_symlink()
    links_stay_inside(sidecar.workspace)


def test_symlink_to_a_link_that_escapes(sidecar: Sidecar, secret: Path) -> None:
    # The app (not sync) made a link out of the workspace: sync may not
    # point anything at it, or through it.
    os.symlink("../secret", sidecar.workspace / "out")
    os.symlink(str(secret.parent), sidecar.workspace / "abs")
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, symlink_op("l1", "out"), symlink_op("l2", "abs/secret"), symlink_op("ok", "l1x"))
    ack = s.commit(1)
    s.close()
    assert sorted((p.path, p.reason) for p in ack.problems) == [
        ("l1", "unsafe-path"),
        ("l2", "unsafe-path"),
    ]
    assert "resolves outside the workspace" in ack.problems[0].message
    assert (sidecar.workspace / "ok").is_symlink()
    links_stay_inside(sidecar.workspace, except_=("out", "abs"))


def test_rename_of_a_link_to_where_it_escapes(sidecar: Sidecar, secret: Path) -> None:
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, mkdir_op("a"), mkdir_op("a/b"), symlink_op("a/l", "../secret"))
    assert s.commit(1).applied == 3
    s.batch(2, symlink_op("a/b/l", "../../secret"))
    assert s.commit(2).applied == 1
    # `a/l -> ../secret` is the workspace's own `secret`; moved to the top
    # it would be the one outside. Same for a folder moved up a level.
    s.batch(3, rename_op("a/l", "l", link_entry("a/l", "../secret")))
    ack3 = s.commit(3)
    s.batch(4, rename_op("a/b", "b", entry_to_pb(Entry("a/b", Kind.DIRECTORY, 0, 0o755))))
    ack4 = s.commit(4)
    s.close()
    assert [(p.path, p.reason) for p in ack3.problems] == [("l", "unsafe-path")]
    assert [(p.path, p.reason) for p in ack4.problems] == [("b", "unsafe-path")]
    assert os.readlink(sidecar.workspace / "a" / "l") == "../secret"
    assert (sidecar.workspace / "a" / "b" / "l").is_symlink()
    assert not (sidecar.workspace / "l").exists() and not (sidecar.workspace / "b").exists()
    links_stay_inside(sidecar.workspace)


def test_a_link_moved_where_it_still_resolves_inside_is_fine(sidecar: Sidecar) -> None:
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, mkdir_op("a"), mkdir_op("c"), symlink_op("a/l", "../x"))
    assert s.commit(1).applied == 3
    s.batch(2, rename_op("a/l", "c/l", link_entry("a/l", "../x")))
    ack = s.commit(2)
    s.close()
    assert (ack.applied, list(ack.problems)) == (1, [])
    assert os.readlink(sidecar.workspace / "c" / "l") == "../x"


# ------------------------------------------------------------------ renames, deletes


@pytest.fixture
def door(sidecar: Sidecar) -> Path:
    """A folder outside the workspace, reachable by a symlink the app made."""
    outside = sidecar.workspace.parent / "outside"
    outside.mkdir()
    (outside / "theirs").write_text("not yours")
    os.symlink(outside, sidecar.workspace / "door")
    return outside


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("mine", ".."),
        ("mine", "../mine"),
        ("mine", "/tmp/devstack-renamed-abs"),
        ("mine", "door/mine"),
        ("mine", ".devstack/mine"),
        ("../secret", "stolen"),
        ("door/theirs", "stolen"),
        ("/etc/hostname", "stolen"),
    ],
)
def test_hostile_renames(sidecar: Sidecar, secret: Path, door: Path, src: str, dst: str) -> None:
    (sidecar.workspace / "mine").write_text("mine")
    before = tree_state(sidecar.workspace)
    s = RawSession(sidecar.address, TOKEN)
    source = s.manifest.get(src) or entry_to_pb(Entry(src, Kind.FILE, 4, 0o644, b"\0" * 32))
    s.batch(1, rename_op(src, dst, source))
    ack = s.commit(1)
    s.close()
    assert ack.applied == 0
    assert [p.reason for p in ack.problems] == ["unsafe-path"]
    assert tree_state(sidecar.workspace) == before
    assert sorted(p.name for p in door.iterdir()) == ["theirs"]
    assert secret.read_text() == "the secret"
    assert not Path("/tmp/devstack-renamed-abs").exists()


@pytest.mark.parametrize("path", ["", ".", "..", "/", "./"])
def test_the_workspace_root_is_never_deleted(sidecar: Sidecar, path: str) -> None:
    (sidecar.workspace / "f").write_text("x")
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, delete_op(path, entry_to_pb(Entry(path, Kind.DIRECTORY, 0, 0o755))))
    ack = s.commit(1)
    s.close()
    assert ack.applied == 0
    assert [p.reason for p in ack.problems] == ["unsafe-path"]
    assert sidecar.workspace.is_dir() and (sidecar.workspace / "f").read_text() == "x"


# ------------------------------------------------------------------ delta frames


@pytest.fixture
def base(sidecar: Sidecar) -> bytes:
    data = os.urandom(1000)
    (sidecar.workspace / "base.bin").write_bytes(data)
    return data


@pytest.mark.parametrize(
    ("offset", "length"),
    [(990, 100), (1000, 1), (2**63, 2**63), (2**64 - 1, 1), (0, 1001)],
)
def test_copy_ranges_out_of_range_are_refused(
    sidecar: Sidecar, base: bytes, offset: int, length: int
) -> None:
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, delta_op("base.bin", base[:10] + b"new", s.manifest["base.bin"]))
    s.send(copy_chunk(1, 0, 0, 10))
    s.send(copy_chunk(1, 0, offset, length))
    s.send(pb.ClientMessage(commit=pb.Commit(seq=1)))
    e = s.refused()
    s.close()
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "past the end" in (e.details() or "")
    assert (sidecar.workspace / "base.bin").read_bytes() == base
    staging = sidecar.workspace / ".devstack" / "staging"
    wait_until(lambda: os.listdir(staging) == [], what="staged files to be discarded")


def test_copy_range_into_an_op_that_is_not_a_delta(sidecar: Sidecar, base: bytes) -> None:
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, write_op("other", b"0123456789", chunked=True))
    s.send(copy_chunk(1, 0, 0, 10))
    e = s.refused()
    s.close()
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (sidecar.workspace / "other").exists()


def test_delta_through_a_symlink_reads_nothing_outside(sidecar: Sidecar, secret: Path) -> None:
    os.symlink("../secret", sidecar.workspace / "peek")
    s = RawSession(sidecar.address, TOKEN)
    fake = entry_to_pb(Entry("peek", Kind.FILE, 10, 0o644, b"\0" * 32))
    s.batch(1, delta_op("peek", b"the secret", fake))
    s.send(copy_chunk(1, 0, 0, 10))
    ack = s.commit(1)
    s.close()
    assert ack.applied == 0
    assert [p.reason for p in ack.problems] == ["unsafe-path"]
    assert os.readlink(sidecar.workspace / "peek") == "../secret"
