"""``devstack resolve SERVICE PATH... --take laptop|pod``: settle the conflicts
``devstack conflicts`` lists (:mod:`devstack.cli.conflicts`).

- ``--take laptop``: the sidecar's ``Resolve`` call makes the pod's current
  version what sync last wrote, so the next sync replaces it with the
  laptop's through the ordinary batch path (staged, renamed into place,
  inside the workspace only). A running ``connect`` is told to read the
  workspace again, and sends it at once.
- ``--take pod``: the sidecar's ``ReadFile`` call streams the pod's version;
  it is written next to the laptop's file and renamed over it once its
  digest matches what was listed, then ``Resolve`` records it as synced.

Each path is settled only if the pod still holds what was listed a moment
before; one that changed meanwhile is left alone and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.cli.conflicts import (
    RESOLVE_TIMEOUT,
    Conflict,
    Copy,
    LaptopTree,
    add_copy_arguments,
    checked_tree,
    collect,
    find_copy,
    human_size,
    tree_path,
)
from devstack.core.errors import ConfigError, DevstackError, PermanentError
from devstack.core.manifest import Kind

EXAMPLES = """examples:
  devstack resolve web config.yaml --take laptop
                                        keep the laptop's version: the next sync (a running
                                        `devstack connect web` at once) replaces the pod's
  devstack resolve web src/app.py src/util.py --take pod
                                        keep the pod's versions: copied to the laptop
  devstack resolve web --all --take laptop
                                        every conflict `devstack conflicts web` lists
  devstack resolve config.yaml --take pod --to 127.0.0.1:7070 --token-file token
                                        any sidecar, by hand (the tree: --tree, default .)

Paths are relative to the current folder when it is inside the tree (as git
takes them), else to the tree's root; nothing outside the tree is touched.
A path whose pod version changed since it was listed is left alone (exit 2):
look again with `devstack conflicts web`. A folder the app made in the pod
cannot be copied back: --take laptop, or remove it with `devstack exec`.
"""


@dataclass(frozen=True)
class Outcome:
    """What became of one path: ``resolved``, ``no-conflict`` or ``refused``."""

    path: str
    result: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "result": self.result, "message": self.message}


def split_words(words: Sequence[str], *, explicit: bool) -> tuple[str | None, list[str]]:
    """SERVICE and the PATHs: without ``--token-file`` the first word names
    the service, as for every command; with it, every word is a path."""
    if explicit:
        return None, list(words)
    if not words:
        return None, []
    return words[0], list(words[1:])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from devstack.cli.project import add_output_argument

    parser.usage = (
        "%(prog)s [options] SERVICE PATH... --take laptop|pod\n"
        "       %(prog)s [options] SERVICE --all --take laptop|pod\n"
        "       %(prog)s [options] PATH... --take laptop|pod --to HOST:PORT --token-file FILE"
    )
    parser.description = (
        "Settle conflicts between your tree and your copy's workspace: keep the laptop's "
        "version (the next sync replaces the pod's) or the pod's (copied to the laptop)."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "words",
        nargs="*",
        metavar="SERVICE PATH",
        help="the service (none with --token-file), then the paths, as `devstack conflicts` "
        "lists them",
    )
    parser.add_argument(
        "--take",
        required=True,
        choices=("laptop", "pod"),
        help="the side to keep",
    )
    parser.add_argument(
        "--all", action="store_true", help="every conflict `devstack conflicts` lists"
    )
    add_copy_arguments(parser)
    add_output_argument(parser)


async def _copy_back(stub: Any, token: str, address: str, tree: LaptopTree, c: Conflict) -> int:
    """Copy the pod's version of ``c`` to the laptop; the bytes written."""
    import grpc

    from devstack.cli.channel import translate
    from devstack.core.protocol import bearer, entry_from_pb
    from devstack.sync.v1 import sync_pb2 as pb

    listed = c.pod.entry
    assert listed is not None
    call = stub.ReadFile(pb.ReadFileRequest(path=c.path), metadata=bearer(token))
    try:
        stream = aiter(call)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("body") != "entry":
            raise PermanentError(f"{c.path}: the sidecar sent no entry first")
        now = entry_from_pb(first.entry)
        if now.kind != listed.kind or now.target != listed.target:
            raise PermanentError(
                f"{c.path}: the pod's version changed since it was listed: list the conflicts again"
            )

        async def pieces() -> AsyncIterator[bytes]:
            async for msg in stream:
                if msg.WhichOneof("body") == "data":
                    yield msg.data

        return await tree.write(c.path, listed, pieces())
    except grpc.RpcError as e:
        raise translate(e, address) from e


