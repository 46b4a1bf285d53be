"""The planner: declared + existing -> actions, in tables of named cases."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.provision import desired as desired_mod
from devstack.provision import names
from devstack.provision.names import PhysicalName
from devstack.provision.plan import (
    ActionKind,
    Change,
    Desired,
    Observed,
    diff,
    plan,
    teardown_order,
)
from devstack.provision.spec import Parameter

OURS = names.ownership_tags("shop", "alice")
BASELINE = names.ownership_tags("shop", "")


def queue(props: dict[str, Any], **kw: Any) -> Desired:
    return Desired(
        kind="sqs",
        declared="jobs",
        physical=PhysicalName("alice-jobs"),
        props=props,
        immutable=frozenset({"fifo"}),
        tags=OURS,
        **kw,
    )


def seen(props: dict[str, Any], tags: dict[str, str] = OURS, kind: str = "sqs") -> Observed:
    return Observed(kind=kind, physical=PhysicalName("alice-jobs"), props=props, tags=tags)


CASES = [
    ("missing: create", queue({"fifo": False}), None, ActionKind.CREATE, [], []),
    (
        "same: unchanged (extra attributes that exist are ignored)",
        queue({"fifo": False, "attributes.DelaySeconds": "0"}),
        seen({"fifo": False, "attributes.DelaySeconds": "0", "attributes.MaximumMessageSize": "9"}),
        ActionKind.UNCHANGED,
        [],
        [],
    ),
    (
        "attribute differs: update",
        queue({"fifo": False, "attributes.VisibilityTimeout": "45"}),
        seen({"fifo": False, "attributes.VisibilityTimeout": "30"}),
        ActionKind.UPDATE,
        [Change("attributes.VisibilityTimeout", "30", "45")],
        [],
    ),
    (
        "dead letter removed: update to none",
        queue({"fifo": False, "deadLetter": None}),
        seen({"fifo": False, "deadLetter": {"queue": "q", "maxReceiveCount": 5}}),
        ActionKind.UPDATE,
        [Change("deadLetter", {"queue": "q", "maxReceiveCount": 5}, None)],
        [],
    ),
    (
        "immutable differs: cannot-update, mutable part still made",
        queue({"fifo": True, "attributes.DelaySeconds": "5"}),
        seen({"fifo": False, "attributes.DelaySeconds": "0"}),
        ActionKind.CANNOT_UPDATE,
        [Change("attributes.DelaySeconds", "0", "5")],
        [Change("fifo", False, True)],
    ),
    (
        "someone else's (baseline) resource: foreign",
        queue({"fifo": False, "attributes.DelaySeconds": "5"}),
        seen({"fifo": False, "attributes.DelaySeconds": "0"}, tags=BASELINE),
        ActionKind.FOREIGN,
        [],
        [],
    ),
    (
        "untagged resource: foreign",
        queue({"fifo": False}),
        seen({"fifo": False}, tags={}),
        ActionKind.FOREIGN,
        [],
        [],
    ),
    (
        "another release of the same owner: foreign",
        queue({"fifo": False}),
        seen({"fifo": False}, tags=names.ownership_tags("other", "alice")),
        ActionKind.FOREIGN,
        [],
        [],
    ),
]


@pytest.mark.parametrize(
    ("case", "desired", "observed", "kind", "changes", "blocked"), CASES, ids=[c[0] for c in CASES]
)
def test_plan_one_resource(
    case: str,
    desired: Desired,
    observed: Observed | None,
    kind: ActionKind,
    changes: list[Change],
    blocked: list[Change],
) -> None:
    existing = {} if observed is None else {desired.id: observed}
    p = plan([desired], existing, release="shop", owner="alice")
    (action,) = p.actions
    assert action.kind is kind
    assert list(action.changes) == changes
    assert list(action.blocked) == blocked
    assert p.converged is (kind in (ActionKind.UNCHANGED, ActionKind.FOREIGN))


TABLE = Desired(
    kind="dynamodb",
    declared="orders",
    physical=PhysicalName("orders"),
    props={"hashKey": "id:S", "globalIndexes.a": {"hashKey": "a:S"}},
    immutable=frozenset({"hashKey"}),
    families=frozenset({"globalIndexes."}),
    fixed_members=frozenset({"globalIndexes."}),
)

FAMILY_CASES = [
    (
        "member added",
        {"hashKey": "id:S"},
        [Change("globalIndexes.a", None, {"hashKey": "a:S"})],
        [],
    ),
    (
        "member removed (exists, not declared)",
        {
            "hashKey": "id:S",
            "globalIndexes.a": {"hashKey": "a:S"},
            "globalIndexes.b": {"hashKey": "b:S"},
        },
        [Change("globalIndexes.b", {"hashKey": "b:S"}, None)],
        [],
    ),
    (
        "member changed in place: blocked",
        {"hashKey": "id:S", "globalIndexes.a": {"hashKey": "z:S"}},
        [],
        [Change("globalIndexes.a", {"hashKey": "z:S"}, {"hashKey": "a:S"})],
    ),
    (
        "key changed: blocked",
        {"hashKey": "pk:S", "globalIndexes.a": {"hashKey": "a:S"}},
        [],
        [Change("hashKey", "pk:S", "id:S")],
    ),
]


@pytest.mark.parametrize(
    ("case", "existing", "changes", "blocked"), FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES]
)
def test_diff_property_families(
    case: str, existing: dict[str, Any], changes: list[Change], blocked: list[Change]
) -> None:
    got_changes, got_blocked = diff(TABLE, Observed("dynamodb", PhysicalName("orders"), existing))
    assert (got_changes, got_blocked) == (changes, blocked)


def test_stale_resources_are_those_owned_but_no_longer_declared() -> None:
    d = queue({"fifo": False})
    kept = seen({"fifo": False})
    gone = Observed("sqs", PhysicalName("alice-old"), {}, OURS)
    p = plan([d], {d.id: kept}, release="shop", owner="alice", owned=[kept, gone])
    assert p.stale == (gone,)
    assert p.describe()[-1] == (
        "stale         sqs alice-old: no longer declared; --prune or --teardown removes it"
    )


def test_descriptions_never_show_secret_values() -> None:
    d = Desired(
        kind="secrets",
        declared="pw",
        physical=PhysicalName("pw"),
        props={"value": "new-secret"},
        secret=frozenset({"value"}),
    )
    p = plan([d], {d.id: Observed("secrets", d.physical, {"value": "old-secret"}, BASELINE)},
             release="shop", owner="")  # fmt: skip
    line = p.describe()[0]
    assert line == "update        secrets pw: value: (secret changed)"
    assert "secret" in line and "new-secret" not in line and "old-secret" not in line


@pytest.mark.parametrize(
    ("old_type", "new_type"),
    [("SecureString", "String"), ("String", "SecureString"), ("SecureString", "SecureString")],
)
def test_a_parameter_value_is_masked_when_secret_on_either_side(
    old_type: str, new_type: str
) -> None:
    """The applier marks a SecureString's value secret as it exists; the spec marks
    it as declared. Turning a SecureString into a String must not print the old
    secret, and the reverse must not print the new one."""
    d = desired_mod.parameter(
        Parameter(name="/app/token", value="plain-now", type=new_type), owner="", tags=BASELINE
    )
    o = Observed(
        "parameters",
        d.physical,
        {"value": "s3cret-before", "type": old_type, "description": ""},
        BASELINE,
        secret=frozenset({"value"}) if old_type == "SecureString" else frozenset(),
    )
    (line,) = plan([d], {d.id: o}, release="shop", owner="").describe()
    assert "s3cret-before" not in line and "plain-now" not in line
    assert "value: (secret changed)" in line


def test_teardown_order_removes_subscribers_first() -> None:
    def o(kind: str, name: str, props: dict[str, Any] | None = None) -> Observed:
        return Observed(kind, PhysicalName(name), props or {}, OURS)

    owned = [
        o("parameters", "/p"),
        o("sqs", "jobs-dlq", {"deadLetter": None}),
        o("s3", "b"),
        o("sqs", "jobs", {"deadLetter": {"queue": "jobs-dlq", "maxReceiveCount": 1}}),
        o("sns", "events"),
    ]
    assert [x.physical for x in teardown_order(owned)] == ["events", "jobs", "jobs-dlq", "b", "/p"]
