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
from tests.support.rawclient import RawSession, run_exec, status, write_op
from tests.support.sync import Sidecar


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