async def settle(copy: Copy, root: Path, take: str, conflicts: Sequence[Conflict]) -> list[Outcome]:
    """Settle ``conflicts`` on ``take``'s side; one outcome each."""
    import grpc

    from devstack.cli.channel import open_channel, translate
    from devstack.core.protocol import bearer, entry_to_pb
    from devstack.sync.v1 import sync_pb2 as pb
    from devstack.sync.v1 import sync_pb2_grpc

    t = copy.target
    out: dict[str, Outcome] = {}
    ready: list[Conflict] = []
    copied: dict[str, int] = {}
    async with open_channel(t.address, authority=t.authority, tls=t.tls) as ch:
        stub: Any = sync_pb2_grpc.SyncStub(ch)
        for c in conflicts:
            if take not in c.takes:
                pod = c.pod.entry
                kind = "folder" if pod is not None and pod.kind == Kind.DIRECTORY else "entry"
                out[c.path] = Outcome(
                    c.path,
                    "refused",
                    f"the pod's {kind} cannot be copied to the laptop here ({c.reason}): "
                    "--take laptop, or change it in the pod with `devstack exec`",
                )
                continue
            if take == "pod":
                try:
                    copied[c.path] = await _copy_back(stub, t.token, t.address, LaptopTree(root), c)
                except (DevstackError, OSError) as e:
                    why = str(e) if isinstance(e, DevstackError) else f"{e.strerror or e}"
                    out[c.path] = Outcome(c.path, "refused", why)
                    continue
            ready.append(c)
        if ready:
            side = pb.SIDE_LAPTOP if take == "laptop" else pb.SIDE_POD
            items = []
            for c in ready:
                item = pb.ResolveItem(path=c.path)
                if c.pod.entry is not None:
                    item.expected.CopyFrom(entry_to_pb(c.pod.entry))
                items.append(item)

            try:
                resp = await stub.Resolve(
                    pb.ResolveRequest(take=side, items=items),
                    metadata=bearer(t.token),
                    timeout=RESOLVE_TIMEOUT,
                )
            except grpc.RpcError as e:
                raise translate(e, t.address) from e
            live = resp.sessions_notified
            for r in resp.results:
                if not r.resolved:
                    out[r.path] = Outcome(r.path, "refused", r.message or r.reason)
                elif take == "laptop":
                    when = "the running connect does it now" if live else "at the next sync"
                    out[r.path] = Outcome(
                        r.path, "resolved", f"the laptop's version replaces the pod's ({when})"
                    )
                else:
                    size = human_size(copied.get(r.path, 0))
                    out[r.path] = Outcome(
                        r.path, "resolved", f"the pod's version is on the laptop now ({size})"
                    )
    return [out[c.path] for c in conflicts if c.path in out]


def run(args: argparse.Namespace) -> int:
    import os

    from devstack.cli.cluster_up import dump

    service, words = split_words(args.words, explicit=bool(args.token_file))
    if args.all and words:
        raise ConfigError("give PATHs or --all, not both")
    if not args.all and not words:
        raise ConfigError(
            "name the paths to settle (as `devstack conflicts` lists them), or pass --all"
        )
    copy = find_copy(args, service, "resolve")
    root = checked_tree(copy)
    cwd = Path(os.getcwd()).resolve()
    paths = list(dict.fromkeys(tree_path(w, root, cwd) for w in words))
    found, _ = collect(copy, paths)
    outcomes = asyncio.run(settle(copy, root, args.take, found)) if found else []
    listed = {c.path for c in found}
    outcomes += [
        Outcome(p, "no-conflict", "no conflict there: nothing to do")
        for p in paths
        if p not in listed
    ]
    if args.output != "table":
        print(dump({"take": args.take, "paths": [o.as_json() for o in outcomes]}, args.output))
    else:
        if not outcomes:
            print("no conflicts: nothing to do")
        for o in outcomes:
            print(
                f"{o.path}: {o.message}", file=sys.stderr if o.result == "refused" else sys.stdout
            )
    refused = [o for o in outcomes if o.result == "refused"]
    if refused:
        raise PermanentError(f"{len(refused)} of {len(outcomes)} path(s) not settled (see above)")
    return 0
