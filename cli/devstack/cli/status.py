"""``devstack status --to ADDR --token-file FILE``: print a sidecar's state.

``-o json|yaml`` (or ``--json``) prints every field of its ``Status`` reply
by its protocol name (``batches_applied``), zeros and unset messages
(``null``) too, and 64-bit counters as numbers: :func:`message_json`."""

from __future__ import annotations

import argparse
import asyncio
import inspect
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from devstack.cli.channel import add_target_arguments, load_token, open_channel, translate
from devstack.core.protocol import bearer
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from devstack.cli.project import add_output_argument

    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (as -o json)")
    add_output_argument(parser)


_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _dict_options() -> dict[str, bool]:
    """``MessageToDict``'s options for every field by its proto name, zeros
    included: ``always_print_fields_with_no_presence`` since protobuf 5.26,
    ``including_default_value_fields`` before."""
    params = inspect.signature(MessageToDict).parameters
    zeros = (
        "always_print_fields_with_no_presence"
        if "always_print_fields_with_no_presence" in params
        else "including_default_value_fields"
    )
    return {"preserving_proto_field_name": True, zeros: True}


def _repeated(field: Any) -> bool:
    """``is_repeated`` (protobuf 6 and later), or the ``label`` before."""
    flag = getattr(field, "is_repeated", None)
    if flag is None:
        return bool(field.label == FieldDescriptor.LABEL_REPEATED)
    return bool(flag)


def _plain(message: Message, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (``MessageToDict`` of ``message``) with 64-bit integers as
    numbers (proto3 JSON writes them as strings) and every unset singular
    message field as None, recursively."""
    for field in message.DESCRIPTOR.fields:
        name = field.name
        repeated = _repeated(field)  # maps too
        if field.type == FieldDescriptor.TYPE_MESSAGE and not repeated:
            if not message.HasField(name):
                data[name] = None
            else:
                data[name] = _plain(getattr(message, name), data[name])
        elif field.type in _INT64 and name in data:
            value = data[name]
            data[name] = [int(v) for v in value] if repeated else int(value)
    order = [f.name for f in message.DESCRIPTOR.fields]
    return {k: data[k] for k in order if k in data} | data  # the declared order


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as plain data for ``-o json|yaml``: snake_case
    field names, every field (zero values too), integers as numbers."""
    return _plain(message, MessageToDict(message, **_dict_options()))  # type: ignore[arg-type]


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
    output = "json" if getattr(args, "json", False) else getattr(args, "output", "table")
    if output != "table":
        from devstack.cli.cluster_up import dump

        print(dump(message_json(resp), output))
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
