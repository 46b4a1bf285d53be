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
  These rules live in ``devstack.core.sync.conflict``, whose one function
  the sidecar applies to every op whatever the client sends; the plan
  calls the same function, only to follow them.
- A file or symlink that becomes another kind of thing is replaced in one
  op that expects what is there; a folder that becomes a file goes after
  its content, and only if all of it may go.
- A delete plus a create with the same content is a rename: no bytes move.
- The order: deletes that make room, folders, renames, then the writes in
  depth-first path order with each new folder right before its content
  (the sidecar stages a new folder whole), then the other deletes,
  children first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from devstack.core.manifest import Entry, Kind, Manifest, SyncState, make_entry
from devstack.core.paths import depth, folders_above
from devstack.core.sync.conflict import Deed, conflict
from devstack.core.sync.model import OpKind, Reason

#: A change's kind: the one ``OpKind`` (this name is the planner's).
Action = OpKind


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
    hidden: Callable[[str, Entry], bool] | None = None,
) -> Plan:
    """Plan the changes that make ``remote`` equal ``local``.

    ``scope``, if given, limits planning to those paths (a watcher's hint);
    ``held`` lists unresolved conflicts to leave alone while neither side
    changed. ``hidden(path, remote_entry)`` says which workspace entries
    the laptop's scan leaves out (ignored there): the plan never touches
    them. It is asked only about workspace entries that the laptop lacks,
    or holds as a folder where the workspace does not (or the reverse): an
    entry the scan found as the same kind of thing is not hidden.
    """
    held = held or {}
    kind_changes: list[str] = []
    mkdirs: list[Change] = []
    writes: list[Change] = []
    deletes: dict[str, Entry] = {}
    creates: list[Entry] = []
    conflicts: list[Conflict] = []
    k_dir, k_link, k_file = Kind.DIRECTORY, Kind.SYMLINK, Kind.FILE
    synced, dirty = SyncState.SYNCED, SyncState.DIRTY

    def visit(p: str, lo: Entry | None, re_: Entry | None) -> None:
        if re_ is None:
            if lo is None:
                return
        elif (
            hidden is not None
            and (lo is None or (lo.kind == k_dir) != (re_.kind == k_dir))
            and hidden(p, re_)
        ):
            return
        if held:
            h = held.get(p)
            if h is not None and h[0] == lo and h[1] == re_:
                conflicts.append(Conflict(p, lo, re_, "unresolved conflict"))
                return
        if lo is None:
            assert re_ is not None
            why = conflict(Deed.REMOVE, re_, re_.state, replica=replica, force=force)
            if why is None:
                deletes[p] = re_
            elif why.code is Reason.CHANGED_IN_WORKSPACE:  # (the pod's own files stay quietly)
                conflicts.append(
                    Conflict(p, lo, re_, "deleted on the laptop, changed in the workspace")
                )
            return
        if re_ is None:
            if lo.kind == k_dir:
                mkdirs.append(Change(Action.MKDIR, p, lo, None))
            else:
                creates.append(lo)
            return
        if lo.kind != re_.kind:
            if conflict(Deed.REPLACE, re_, re_.state, replica=replica, force=force):
                conflicts.append(
                    Conflict(p, lo, re_, f"is a {re_.kind.name.lower()} in the workspace")
                )
            elif re_.kind == k_dir:  # its content goes first (below), then the folder
                kind_changes.append(p)
                creates.append(lo)
            else:  # replaced in one op, expecting what is there
                forced = force and re_.state == dirty
                if lo.kind == k_dir:
                    mkdirs.append(Change(Action.MKDIR, p, lo, re_, force=forced))
                else:
                    action = Action.WRITE if lo.kind == k_file else Action.SYMLINK
                    writes.append(Change(action, p, lo, re_, force=forced))
            return
        if lo.digest == re_.digest and lo.target == re_.target:  # same content
            if modes and lo.mode != re_.mode and lo.kind != k_link:
                writes.append(Change(Action.CHMOD, p, lo, re_))
            elif re_.state != synced:
                writes.append(Change(Action.ADOPT, p, lo, re_))
            return
        if conflict(Deed.OVERWRITE, re_, re_.state, replica=replica, force=force):
            conflicts.append(Conflict(p, lo, re_, "changed on the laptop and in the workspace"))
            return
        action = Action.WRITE if lo.kind == k_file else Action.SYMLINK
        writes.append(Change(action, p, lo, re_, force=force and re_.state == dirty))

    remote_get = remote.get
    if scope is None:
        for p, lo in local.items():
            re_ = remote_get(p)
            if (  # the common case, in sync already: nothing to do
                re_ is not None
                and re_.state == synced
                and lo.digest == re_.digest
                and lo.kind == re_.kind
                and lo.target == re_.target
                and (lo.mode == re_.mode or not modes or lo.kind == k_link)
                and (not held or p not in held)
            ):
                continue
            visit(p, lo, re_)
        for p in remote.keys() - local.keys():
            visit(p, None, remote[p])
    else:
        local_get = local.get
        for p in scope:
            visit(p, local_get(p), remote_get(p))

    # A folder whose content may not all go stays, and that is a conflict.
    early_deletes: dict[str, Entry] = {}
    for p in kind_changes:
        below = {q: e for q, e in remote.items() if _under(q, p)}
        kept = next(
            (
                q
                for q, e in below.items()
                if conflict(Deed.REMOVE, e, e.state, replica=replica, force=force)
            ),
            None,
        )
        if kept is not None:
            creates = [e for e in creates if e.path != p]
            conflicts.append(
                Conflict(
                    p, local.get(p), remote[p], f"is a folder in the workspace that holds {kept!r}"
                )
            )
            continue
        early_deletes[p] = remote[p]
        for q, e in below.items():
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
                writes.append(Change(Action.CHMOD, lo.path, lo, old._replace(path=lo.path)))
            continue
        action = Action.WRITE if lo.kind == Kind.FILE else Action.SYMLINK
        writes.append(Change(action, lo.path, lo, None))

    changes: list[Change] = []
    for p in sorted(early_deletes, key=lambda q: (-depth(q), q)):
        e = early_deletes[p]
        changes.append(
            Change(Action.DELETE, p, None, e, force=force and e.state == SyncState.DIRTY)
        )
    fresh = _fresh_folders(mkdirs, renames)
    changes += sorted(
        (c for c in mkdirs if c.path not in fresh), key=lambda c: (depth(c.path), c.path)
    )
    changes += renames
    changes += sorted(
        [*writes, *(c for c in mkdirs if c.path in fresh)], key=lambda c: c.path.split("/")
    )
    for p in sorted(deletes, key=lambda q: (-depth(q), q)):
        e = deletes[p]
        changes.append(
            Change(Action.DELETE, p, None, e, force=force and e.state == SyncState.DIRTY)
        )
    conflicts.sort(key=lambda c: c.path)
    return Plan(changes, conflicts)


def _fresh_folders(mkdirs: list[Change], renames: list[Change]) -> set[str]:
    """The new folders (made where nothing is) that go among the writes, each
    right before what goes in it (depth first), so that a batch holds a new
    folder with its content: the sidecar stages such a folder whole and
    renames it into place once, not each file in it. A folder something is
    renamed into stays with the other folders, before the renames."""
    fresh = {c.path for c in mkdirs if c.expected is None}
    for r in renames:
        fresh.difference_update(folders_above(r.path))
    return fresh


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
    remote[change.path] = make_entry((*e[:6], SyncState.SYNCED))  # all but the state
