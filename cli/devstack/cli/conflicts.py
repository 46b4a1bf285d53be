"""``devstack conflicts [SERVICE]``: each conflict between your laptop's tree
and your copy's workspace, with what differs and how to settle it
(``devstack resolve``, :mod:`devstack.cli.resolve`).

A conflict is a path the app changed in the pod since sync last wrote it
while the laptop holds something else there: sync keeps the pod's version
and reports it (README, "Conflicts"). The sidecar's ``Conflicts`` call gives
the pod's side (each such path's entry, modification time and what sync
last wrote); the laptop's side comes from the local tree.

- :func:`compare`, :func:`as_json`, :func:`format_table`, :func:`resolve_hint`
  and :func:`tree_path` are pure;
- :class:`LaptopTree` is the laptop's side (reads, and the atomic write of
  ``resolve --take pod``), never through a symlinked folder and never
  outside the tree;
- :func:`find_copy` finds the sidecar as ``connect`` and ``test`` do
  (:func:`devstack.cli.workflow_connect.copy_sidecar`), or takes
  ``--to HOST:PORT --token-file FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
import shlex
import stat
import sys
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.cli.exec import SidecarTarget
from devstack.core.errors import ConfigError, PermanentError, UnsafePathError
from devstack.core.manifest import DIGEST_SIZE, Entry, Kind, SyncState, hash_fd, open_regular

#: Seconds the sidecar has to list its side (it scans the workspace).
CONFLICTS_TIMEOUT = 120.0
#: Seconds the sidecar has to settle paths.
RESOLVE_TIMEOUT = 30.0
#: The temporary name ``resolve --take pod`` writes before the rename; the
#: default ignore rules (``.#*``) keep a running ``connect`` from syncing it.
TEMP_PREFIX = ".#devstack-resolve-"
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

EXAMPLES = """examples:
  devstack conflicts web                what differs, path by path, and how to settle it
  devstack conflicts web -o json        the same, for scripts
  devstack conflicts web --tree services/web
                                        the tree you connect from, if not . (or, on the
                                        local stack, the service's source folder)
  devstack conflicts --to 127.0.0.1:7070 --token-file token
                                        any sidecar, by hand (the tree: --tree, default .)

A conflict is a file the app changed in the pod since the last sync while the
laptop holds another version: sync keeps the pod's and reports it. Settle it
with `devstack resolve`:
  devstack resolve web config.yaml --take laptop   the next sync replaces the pod's
  devstack resolve web config.yaml --take pod      the pod's is copied to the laptop
"""


# --- the two sides, compared (pure) ------------------------------------------------------


@dataclass(frozen=True)
class PodSide:
    """The pod's side of one path, from the sidecar's ``Conflicts`` call."""

    path: str
    #: What the workspace holds, with its sync state (None: nothing).
    entry: Entry | None
    mtime_ns: int = 0
    #: What sync last wrote there (None: it never wrote there).
    ancestor: Entry | None = None
    #: The sidecar's report, if a batch reported this conflict.
    message: str = ""


@dataclass(frozen=True)
class LaptopSide:
    """The laptop's side of one path (entry None: nothing there)."""

    entry: Entry | None
    mtime_ns: int = 0


@dataclass(frozen=True)
class Conflict:
    """One conflict: both sides, who changed it since the last sync
    (``laptop``, ``pod`` or ``both``), why, and which ``--take`` works."""

    path: str
    changed_by: str
    reason: str
    laptop: LaptopSide
    pod: PodSide
    #: The sides ``devstack resolve --take`` may keep here.
    takes: tuple[str, ...]


def _kind_name(kind: Kind) -> str:
    return {Kind.FILE: "file", Kind.DIRECTORY: "folder", Kind.SYMLINK: "symlink"}[kind]


def _copyable(path: str, pod: Entry) -> bool:
    """Whether ``resolve --take pod`` can copy the pod's entry back: a file,
    or a symlink whose target stays in the tree (never a folder)."""
    if pod.kind == Kind.FILE:
        return True
    if pod.kind == Kind.SYMLINK:
        from devstack.core.paths import check_link_target

        try:
            check_link_target(path, pod.target)
        except UnsafePathError:
            return False
        return True
    return False


def compare(pod: PodSide, laptop: LaptopSide) -> Conflict | None:
    """The conflict at ``pod.path``, or None when there is none: the pod
    holds nothing there (the laptop's version goes in), holds the laptop's
    content (sync adopts it), or holds what sync last wrote (the laptop's
    version replaces it)."""
    p, lap, anc = pod.entry, laptop.entry, pod.ancestor
    if p is None or p.same_content(lap):
        return None
    if p.state != SyncState.DIRTY and not (p.state == SyncState.UNTRACKED and pod.message):
        return None
    # Since the last sync: created there, deleted, or other content.
    laptop_changed = (lap is not None) if anc is None else not anc.same_content(lap)
    changed_by = "both" if laptop_changed else "pod"
    if lap is None:
        reason = "deleted on the laptop, changed in the pod"
    elif lap.kind != p.kind:
        reason = f"a {_kind_name(lap.kind)} on the laptop, a {_kind_name(p.kind)} in the pod"
    elif anc is None:
        reason = "created on the laptop and in the pod"
    elif laptop_changed:
        reason = "changed on the laptop and in the pod"
    else:
        reason = "changed in the pod"
    takes = ["laptop"]
    if _copyable(pod.path, p) and (lap is None or lap.kind != Kind.DIRECTORY):
        takes.append("pod")
    return Conflict(pod.path, changed_by, reason, laptop, pod, tuple(takes))


def human_size(n: int) -> str:
    """1023 B, 1.5 KiB, 3.2 MiB, ..."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def iso_time(mtime_ns: int) -> str:
    """An mtime as ISO 8601 in UTC, to the second (``""``: unknown)."""
    if not mtime_ns:
        return ""
    t = datetime.fromtimestamp(mtime_ns / 1e9, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def local_time(mtime_ns: int) -> str:
    """An mtime in this machine's time zone, to the second (``""``: unknown)."""
    if not mtime_ns:
        return ""
    return datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _entry_json(entry: Entry | None, mtime_ns: int) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {
        "kind": _kind_name(entry.kind),
        "size": entry.size,
        "mode": f"{entry.mode:04o}",
        "mtime": iso_time(mtime_ns),
        "digest": entry.digest.hex(),
        "target": entry.target,
    }


def take_command(where: str, paths: Sequence[str], take: str) -> str:
    """The ``devstack resolve`` command line for ``paths``."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return f"devstack resolve {where} {quoted} --take {take}".replace("  ", " ")


def as_json(conflicts: Sequence[Conflict], *, where: str) -> dict[str, Any]:
    """What ``-o json|yaml`` prints: every field, zeros and empties too."""
    out = []
    for c in conflicts:
        anc = c.pod.ancestor
        out.append(
            {
                "path": c.path,
                "changed_by": c.changed_by,
                "reason": c.reason,
                "laptop": _entry_json(c.laptop.entry, c.laptop.mtime_ns),
                "pod": _entry_json(c.pod.entry, c.pod.mtime_ns),
                "last_synced": None
                if anc is None
                else {
                    "kind": _kind_name(anc.kind),
                    "digest": anc.digest.hex(),
                    "target": anc.target,
                },
                "sidecar_message": c.pod.message,
                "takes": list(c.takes),
                "hint": take_command(where, [c.path], "|".join(c.takes)),
            }
        )
    return {"count": len(out), "conflicts": out}


def _cell(entry: Entry | None, mtime_ns: int) -> str:
    if entry is None:
        return "(nothing)"
    when = local_time(mtime_ns)
    if entry.kind == Kind.FILE:
        what = f"{human_size(entry.size)}  {entry.digest.hex()[:8]}"
    elif entry.kind == Kind.SYMLINK:
        what = f"-> {entry.target}"
    else:
        what = "folder"
    return f"{what}  {when}".rstrip()


def format_table(conflicts: Sequence[Conflict], *, where: str) -> str:
    """A table (times in this machine's time zone), then how to settle them."""
    if not conflicts:
        return "no conflicts"
    from devstack.cli.cluster_up import table

    rows = [["PATH", "CHANGED BY", "LAPTOP", "POD", "TAKE"]]
    rows += [
        [
            c.path,
            c.changed_by,
            _cell(c.laptop.entry, c.laptop.mtime_ns),
            _cell(c.pod.entry, c.pod.mtime_ns),
            "|".join(c.takes),
        ]
        for c in conflicts
    ]
    return table(rows) + "\n\n" + _settle_lines(len(conflicts), where)


def _settle_lines(count: int, where: str, paths: str = "PATH...") -> str:
    lap = f"devstack resolve {where} {paths} --take laptop".replace("  ", " ")
    pod = f"devstack resolve {where} {paths} --take pod".replace("  ", " ")
    return (
        f"{count} conflict(s). Keep the laptop's version (the next sync replaces the pod's):\n"
        f"  {lap}\n"
        "or the pod's (copied to the laptop):\n"
        f"  {pod}"
    )


def resolve_hint(conflicts: Collection[str], *, where: str = "SERVICE") -> str:
    """How to settle ``conflicts`` (paths; a mapping's keys), for
    ``connect`` to print; ``""`` when there are none. ``where`` names the
    sidecar as the commands take it: the service (plus ``--tree DIR`` if the
    tree is not the default), or ``--to HOST:PORT --token-file FILE``."""
    if not conflicts:
        return ""
    paths = sorted(conflicts)
    shown = " ".join(shlex.quote(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    see = f"devstack conflicts {where}"
    return f"see what differs: {see}\n" + _settle_lines(len(paths), where, shown)


def tree_path(given: str, root: Path, cwd: Path) -> str:
    """A PATH argument as a path of the tree at ``root`` (both absolute):
    relative to the current folder when that is inside the tree (as git
    takes paths), else to the tree's root; an absolute path must lie in the
    tree. ``ConfigError`` for anything outside it."""
    base = cwd if cwd == root or root in cwd.parents else root
    full = Path(os.path.normpath(Path(given) if os.path.isabs(given) else base / given))
    if full != root and root not in full.parents:
        raise ConfigError(
            f"{given}: outside the tree {root} (paths are relative to the tree, or to the "
            "current folder inside it)"
        )
    rel = full.relative_to(root).as_posix()
    if rel == ".":
        raise ConfigError(f"{given}: that is the tree itself; name the paths to resolve")
    from devstack.core.paths import check_relpath

    try:
        return check_relpath(rel)
    except UnsafePathError as e:
        raise ConfigError(f"{given}: {e}") from None


# --- the laptop's tree (I/O) -------------------------------------------------------------


class LaptopTree:
    """The laptop's tree at ``root``: entries read, and files written,
    through folders opened with ``O_NOFOLLOW`` from the root (a path under a
    symlinked folder is not in the tree, as for the scan)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _parent(self, path: str, *, create: bool = False) -> int:
        """The descriptor of ``path``'s folder (the caller closes it);
        ``create`` makes missing folders. ``FileNotFoundError`` if one is
        missing, ``UnsafePathError`` if one is a symlink or not a folder."""
        fd = os.open(self.root, _O_DIR)
        try:
            for i, part in enumerate(path.split("/")[:-1]):
                try:
                    child = os.open(part, _O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    child = os.open(part, _O_DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        folder = "/".join(path.split("/")[: i + 1])
                        raise UnsafePathError(
                            f"{folder!r} on the laptop is a symlink or not a folder: "
                            "nothing is written through it"
                        ) from e
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def look(self, path: str) -> LaptopSide:
        """What is at ``path`` on the laptop (a file with its digest)."""
        try:
            parent = self._parent(path)
        except (FileNotFoundError, NotADirectoryError, UnsafePathError):
            return LaptopSide(None)
        name = path.rsplit("/", 1)[-1]
        try:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return LaptopSide(None)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                entry = Entry(path, Kind.DIRECTORY, 0, stat.S_IMODE(mode))
            elif stat.S_ISLNK(mode):
                target = os.readlink(name, dir_fd=parent)
                entry = Entry(path, Kind.SYMLINK, 0, 0o777, b"", target)
            else:
                opened = open_regular(name, dir_fd=parent)
                if opened is None:  # a fifo, socket or device: never synced
                    return LaptopSide(None)
                fd, st = opened
                try:
                    digest = hash_fd(fd)
                finally:
                    os.close(fd)
                entry = Entry(path, Kind.FILE, st.st_size, stat.S_IMODE(st.st_mode), digest)
            return LaptopSide(entry, st.st_mtime_ns)
        finally:
            os.close(parent)

    async def write(self, path: str, pod: Entry, pieces: AsyncIterator[bytes]) -> int:
        """Put the pod's ``pod`` entry at ``path``: a file from ``pieces``
        (checked against ``pod.digest`` before it goes in place), or a
        symlink; atomically (a temporary file in the same folder, then one
        rename), never onto a folder. Returns the bytes written."""
        parent = self._parent(path, create=True)
        name = path.rsplit("/", 1)[-1]
        tmp = f"{TEMP_PREFIX}{secrets.token_hex(4)}"
        try:
            try:
                now = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and stat.S_ISDIR(now.st_mode):
                raise ConfigError(
                    f"{path}: a folder on the laptop; remove it first, or --take laptop"
                )
            if pod.kind == Kind.SYMLINK:
                os.symlink(pod.target, tmp, dir_fd=parent)
                written = 0
            else:
                kept = now is not None and stat.S_ISREG(now.st_mode)
                mode = stat.S_IMODE(now.st_mode) if now is not None and kept else pod.mode & 0o777
                written = await self._write_file(parent, tmp, mode, pod, pieces)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            return written
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
        finally:
            os.close(parent)

    async def _write_file(
        self, parent: int, tmp: str, mode: int, pod: Entry, pieces: AsyncIterator[bytes]
    ) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=parent)
        try:
            h = hashlib.blake2b(digest_size=DIGEST_SIZE)
            written = 0
            async for data in pieces:
                h.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                written += len(data)
            if h.digest() != pod.digest or written != pod.size:
                raise PermanentError(
                    f"{pod.path}: the pod's copy changed since it was listed "
                    f"({written} bytes read, {pod.size} listed): list the conflicts again"
                )
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        return written


# --- finding the sidecar, and its side (I/O) ---------------------------------------------


@dataclass(frozen=True)
class Copy:
    """The sidecar to ask, the laptop's tree, and how the commands name it."""

    target: SidecarTarget
    tree: Path
    where: str


def add_copy_arguments(parser: argparse.ArgumentParser) -> None:
    """--tree and how to find the sidecar (both ``conflicts`` and ``resolve``)."""
    from devstack.cli.project import add_mode_arguments, add_project_arguments
    from devstack.cli.workflow_connect import add_sidecar_arguments

    parser.add_argument(
        "--tree",
        default=None,
        metavar="DIR",
        help="the laptop's tree, as you pass it to `devstack connect` (default: on the local "
        "stack the service's source folder, else .)",
    )
    add_sidecar_arguments(parser, explicit=True)
    add_mode_arguments(parser)
    add_project_arguments(parser)


def find_copy(args: argparse.Namespace, service: str | None, command: str) -> Copy:
    """Your copy of ``service``'s sidecar, as ``connect SERVICE`` finds it;
    or, with ``--token-file``, the sidecar at ``--to``."""
    from devstack.cli.channel import load_token

    tree_opt = f" --tree {shlex.quote(args.tree)}" if args.tree else ""
    if args.token_file:
        if not args.to:
            raise ConfigError("--token-file needs --to HOST:PORT (the sidecar's address)")
        target = SidecarTarget(args.to, load_token(args.token_file), args.authority, args.tls)
        where = f"--to {args.to} --token-file {shlex.quote(args.token_file)}{tree_opt}"
        return Copy(target, Path(args.tree or "."), where)
    if not service:
        raise ConfigError(
            f"name the service: devstack {command} SERVICE ... "
            f"(or devstack {command} ... --to HOST:PORT --token-file FILE)"
        )
    from devstack.cli.project import load_project
    from devstack.cli.workflow_connect import copy_sidecar, declared_release

    project = load_project(args)
    declared_release(project, service)
    found = copy_sidecar(args, project, service)
    tree = Path(args.tree or found.source or ".")
    return Copy(found, tree, f"{shlex.quote(service)}{tree_opt}")


def checked_tree(copy: Copy) -> Path:
    root = copy.tree
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder (pass the tree you connect with --tree DIR)")
    return root.resolve()


def pod_side(item: Any) -> PodSide:
    """A ``PodEntry`` message as a :class:`PodSide`."""
    from devstack.core.protocol import entry_from_pb

    entry = entry_from_pb(item.entry) if item.HasField("entry") and item.entry.kind else None
    anc = entry_from_pb(item.ancestor) if item.HasField("ancestor") and item.ancestor.kind else None
    return PodSide(item.path, entry, int(item.mtime_ns), anc, item.message)


async def fetch_pod(
    target: SidecarTarget, patterns: Sequence[str], paths: Sequence[str] = ()
) -> tuple[list[PodSide], bool]:
    """The sidecar's side (every candidate, or ``paths``) and whether it
    listed them all."""
    import grpc

    from devstack.cli.channel import open_channel, translate
    from devstack.core.protocol import bearer
    from devstack.sync.v1 import sync_pb2 as pb
    from devstack.sync.v1 import sync_pb2_grpc

    request = pb.ConflictsRequest(ignore=list(patterns), paths=list(paths))
    async with open_channel(target.address, authority=target.authority, tls=target.tls) as ch:
        stub: Any = sync_pb2_grpc.SyncStub(ch)
        try:
            resp = await stub.Conflicts(
                request, metadata=bearer(target.token), timeout=CONFLICTS_TIMEOUT
            )
        except grpc.RpcError as e:
            raise translate(e, target.address) from e
    return [pod_side(i) for i in resp.entries], not resp.truncated


def gather(root: Path, pods: Sequence[PodSide]) -> list[Conflict]:
    """The conflicts among ``pods``, with the laptop's side of each; paths
    the laptop's ignore rules leave out are not synced, so never a conflict."""
    from devstack.core import ignore as ignore_mod

    rules = ignore_mod.load(root)
    laptop = LaptopTree(root)
    out = []
    for pod in pods:
        folder = pod.path.rpartition("/")[0]
        is_dir = pod.entry is not None and pod.entry.kind == Kind.DIRECTORY
        if ignore_mod.for_folder(root, rules, folder).excludes(pod.path, is_dir=is_dir):
            continue
        c = compare(pod, laptop.look(pod.path))
        if c is not None:
            out.append(c)
    return out


def collect(copy: Copy, paths: Sequence[str] = ()) -> tuple[list[Conflict], bool]:
    """The conflicts of ``copy`` (all, or at ``paths``), and whether the
    sidecar listed every candidate."""
    from devstack.core import ignore as ignore_mod

    root = checked_tree(copy)
    patterns = ignore_mod.load(root).patterns
    pods, complete = asyncio.run(fetch_pod(copy.target, patterns, paths))
    return gather(root, pods), complete


# --- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from devstack.cli.project import add_output_argument

    parser.description = (
        "List the conflicts between your tree and your copy's workspace: files the app "
        "changed in the pod since the last sync while the laptop holds another version, "
        "with sizes, times, digests, who changed them, and how to settle them."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "service",
        nargs="?",
        default=None,
        metavar="SERVICE",
        help="the service (a release of the Helmfile); none with --token-file",
    )
    add_copy_arguments(parser)
    add_output_argument(parser)


def run(args: argparse.Namespace) -> int:
    from devstack.cli.cluster_up import dump

    copy = find_copy(args, args.service, "conflicts")
    found, complete = collect(copy)
    if args.output == "table":
        print(format_table(found, where=copy.where))
    else:
        print(dump({**as_json(found, where=copy.where), "complete": complete}, args.output))
    if not complete:
        print(
            "the sidecar listed only part of what changed in the pod: settle these, then "
            "list again",
            file=sys.stderr,
        )
    return 0
