"""``devstack status --to ADDR --token-file FILE``: print a sidecar's state."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from devstack.cli.channel import add_target_arguments, load_token, open_channel, translate
from devstack.core.protocol import bearer
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


async def fetch(args: argparse.Namespace) -> pb.StatusResponse:
    token = load_token(args.token_file)
    async with open_channel(args.to, authority=args.authority, tls=args.tls) as channel:
        stub: Any = sync_pb2_grpc.SyncStub(channel)
        try:
            resp: pb.StatusResponse = await stub.Status(
                pb.StatusRequest(), metadata=bearer(token), timeout=10
            )
        except grpc.RpcError as e:
            raise translate(e, args.to) from e
        return resp


def run(args: argparse.Namespace) -> int:
    resp = asyncio.run(fetch(args))
    if args.json:
        print(json.dumps(MessageToDict(resp), indent=2))
        return 0
    print(f"workspace      {resp.workspace} ({'replica' if resp.replica else 'safe'} mode)")
    print(f"sessions       {resp.sessions}")
    print(f"batches        {resp.batches_applied}")
    print(f"files written  {resp.files_written}")
    print(f"bytes received {resp.bytes_received}")
    print(f"conflicts      {resp.conflicts}")
    if resp.HasField("last_reload"):
        r = resp.last_reload
        print(f"last reload    {r.kind}: {r.message}")
    print(f"uptime         {resp.uptime_seconds:.0f}s")
    return 0
