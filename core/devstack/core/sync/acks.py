"""Acknowledgement bookkeeping of ``devstack connect`` (pure): what the
sidecar's answer to a batch means for the laptop's picture of the
workspace, and what the person is told.

For each op of the batch, the :class:`Ack` either lists a :class:`Problem`
for its path or not:

- **not listed**: applied. The picture of the workspace takes the change,
  and whatever was held or reported for the path is settled;
- **a conflict** (:attr:`Reason.conflict`: the workspace holds something sync
  may not change): the picture takes what the workspace holds, and the path
  is *held*: the planner leaves it alone until either side changes again;
- **changed while it was sent** (``DIGEST_MISMATCH``, ``INCOMPLETE``,
  ``CHANGED_MEANWHILE``): nothing is held, the path is looked at again;
- **a refusal** (a symlink that leads out of the workspace, an unsafe path,
  a full disk, ...): held as well, and reported once, with the sidecar's
  reason and its fix; not again every round.

An Ack that could not list every problem (``omitted``) leaves the unlisted
ops unknown: they are recorded neither way, and the caller reads the
workspace again in a new session (:attr:`Recorded.stale`).

After each round, :meth:`Ledger.round_done` keeps the conflict list of the
status line: the plan's conflicts, where a held refusal stays a refusal
(never an "unresolved conflict"), and a held path that needs nothing any
more is settled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from devstack.core.manifest import Entry, Manifest
from devstack.core.plan import Action, Change, Conflict, apply_to
from devstack.core.sync.model import Reason

#: The workspace changed what was sent while it was sent: look at it again.
_SEND_AGAIN: Final = frozenset(
    {Reason.DIGEST_MISMATCH, Reason.INCOMPLETE, Reason.CHANGED_MEANWHILE}
)
#: Ops counted as a file synced.
_FILES: Final = frozenset({Action.WRITE, Action.SYMLINK, Action.RENAME})

#: A held path: (the laptop's entry, the workspace's entry) when it was held.
Held = dict[str, tuple[Entry | None, Entry | None]]


@dataclass(frozen=True)
class Problem:
    """Why the sidecar did not apply one op: its reason, its sentence, the
    fix for a person (empty: :attr:`Reason.fix`) and, for a conflict, what
    the workspace holds now (None: nothing)."""

    path: str
    reason: Reason
    message: str
    fix: str = ""
    actual: Entry | None = None

    @property
    def advice(self) -> str:
        return self.fix or self.reason.fix

    def describe(self) -> str:
        """One line: the sidecar's sentence and the fix."""
        message = self.message or self.reason.value.replace("-", " ")
        advice = self.advice
        return f"{message} — fix: {advice}" if advice else message


@dataclass(frozen=True)
class Ack:
    """A batch's acknowledgement: the problems it lists (by path) and how
    many more it could not list."""

    seq: int
    problems: tuple[Problem, ...] = ()
    omitted: int = 0


@dataclass
class Stats:
    """What a ``connect`` run did so far (the status line). ``conflicts`` and
    ``problems`` (refusals) map a path to the sentence to show."""

    files_synced: int = 0
    bytes_sent: int = 0
    rounds: int = 0
    conflicts: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    last_reload: str = ""
    connected: bool = False


@dataclass(frozen=True)
class Recorded:
    """What to do after an Ack: paths to look at again, lines for the person,
    and (``stale``) why the workspace must be read again, if it must."""

    rescan: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()
    stale: str | None = None


@dataclass
class Ledger:
    """The laptop's picture of the workspace (``remote``), the held paths and
    the run's :class:`Stats`, updated from acknowledgements."""

    remote: Manifest = field(default_factory=dict)
    held: Held = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    #: The refusal last told to the person, by path: each is told once.
    told: dict[str, Problem] = field(default_factory=dict)
    #: Refusals are not told as they come (``--once`` lists them at the end).
    quiet: bool = False

    def record(self, ack: Ack, changes: Sequence[Change], local: Manifest) -> Recorded:
        """Book ``ack``, the answer to the batch of ``changes``."""
        problems = {p.path: p for p in ack.problems}
        stats, remote, held = self.stats, self.remote, self.held
        rescan: set[str] = set()
        notes: list[str] = []
        for ch in changes:
            path = ch.path
            prob = problems.get(path) if problems else None
            if prob is None:
                if ack.omitted:
                    continue  # unknown: recorded neither way
                apply_to(remote, ch)
                self._settle(path)
                if ch.action in _FILES:
                    stats.files_synced += 1
                continue
            reason = prob.reason
            if reason.conflict:
                # Remember what the workspace holds; leave the path alone
                # until either side changes again.
                if prob.actual is None:
                    remote.pop(path, None)
                else:
                    remote[path] = prob.actual
                held[path] = (local.get(path), remote.get(path))
                stats.problems.pop(path, None)
                stats.conflicts[path] = prob.message
            elif reason in _SEND_AGAIN:
                stats.problems.pop(path, None)
                rescan.add(path)
            else:
                held[path] = (local.get(path), remote.get(path))
                stats.conflicts.pop(path, None)
                stats.problems[path] = prob.describe()
                if self.told.get(path) != prob:
                    self.told[path] = prob
                    if not self.quiet:
                        notes.append(f"not synced: {path}: {prob.describe()}")
        stale = None
        if ack.omitted:
            # The ops it did not list may or may not have been applied: what
            # was recorded above still holds; the rest comes from a new
            # session's manifest.
            stale = (
                f"batch {ack.seq}: {ack.omitted} more problem(s) than its "
                "acknowledgement could list; reading the workspace again"
            )
        return Recorded(frozenset(rescan), tuple(notes), stale)

    def round_done(
        self,
        conflicts: Iterable[Conflict],
        changes: Iterable[Change],
        scope: frozenset[str] | None,
    ) -> None:
        """Book a round's plan (its conflicts, and the changes it sent) over
        ``scope`` (None: every path)."""
        stats = self.stats
        planned = [c.path for c in conflicts]
        # A held refusal comes back from the planner as a conflict it holds:
        # it stays a refusal, with the sidecar's reason.
        fresh = {c.path: c.reason for c in conflicts if c.path not in stats.problems}
        kept = {p: why for p, why in stats.conflicts.items() if p in self.held}
        stats.conflicts = fresh | kept
        # A held path the plan neither touched nor held needs nothing any
        # more (it was deleted on both sides, it is ignored now, ...).
        busy = set(planned)
        busy.update(c.path for c in changes)
        busy.update(c.from_path for c in changes if c.from_path)
        for path in [p for p in self.held if p not in busy and (scope is None or p in scope)]:
            self._settle(path)

    def _settle(self, path: str) -> None:
        self.held.pop(path, None)
        self.told.pop(path, None)
        self.stats.problems.pop(path, None)
        self.stats.conflicts.pop(path, None)

    def unsynced(self) -> list[tuple[str, str]]:
        """Every path not in sync, and why: the refusals, then the conflicts,
        each in path order."""
        s = self.stats
        return sorted(s.problems.items()) + sorted(
            (p, why) for p, why in s.conflicts.items() if p not in s.problems
        )
