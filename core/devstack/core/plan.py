"""Planning a sync: two manifests in, an ordered list of changes out (pure).

The laptop's tree is the source of truth. The sidecar's manifest says what
the workspace holds and, per entry, whether it is what sync last wrote
(``SYNCED``), changed since (``DIRTY``: the app wrote it), or was never
written by sync (``UNTRACKED``: seeded from the image or made by the app).

- Only the difference moves; identical entries that sync does not yet track
  are adopted, which writes nothing.
- A ``DIRTY`` entry that the laptop would change is a conflict, not an
  overwrite, unless the sidecar is a replica or the person forces it.
- Entries only in the workspace are deleted only if sync made them (or in
  replica mode): the pod's own files are never removed behind its back.
- A delete plus a create with the same content is a rename: no bytes move.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from devstack.core.manifest import Entry, Kind, Manifest, SyncState
from devstack.core.paths import depth


class Action(enum.Enum):
    MKDIR = "mkdir"
    WRITE = "write"
    SYMLINK = "symlink"
    DELETE = "delete"
    RENAME = "rename"
    CHMOD = "chmod"
    ADOPT = "adopt"


@dataclass(frozen=True, slots=True)
class Change:
    """One step. ``expected`` is what the workspace must hold at ``path``
    (``None``: nothing) for the sidecar to apply it. For RENAME, ``expected``
    is the entry at ``from_path``."""

    action: Action
    path: str
    entry: Entry | None
    expected: Entry | None
    from_path: str = ""
    force: bool = False


@dataclass(frozen=True, slots=True)
class Conflict:
    """A path the plan will not touch, with why."""

    path: str
    local: Entry | None
    remote: Entry | None
    reason: str


@dataclass(frozen=True)
class Plan:
    changes: list[Change] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.changes

    def bytes_to_send(self) -> int:
        return sum(c.entry.size for c in self.changes if c.action == Action.WRITE and c.entry)


#: A conflict the person has not resolved: (laptop entry, workspace entry)
#: when it was reported. The path stays untouched while both are unchanged.
Held = Mapping[str, tuple[Entry | None, Entry | None]]


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder + "/")


def plan(
    local: Manifest,
    remote: Manifest,
    *,
    replica: bool = False,
    force: bool = False,
    modes: bool = True,
    held: Held | None = None,
    scope: frozenset[str] | None = None,
) -> Plan:
    """Plan the changes that make ``remote`` equal ``local``.

    ``scope``, if given, limits planning to those paths (a watcher's hint);
    ``held`` lists unresolved conflicts to leave alone while neither side
    changed.
    """
    held = held or {}
    paths = (set(local) | set(remote)) if scope is None else set(scope)
    overwrite = replica or force
    kind_changes: list[str] = []
    mkdirs: list[Change] = []
    writes: list[Change] = []
    deletes: dict[str, Entry] = {}
    creates: list[Entry] = []
    conflicts: list[Conflict] = []

    for p in paths:
        lo, re_ = local.get(p), remote.get(p)
        if lo is None and re_ is None:
            continue
        h = held.get(p)
        if h is not None and h[0] == lo and h[1] == re_:
            conflicts.append(Conflict(p, lo, re_, "unresolved conflict"))
            continue
        if lo is None:
            assert re_ is not None
            if re_.state == SyncState.SYNCED or replica or (re_.state == SyncState.DIRTY and force):
                deletes[p] = re_
            elif re_.state == SyncState.DIRTY:
                conflicts.append(
                    Conflict(p, lo, re_, "deleted on the laptop, changed in the workspace")
                )
            continue
        if re_ is None:
            if lo.kind == Kind.DIRECTORY:
                mkdirs.append(Change(Action.MKDIR, p, lo, None))
            else:
                creates.append(lo)
            continue
        if lo.kind != re_.kind:
            if (
                re_.state == SyncState.SYNCED
                or overwrite
                or (re_.state == SyncState.UNTRACKED and re_.kind != Kind.DIRECTORY)
            ):
                kind_changes.append(p)
                if lo.kind == Kind.DIRECTORY:
                    mkdirs.append(Change(Action.MKDIR, p, lo, None))
                else:
                    creates.append(lo)
            else:
                conflicts.append(
                    Conflict(p, lo, re_, f"is a {re_.kind.name.lower()} in the workspace")
                )
            continue
        if lo.same_content(re_):
            if modes and lo.kind != Kind.SYMLINK and lo.mode != re_.mode:
                writes.append(Change(Action.CHMOD, p, lo, re_))
            elif re_.state != SyncState.SYNCED:
                writes.append(Change(Action.ADOPT, p, lo, re_))
            continue
        if re_.state == SyncState.DIRTY and not overwrite:
            conflicts.append(Conflict(p, lo, re_, "changed on the laptop and in the workspace"))
            continue
        action = Action.WRITE if lo.kind == Kind.FILE else Action.SYMLINK
        writes.append(Change(action, p, lo, re_, force=force and re_.state == SyncState.DIRTY))

    # Entries under a path that changes kind go too (their folder is replaced).
    early_deletes: dict[str, Entry] = {}
    if kind_changes:
        for p in kind_changes:
            early_deletes[p] = remote[p]
        changed_dirs = [p for p in kind_changes if remote[p].kind == Kind.DIRECTORY]
        for q, e in remote.items():
            if any(_under(q, d) for d in changed_dirs):
                early_deletes[q] = e
                deletes.pop(q, None)

    # Keep folders that still hold entries the plan leaves in place.
    if deletes:
        kept_dirs: set[str] = set()
        for q in remote:
            if q in deletes or q in early_deletes:
                continue
            parts = q.split("/")
            for i in range(1, len(parts)):
                kept_dirs.add("/".join(parts[:i]))
        for d in [d for d in deletes if d in kept_dirs]:
            del deletes[d]

    # Renames: a delete and a create of the same non-empty content.
    renames: list[Change] = []
    by_digest: dict[bytes, list[str]] = {}
    for q, e in deletes.items():
        if e.kind == Kind.FILE and e.size > 0 and e.state == SyncState.SYNCED:
            by_digest.setdefault(e.digest, []).append(q)
    for lo in sorted(creates, key=lambda e: e.path):
        sources = by_digest.get(lo.digest) if lo.kind == Kind.FILE and lo.size > 0 else None
        if sources:
            src = sources.pop()
            old = deletes.pop(src)
            renames.append(Change(Action.RENAME, lo.path, lo, old, from_path=src))
            if modes and old.mode != lo.mode:
                writes.append(Change(Action.CHMOD, lo.path, lo, replace(old, path=lo.path)))
            continue
        action = Action.WRITE if lo.kind == Kind.FILE else Action.SYMLINK
        writes.append(Change(action, lo.path, lo, None))

    changes: list[Change] = []
    for p in sorted(early_deletes, key=lambda q: (-depth(q), q)):
        changes.append(Change(Action.DELETE, p, None, early_deletes[p]))
    changes += sorted(mkdirs, key=lambda c: (depth(c.path), c.path))
    changes += renames
    changes += sorted(writes, key=lambda c: c.path)
    for p in sorted(deletes, key=lambda q: (-depth(q), q)):
        e = deletes[p]
        changes.append(
            Change(Action.DELETE, p, None, e, force=force and e.state == SyncState.DIRTY)
        )
    conflicts.sort(key=lambda c: c.path)
    return Plan(changes, conflicts)


def apply_to(remote: Manifest, change: Change) -> None:
    """Update the client's picture of the workspace after ``change`` was
    applied (pure bookkeeping on a dict)."""
    if change.action == Action.DELETE:
        remote.pop(change.path, None)
        return
    if change.action == Action.RENAME:
        remote.pop(change.from_path, None)
    assert change.entry is not None
    e = change.entry
    remote[change.path] = replace(e, state=SyncState.SYNCED)
