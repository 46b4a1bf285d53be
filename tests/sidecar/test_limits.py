"""The sidecar under resource limits, as a real process: a batch far larger
than its descriptor limit still applies, and a disk that refuses a write
discards the batch with one clear status and leaves the sidecar healthy."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.sync.v1 import sync_pb2 as pb
from tests.support.rawclient import RawSession, mkdir_op, status, write_op
from tests.support.sync import Sidecar, wait_until

TOKEN = "limits-token"


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    ws = tmp_path / "ws"
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def staging(sc: Sidecar) -> list[str]:
    return os.listdir(sc.workspace / ".devstack" / "staging")


def test_a_batch_larger_than_the_descriptor_limit(sidecar: Sidecar) -> None:
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    s = RawSession(sidecar.address, TOKEN)  # its connection is open before the limit
    limit = open_fds(pid) + 80
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    folders = [f"d{i:03}" for i in range(100)]
    files = {f"{d}/f{j}.txt": f"{d} {j}\n".encode() for d in folders for j in range(3)}
    files |= {f"top{i:04}.txt": f"top {i}\n".encode() for i in range(1200)}
    assert len(files) + len(folders) > 10 * limit
    s.batch(1, *(mkdir_op(d) for d in folders), *(write_op(p, d) for p, d in files.items()))
    ack = s.commit(1)
    s.close()
    assert (ack.applied, list(ack.problems)) == (len(files) + len(folders), [])
    for p, d in files.items():
        assert (sidecar.workspace / p).read_bytes() == d
    assert staging(sidecar) == []
    # Later sessions are fine too.
    assert status(sidecar.address, TOKEN).files_written == len(files)
    s = RawSession(sidecar.address, TOKEN)
    assert len(s.manifest) == len(files) + len(folders)
    s.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["inline, while the batch opens", "chunked"])
def test_a_write_the_disk_refuses_discards_the_batch_clearly(
    sidecar: Sidecar, chunked: bool
) -> None:
    assert sidecar.proc is not None
    (sidecar.workspace / "kept").write_text("old")
    # Files may not grow past 64 KiB: the staged copy of `big` will hit it.
    resource.prlimit(sidecar.proc.pid, resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    big = os.urandom(200 * 1024)
    smalls = [write_op(f"small{i}", b"tiny") for i in range(20)]
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, *smalls, write_op("big", big, chunked=chunked))
    if chunked:
        for i in range(0, len(big), 50 * 1024):
            chunk = pb.Chunk(seq=1, op_index=len(smalls), data=big[i : i + 50 * 1024])
            s.send(pb.ClientMessage(chunk=chunk))
    s.send(pb.ClientMessage(commit=pb.Commit(seq=1)))
    e = s.refused()
    s.close()
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = e.details() or ""
    assert "EFBIG" in details and "discarded" in details and "'big'" in details
    assert not (sidecar.workspace / "big").exists()
    assert not (sidecar.workspace / "small0").exists()
    wait_until(lambda: staging(sidecar) == [], what="the batch's staging to be removed")
    # The sidecar stays healthy: the next session writes.
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, write_op("small", b"tiny"))
    assert s.commit(1).applied == 1
    s.close()
    assert (sidecar.workspace / "small").read_bytes() == b"tiny"
    assert (sidecar.workspace / "kept").read_text() == "old"
    assert any(ev.get("status") == "RESOURCE_EXHAUSTED" for ev in sidecar.events("session.failed"))
