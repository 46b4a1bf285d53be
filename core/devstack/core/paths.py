"""Workspace-relative path rules, shared by the laptop and the sidecar (pure).

A sync path is '/'-separated and relative to the sync root. It is never
empty, absolute, or made of '.'/'..' segments; each segment is a valid Linux
file name (no NUL, at most 255 bytes). The top-level name ``.devstack`` is
reserved for the sidecar's own state.
"""

from __future__ import annotations

import posixpath

from devstack.core.errors import UnsafePathError

#: The sidecar keeps its state here, inside the workspace, out of every manifest.
RESERVED_DIR = ".devstack"
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a safe workspace-relative path, else raise.

    >>> check_relpath("src/app.py")
    'src/app.py'
    """
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
    the workspace, judged lexically; else raise."""
    if not target:
        raise UnsafePathError(f"{path!r}: empty symlink target")
    if "\x00" in target:
        raise UnsafePathError(f"{path!r}: NUL byte in symlink target")
    if target.startswith("/"):
        raise UnsafePathError(
            f"{path!r} -> {target!r}: absolute symlink targets leave the workspace"
        )
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafePathError(f"{path!r} -> {target!r}: symlink target leaves the workspace")
    if resolved.split("/")[0] == RESERVED_DIR:
        raise UnsafePathError(f"{path!r} -> {target!r}: symlink into {RESERVED_DIR}/")
    return target


def depth(path: str) -> int:
    return path.count("/")
