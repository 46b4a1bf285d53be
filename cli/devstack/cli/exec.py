"""``devstack exec --to ADDR --token-file FILE [--cwd DIR] -- CMD ...``: run a
command in the dev pod's workspace through the sidecar's ``Exec`` call and
stream its output; exits with the command's exit code. ``devstack test``
builds on this."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import grpc

from devstack.cli.channel import add_target_arguments, load_token, open_channel, translate
from devstack.core.errors import ConfigError
from devstack.core.protocol import bearer
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--cwd", default="", help="folder relative to the workspace")
    parser.add_argument("--timeout", type=int, default=0, help="kill after N seconds (0: never)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")


async def run_remote(args: argparse.Namespace, argv: list[str]) -> int:
    token = load_token(args.token_file)
    async with open_channel(args.to, authority=args.authority, tls=args.tls) as channel:
        stub: Any = sync_pb2_grpc.SyncStub(channel)
        req = pb.ExecRequest(argv=argv, cwd=args.cwd, timeout_seconds=args.timeout)
        code = 1
        try:
            async for ev in stub.Exec(req, metadata=bearer(token)):
                which = ev.WhichOneof("event")
                if which == "stdout":
                    sys.stdout.buffer.write(ev.stdout)
                    sys.stdout.flush()
                elif which == "stderr":
                    sys.stderr.buffer.write(ev.stderr)
                    sys.stderr.flush()
                elif which == "exit":
                    code = ev.exit.code
                    if code and ev.exit.reason != "exit":
                        print(f"devstack exec: {ev.exit.message}", file=sys.stderr)
        except grpc.RpcError as e:
            raise translate(e, args.to) from e
        return code


def run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("no command given: devstack exec --to ADDR -- COMMAND [ARGS...]")
    return asyncio.run(run_remote(args, argv))
