"""The planner: declared resources + what exists -> actions (pure, no I/O).

A resource is described as flat, comparable properties (``attributes.VisibilityTimeout``,
``subscriptions.<queue>``, ``globalIndexes.<name>``...), built from the spec by
:mod:`devstack.provision.desired` and read back from AWS by the applier into the
same shape. Planning compares the two:

- not there -> ``create``;
- there, but not tagged as this release's and owner's -> ``foreign`` (used as is,
  never changed, never deleted: the baseline's queue is not alice's to touch);
- same properties -> ``unchanged``;
- different mutable properties -> ``update``;
- a property that AWS cannot change in place (a table's keys, a FIFO flag, an
  index's definition) -> ``cannot-update``: the mutable changes are still made,
  the rest is reported.

Resources this release and owner created earlier but no longer declare are
``stale``: reported, and removed by ``--prune`` (the chart's pre-upgrade hook) or
``--teardown``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devstack.provision import names
from devstack.provision.names import PhysicalName


@dataclass(frozen=True, order=True)
class ResourceId:
    """What identifies a resource in AWS: its kind and physical name."""

    kind: str
    physical: PhysicalName

    def __str__(self) -> str:
        return f"{self.kind} {self.physical}"


@dataclass(frozen=True)
class Desired:
    """One declared resource, as it should be."""

    kind: str
    #: The name in the spec (``jobs``; ``jobs-dlq`` for a generated dead-letter queue).
    declared: str
    physical: PhysicalName
    #: Flat properties compared with what exists.
    props: Mapping[str, Any] = field(default_factory=dict)
    #: Properties AWS cannot change after creation.
    immutable: frozenset[str] = frozenset()
    #: Prefixes of property families where keys that exist but are not declared
    #: are removals (``subscriptions.``, ``globalIndexes.``).
    families: frozenset[str] = frozenset()
    #: Prefixes whose members can be added and removed but not changed in place.
    fixed_members: frozenset[str] = frozenset()
    #: Properties whose values are secret: shown as ``(secret)``.
    secret: frozenset[str] = frozenset()
    #: Tags to set on creation (ownership).
    tags: Mapping[str, str] = field(default_factory=dict)
    #: Options used only when creating (a generated secret's length...), never compared.
    create_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> ResourceId:
        return ResourceId(self.kind, self.physical)


@dataclass(frozen=True)
class Observed:
    """One resource as it exists."""

    kind: str
    physical: PhysicalName
    props: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    #: What the outputs need: ``arn``, ``url``...
    ids: Mapping[str, str] = field(default_factory=dict)
    #: Properties whose values are secret as they exist now (a SecureString's
    #: value): never shown, even when the spec makes them plain.
    secret: frozenset[str] = frozenset()

    @property
    def id(self) -> ResourceId:
        return ResourceId(self.kind, self.physical)


#: What a person can do about a stale resource.
STALE_HINT = "no longer declared; --prune or --teardown removes it"


class ActionKind(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    CANNOT_UPDATE = "cannot-update"
    FOREIGN = "foreign"


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    secret: bool = False

    def __str__(self) -> str:
        if self.secret:
            return f"{self.key}: (secret changed)"
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    desired: Desired
    #: Changes to make (``update``, and the mutable part of ``cannot-update``).
    changes: tuple[Change, ...] = ()
    #: Changes AWS cannot make in place (``cannot-update``).
    blocked: tuple[Change, ...] = ()
    observed: Observed | None = None

    def describe(self) -> str:
        """One line for a person."""
        d = self.desired
        head = f"{self.kind.value:<13} {d.kind} {d.declared}"
        if d.physical != d.declared:
            head += f" ({d.physical})"
        if self.kind is ActionKind.FOREIGN and self.observed is not None:
            return f"{head}: exists, {names.describe_owner(self.observed.tags)}; left as is"
        parts = []
        if self.changes:
            parts.append("; ".join(str(c) for c in self.changes))
        if self.blocked:
            parts.append("cannot change in place: " + "; ".join(str(c) for c in self.blocked))
        return f"{head}: {' | '.join(parts)}" if parts else head


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    #: Resources of this release and owner that are no longer declared.
    stale: tuple[Observed, ...] = ()

    def count(self, kind: ActionKind) -> int:
        return sum(1 for a in self.actions if a.kind is kind)

    @property
    def converged(self) -> bool:
        """True when applying it would change nothing."""
        return all(a.kind in (ActionKind.UNCHANGED, ActionKind.FOREIGN) for a in self.actions)

    def describe(self) -> list[str]:
        lines = [a.describe() for a in self.actions]
        lines += [f"{'stale':<13} {o.kind} {o.physical}: {STALE_HINT}" for o in self.stale]
        return lines


def diff(desired: Desired, observed: Observed) -> tuple[list[Change], list[Change]]:
    """(mutable changes, blocked changes) from ``observed`` to ``desired``."""
    keys = set(desired.props)
    keys |= {k for k in observed.props if any(k.startswith(f) for f in desired.families)}
    changes: list[Change] = []
    blocked: list[Change] = []
    for key in sorted(keys):
        new = desired.props.get(key)
        old = observed.props.get(key)
        if new == old:
            continue
        # secret if it is secret on either side: SecureString -> String must not
        # print the old value, String -> SecureString must not print the new one
        change = Change(key, old, new, secret=key in desired.secret or key in observed.secret)
        fixed = any(key.startswith(p) for p in desired.fixed_members)
        if key in desired.immutable or (fixed and old is not None and new is not None):
            blocked.append(change)
        else:
            changes.append(change)
    return changes, blocked


def plan(
    desired: Sequence[Desired],
    observed: Mapping[ResourceId, Observed],
    *,
    release: str,
    owner: str,
    owned: Iterable[Observed] = (),
) -> Plan:
    """The actions that make ``observed`` match ``desired``, in ``desired``'s order.

    ``owned`` is everything found tagged as this release's and owner's; what it
    holds beyond ``desired`` is stale.
    """
    actions: list[Action] = []
    for d in desired:
        o = observed.get(d.id)
        if o is None:
            actions.append(Action(ActionKind.CREATE, d))
            continue
        if not names.belongs_to(o.tags, release, owner):
            actions.append(Action(ActionKind.FOREIGN, d, observed=o))
            continue
        changes, blocked = diff(d, o)
        if blocked:
            kind = ActionKind.CANNOT_UPDATE
        elif changes:
            kind = ActionKind.UPDATE
        else:
            kind = ActionKind.UNCHANGED
        actions.append(Action(kind, d, tuple(changes), tuple(blocked), observed=o))
    wanted = {d.id for d in desired}
    stale = tuple(sorted((o for o in owned if o.id not in wanted), key=lambda o: o.id))
    return Plan(tuple(actions), stale)


#: The order resources are deleted in: subscribers before what they read from.
TEARDOWN_ORDER: tuple[str, ...] = ("sns", "sqs", "s3", "dynamodb", "secrets", "parameters")


def teardown_order(owned: Iterable[Observed]) -> list[Observed]:
    """What to delete, in a safe order: topics (and their subscriptions) first,
    queues that use a dead-letter queue before the dead-letter queue."""
    rank = {k: i for i, k in enumerate(TEARDOWN_ORDER)}

    def key(o: Observed) -> tuple[int, int, str]:
        uses_dlq = 0 if o.props.get("deadLetter") else 1
        return (rank.get(o.kind, len(rank)), uses_dlq, o.physical)

    return sorted(owned, key=key)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return repr(value)
    return str(value)
