"""A raw protocol client for tests that must send frames `devstack
connect` never would (hostile paths, oversized chunks, dropped batches)."""

from __future__ import annotations

from typing import Any

import grpc

from devstack.core.manifest import Entry, Kind, hash_bytes
from devstack.core.protocol import PROTOCOL_VERSION, bearer, entry_to_pb
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc


def hello(token: str, **fields: Any) -> pb.ClientMessage:
    """A Hello with ``token``; ``fields`` set (or override) its other fields."""
    given: dict[str, Any] = {"protocol_version": PROTOCOL_VERSION, "client_id": "test"}
    return pb.ClientMessage(hello=pb.Hello(**{**given, **fields}, token=token))


def write_op(path: str, data: bytes, *, chunked: bool = False, mode: int = 0o644) -> pb.Op:
    e = Entry(path, Kind.FILE, len(data), mode, hash_bytes(data))
    op = pb.Op(kind=pb.OP_WRITE, expected_absent=True, chunked=chunked)
    op.entry.CopyFrom(entry_to_pb(e))
    if not chunked:
        op.content = data
    return op


def symlink_op(path: str, target: str) -> pb.Op:
    op = pb.Op(kind=pb.OP_SYMLINK, expected_absent=True)
    op.entry.CopyFrom(entry_to_pb(Entry(path, Kind.SYMLINK, 0, 0o777, b"", target)))
    return op


def mkdir_op(path: str, mode: int = 0o755) -> pb.Op:
    op = pb.Op(kind=pb.OP_MKDIR, expected_absent=True)
    op.entry.CopyFrom(entry_to_pb(Entry(path, Kind.DIRECTORY, 0, mode)))
    return op


def rename_op(from_path: str, to: str, source: pb.Entry) -> pb.Op:
    """Move ``from_path`` (which holds ``source``, from the manifest) to ``to``."""
    op = pb.Op(kind=pb.OP_RENAME, from_path=from_path)
    op.entry.CopyFrom(source)
    op.entry.path = to
    op.expected.CopyFrom(source)
    return op


def delete_op(path: str, expected: pb.Entry | None = None) -> pb.Op:
    op = pb.Op(kind=pb.OP_DELETE)
    op.entry.path = path
    if expected is not None:
        op.expected.CopyFrom(expected)
    return op


def delta_op(path: str, new: bytes, expected: pb.Entry) -> pb.Op:
    """A delta write of ``new`` over the file the manifest shows as ``expected``;
    its content follows as copy ranges and data chunks."""
    op = write_op(path, new, chunked=True)
    op.expected_absent = False
    op.expected.CopyFrom(expected)
    op.delta = True
    return op


def copy_chunk(seq: int, index: int, offset: int, length: int) -> pb.ClientMessage:
    return pb.ClientMessage(
        chunk=pb.Chunk(seq=seq, op_index=index, copy=pb.CopyRange(offset=offset, length=length))
    )


class RawSession:
    """A synchronous bidi session driven message by message."""

    def __init__(self, address: str, token: str, **hello_fields: Any) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.stub = sync_pb2_grpc.SyncStub(self.channel)
        self.token = token
        self._out: list[pb.ClientMessage] = []
        import queue

        self.q: queue.Queue[pb.ClientMessage | None] = queue.Queue()
        self.q.put(hello(token, **hello_fields))

        def gen():  # type: ignore[no-untyped-def]
            while True:
                item = self.q.get()
                if item is None:
                    return
                yield item

        self.responses = self.stub.Session(gen())
        first = next(self.responses)
        assert first.WhichOneof("msg") == "welcome", first
        self.welcome = first.welcome
        self.manifest: dict[str, pb.Entry] = {}
        while True:
            page = next(self.responses)
            for e in page.manifest.entries:
                self.manifest[e.path] = e
            if page.manifest.last:
                break

    def send(self, msg: pb.ClientMessage) -> None:
        self.q.put(msg)

    def batch(self, seq: int, *ops: pb.Op) -> None:
        self.send(pb.ClientMessage(batch=pb.Batch(seq=seq, ops=list(ops))))

    def commit(self, seq: int) -> pb.Ack:
        self.send(pb.ClientMessage(commit=pb.Commit(seq=seq)))
        return self.next_of("ack").ack

    def refused(self) -> grpc.RpcError:
        """The error that ends the session (after whatever comes before it)."""
        try:
            for _ in self.responses:
                pass
        except grpc.RpcError as e:
            return e
        raise AssertionError("the session ended without an error")

    def next_of(self, kind: str) -> pb.ServerMessage:
        for msg in self.responses:
            if msg.WhichOneof("msg") == kind:
                return msg
        raise AssertionError(f"stream ended before a {kind}")

    def close(self) -> None:
        self.q.put(None)
        self.responses.cancel()
        self.channel.close()


def status(address: str, token: str | None) -> pb.StatusResponse:
    with grpc.insecure_channel(address) as ch:
        stub = sync_pb2_grpc.SyncStub(ch)
        md = bearer(token) if token is not None else ()
        return stub.Status(pb.StatusRequest(), metadata=md, timeout=10)


def run_exec(
    address: str, token: str, argv: list[str], **kw: object
) -> tuple[bytes, bytes, pb.ExecExit]:
    with grpc.insecure_channel(address) as ch:
        stub = sync_pb2_grpc.SyncStub(ch)
        out, err, exit_ = b"", b"", None
        for ev in stub.Exec(pb.ExecRequest(argv=argv, **kw), metadata=bearer(token), timeout=30):  # type: ignore[arg-type]
            which = ev.WhichOneof("event")
            if which == "stdout":
                out += ev.stdout
            elif which == "stderr":
                err += ev.stderr
            else:
                exit_ = ev.exit
        assert exit_ is not None
        return out, err, exit_
