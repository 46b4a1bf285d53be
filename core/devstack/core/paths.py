"""Workspace-relative path rules, shared by the laptop and the sidecar (pure).

A sync path is '/'-separated and relative to the sync root. It is never
empty, absolute, or made of '.'/'..' segments; each segment is a valid Linux
file name (no NUL, at most 255 bytes). The top-level name ``.devstack`` is
reserved for the sidecar's own state.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator

from devstack.core.errors import UnsafePathError

#: The sidecar keeps its state here, inside the workspace, out of every manifest.
RESERVED_DIR = ".devstack"
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


#: Segments no sync path may have.
_BAD_SEGMENTS = frozenset(("", ".", ".."))


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a safe workspace-relative path, else raise.

    >>> check_relpath("src/app.py")
    'src/app.py'
    """
    # The common case in a few C calls (the sidecar checks every op's path):
    # ASCII, so a name's bytes are its characters; anything else, or any
    # doubt, goes the whole way below, which also says what is wrong.
    if (
        path
        and path.isascii()
        and path[0] != "/"
        and "\x00" not in path
        and _BAD_SEGMENTS.isdisjoint(parts := path.split("/"))
        and parts[0] != RESERVED_DIR
        and (
            len(path) <= MAX_NAME_BYTES
            or (len(path) <= MAX_PATH_BYTES and max(map(len, parts)) <= MAX_NAME_BYTES)
        )
    ):
        return path
    return _check_relpath_fully(path)


def _check_relpath_fully(path: str) -> str:
    if not path:
        raise UnsafePathError("empty path (the workspace root itself is never changed)")
    if "\x00" in path:
        raise UnsafePathError(f"{path!r}: NUL byte in path")
    if path.startswith("/"):
        raise UnsafePathError(f"{path!r}: absolute paths are not allowed")
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise UnsafePathError(f"{path[:60]!r}...: path longer than {MAX_PATH_BYTES} bytes")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{path!r}: '{part or '//'}' segments are not allowed")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise UnsafePathError(f"{path!r}: a name is longer than {MAX_NAME_BYTES} bytes")
    if parts[0] == RESERVED_DIR:
        raise UnsafePathError(f"{path!r}: {RESERVED_DIR}/ is reserved for the sidecar")
    return path


def parent(path: str) -> str:
    """The parent of a relative path; '' for a top-level entry."""
    return posixpath.dirname(path)


def check_link_target(path: str, target: str) -> str:
    """Return ``target`` if a symlink at ``path`` pointing there stays inside
    the workspace whatever the names along the way turn out to be; else raise.

    The rule that makes this decidable without looking at the disk: ``..``
    segments may only lead the target, and there may be no more of them than
    folders above ``path``. A ``..`` after a name would climb out of wherever
    that name points, which is only the lexical parent if the name is not a
    symlink (``up -> .`` makes ``up/../x`` mean ``../x``).

    >>> check_link_target("a/b/link", "../../c/d")
    '../../c/d'
    """
    if not target:
        raise UnsafePathError(f"{path!r}: empty symlink target")
    if "\x00" in target:
        raise UnsafePathError(f"{path!r}: NUL byte in symlink target")
    if target.startswith("/"):
        raise UnsafePathError(
            f"{path!r} -> {target!r}: absolute symlink targets leave the workspace"
        )
    ups, names = _split_target(path, target)
    if ups > depth(path):
        raise UnsafePathError(f"{path!r} -> {target!r}: symlink target leaves the workspace")
    if ups == depth(path) and names[:1] == [RESERVED_DIR]:
        raise UnsafePathError(f"{path!r} -> {target!r}: symlink into {RESERVED_DIR}/")
    return target


def _split_target(path: str, target: str) -> tuple[int, list[str]]:
    """(number of leading '..', the names after them); raises on a '..'
    after a name."""
    ups = 0
    names: list[str] = []
    for seg in target.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if names:
                raise UnsafePathError(
                    f"{path!r} -> {target!r}: '..' after a name in a symlink target "
                    "(it could climb out through a symlink); use a target with leading "
                    "'..' only"
                )
            ups += 1
        else:
            names.append(seg)
    return ups, names


#: Symlinks followed while resolving one target, as the kernel's limit.
MAX_LINK_HOPS = 40


def resolve_link(path: str, target: str, readlink: Callable[[str], str | None]) -> str | None:
    """Where a symlink at ``path`` with ``target`` ends up, following the
    symlinks along the way as the kernel would: the workspace-relative path
    ('' for the root), or None for a loop. Raises ``UnsafePathError`` if the
    resolution leaves the workspace or enters ``.devstack/``.

    ``readlink(p)`` returns the target of the symlink at the (symlink-free)
    workspace path ``p``, or None if ``p`` is not a symlink or does not
    exist. Pure: the caller decides what the disk holds.
    """
    if target.startswith("/"):
        raise UnsafePathError(
            f"{path!r} -> {target!r}: absolute symlink targets leave the workspace"
        )
    where: list[str] = path.split("/")[:-1]
    pending = target.split("/")
    hops = 0
    while pending:
        seg = pending.pop(0)
        if seg in ("", "."):
            continue
        if seg == "..":
            if not where:
                raise UnsafePathError(
                    f"{path!r} -> {target!r}: resolves outside the workspace "
                    "through the symlinks along its way"
                )
            where.pop()
            continue
        if not where and seg == RESERVED_DIR:
            raise UnsafePathError(f"{path!r} -> {target!r}: resolves into {RESERVED_DIR}/")
        link = readlink("/".join([*where, seg]))
        if link is None:
            where.append(seg)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return None
        if link.startswith("/"):
            raise UnsafePathError(
                f"{path!r} -> {target!r}: resolves outside the workspace "
                f"through the absolute symlink {'/'.join([*where, seg])!r}"
            )
        pending = link.split("/") + pending
    return "/".join(where)


def folders_above(path: str) -> Iterator[str]:
    """The folders ``path`` lies in, the innermost first: ``a/b``, then
    ``a``, for ``a/b/c``; none for a top-level entry."""
    at = path.rfind("/")
    while at > 0:
        yield path[:at]
        at = path.rfind("/", 0, at)


def depth(path: str) -> int:
    """Folders above ``path``: 0 for a top-level entry."""
    return path.count("/")
