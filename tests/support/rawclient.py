"""A raw protocol client for tests that must send frames `devstack
connect` never would (hostile paths, oversized chunks, dropped batches)."""

from __future__ import annotations

import grpc

from devstack.core.manifest import Entry, Kind, hash_bytes
from devstack.core.protocol import PROTOCOL_VERSION, bearer, entry_to_pb
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc


def hello(token: str) -> pb.ClientMessage:
    return pb.ClientMessage(
        hello=pb.Hello(protocol_version=PROTOCOL_VERSION, client_id="test", token=token)
    )


def write_op(path: str, data: bytes, *, chunked: bool = False, mode: int = 0o644) -> pb.Op:
    e = Entry(path, Kind.FILE, len(data), mode, hash_bytes(data))
    op = pb.Op(kind=pb.OP_WRITE, expected_absent=True, chunked=chunked)
    op.entry.CopyFrom(entry_to_pb(e))
    if not chunked:
        op.content = data
    return op


class RawSession:
    """A synchronous bidi session driven message by message."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.stub = sync_pb2_grpc.SyncStub(self.channel)
        self.token = token
        self._out: list[pb.ClientMessage] = []
        import queue

        self.q: queue.Queue[pb.ClientMessage | None] = queue.Queue()
        self.q.put(hello(token))

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
