"""``devstack exec --to ADDR --token-file FILE [--cwd DIR] -- CMD ...``: run a
command in the dev pod's workspace through the sidecar's ``Exec`` call and
stream its output; exits with the command's exit code.

:func:`stream_exec` is the one home of running an ``Exec`` call and passing
its output and exit code on; ``devstack test`` (:mod:`devstack.cli.testing`)
uses it too."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO

import grpc

from devstack.cli.channel import add_target_arguments, load_token, open_channel, translate
from devstack.core.errors import ConfigError, PeerFailedError
from devstack.core.protocol import bearer
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc


@dataclass(frozen=True)
class SidecarTarget:
    """How to reach one sidecar: its address, its token, and the HTTP/2
    authority and TLS a Traefik entry point in between needs."""

    address: str
    token: str
    authority: str | None = None
    tls: bool = False


EXAMPLES = """examples:
  devstack exec --to 127.0.0.1:7070 --token-file token -- ls -la
                                        run ls in the sidecar's workspace
  devstack exec --to traefik.dev.example.com:80 --authority web--alice-sync.dev.example.com \\
      --token-file token --cwd src --timeout 60 -- make check
                                        through a Traefik entry point, in src/, at most 60 s

It exits with the command's exit code (128+N when signal N killed it, 124 at the
timeout). For your copy of a service, `devstack test SERVICE -- CMD` finds the
sidecar and its token itself.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_target_arguments(parser)
    parser.add_argument("--cwd", default="", help="folder relative to the workspace")
    parser.add_argument("--timeout", type=int, default=0, help="kill after N seconds (0: never)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")


async def stream_exec(
    target: SidecarTarget,
    request: pb.ExecRequest,
    *,
    label: str,
    timeout_hint: str = "",
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run ``request`` through the sidecar's ``Exec`` call, writing the
    command's output to ``stdout``/``stderr`` (ours by default) as it comes,
    and return its exit code: 128+N for a command killed by signal N, 124 for
    one killed at its timeout. A non-zero end other than a plain exit (a
    signal, a timeout, a command that could not start) also gets one line,
    ``<label>: <what happened>`` (``timeout_hint`` appended for a timeout),
    on ``stderr``. Cancelling the caller (Ctrl-C) cancels the call, and the
    sidecar kills the command's process group."""
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    async with open_channel(target.address, authority=target.authority, tls=target.tls) as ch:
        stub: Any = sync_pb2_grpc.SyncStub(ch)
        call = stub.Exec(request, metadata=bearer(target.token))
        try:
            async for ev in call:
                which = ev.WhichOneof("event")
                if which == "stdout":
                    out.write(ev.stdout)
                    out.flush()
                elif which == "stderr":
                    err.write(ev.stderr)
                    err.flush()
                elif which == "exit":
                    code = int(ev.exit.code)
                    if code and ev.exit.reason != "exit":
                        hint = timeout_hint if ev.exit.reason == "timeout" else ""
                        err.write(f"{label}: {ev.exit.message}{hint}\n".encode())
                        err.flush()
                    return code
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.RpcError as e:
            raise translate(e, target.address) from e
    raise PeerFailedError(
        f"the sidecar at {target.address} ended the command's output without its exit status"
    )


def run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("no command given: devstack exec --to ADDR -- COMMAND [ARGS...]")
    target = SidecarTarget(args.to, load_token(args.token_file), args.authority, args.tls)
    request = pb.ExecRequest(argv=argv, cwd=args.cwd, timeout_seconds=args.timeout)
    return asyncio.run(stream_exec(target, request, label="devstack exec"))
