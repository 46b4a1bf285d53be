"""A recording stand-in for the sidecar, served over real gRPC on
127.0.0.1, for what the real one never does on demand: fail with a given
status code, or advertise a smaller chunk limit. It acknowledges every
batch as applied and records what it was sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from devstack.core.protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc


@dataclass
class Failure:
    """Abort sessions with ``code``: at ``stage`` "hello" (before Welcome)
    or "manifest" (right after the manifest, i.e. once connected)."""

    code: grpc.StatusCode
    details: str
    stage: str = "manifest"


@dataclass
class FakeSidecar(sync_pb2_grpc.SyncServicer):
    failure: Failure | None = None
    #: Acks of the first session say this many problems were left out
    #: (``Ack.problems_omitted``), listing none.
    omit_problems: int = 0
    max_chunk_bytes: int = 0
    workspace: str = "fake"
    port: int = 0
    sessions: int = 0
    hellos: list[pb.Hello] = field(default_factory=list)
    #: (path, chunk data lengths, content) per written file
    files: dict[str, tuple[list[int], bytes]] = field(default_factory=dict)
    inline: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeSidecar:
        server = grpc.server(
            ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        sync_pb2_grpc.add_SyncServicer_to_server(self, server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def Session(
        self, request_iterator: Iterator[pb.ClientMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ServerMessage]:
        with self._lock:
            self.sessions += 1
        hello = next(request_iterator).hello
        self.hellos.append(hello)
        f = self.failure
        if f is not None and f.stage == "hello":
            context.abort(f.code, f.details)
        yield pb.ServerMessage(
            welcome=pb.Welcome(
                protocol_version=PROTOCOL_VERSION,
                session_id=f"s{self.sessions}",
                workspace=self.workspace,
                max_chunk_bytes=self.max_chunk_bytes,
            )
        )
        yield pb.ServerMessage(manifest=pb.ManifestPage(last=True))
        if f is not None and f.stage == "manifest":
            context.abort(f.code, f.details)
        ops: list[pb.Op] = []
        chunks: dict[int, list[bytes]] = {}
        for msg in request_iterator:
            which = msg.WhichOneof("msg")
            if which == "batch":
                ops = list(msg.batch.ops)
                chunks = {}
            elif which == "chunk":
                chunks.setdefault(msg.chunk.op_index, []).append(msg.chunk.data)
            elif which == "commit":
                for i, op in enumerate(ops):
                    if op.kind == pb.OP_WRITE and op.chunked:
                        parts = chunks.get(i, [])
                        self.files[op.entry.path] = ([len(c) for c in parts], b"".join(parts))
                    elif op.kind == pb.OP_WRITE:
                        self.inline[op.entry.path] = op.content
                if self.omit_problems and self.sessions == 1:
                    yield pb.ServerMessage(
                        ack=pb.Ack(seq=msg.commit.seq, problems_omitted=self.omit_problems)
                    )
                    continue
                yield pb.ServerMessage(ack=pb.Ack(seq=msg.commit.seq, applied=len(ops)))
