"""The one owner rule (devstack.core.owner), used by every place an owner
enters: the CLI, the agent, provisioning and the charts' schemas; and the
order the owner is resolved in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.agent.desired import Problem, copy_from_service
from devstack.core import owner
from devstack.core.owner import OwnerError, check_owner, copy_name, normalise, resolve_owner
from devstack.provision import names

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = [
    REPO / "helm" / "devstack-lib" / "values.schema.json",
    REPO / "examples" / "chart" / "values.schema.json",
]

RULE = "1-20 lowercase letters, digits and single '-' between them (e.g. alice or alice-smith)"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("alice", None),
        ("a", None),
        ("a-1", None),
        ("0x", None),
        ("alice-van-der-berg", None),
        ("a" * 20, None),
        ("a" * 21, f"is 21 characters; an owner is {RULE}"),
        ("", f"must be {RULE}"),
        ("Alice", f"must be {RULE}"),
        ("-a", f"must be {RULE}"),
        ("a-", f"must be {RULE}"),
        ("al--ice", f"must be {RULE}"),
        ("alice.smith", f"must be {RULE}"),
        ("alice_smith", f"must be {RULE}"),
    ],
)
def test_the_rule(value: str, problem: str | None) -> None:
    assert check_owner(value) == problem


def test_empty_is_the_baseline_where_an_owner_is_optional() -> None:
    assert check_owner("", baseline_ok=True) is None
    assert names.check_owner("") is None


@pytest.mark.parametrize("value", ["alice", "a" * 20, "a" * 21, "al--ice", "Alice", "a-"])
def test_every_python_place_uses_the_rule(value: str) -> None:
    expected = check_owner(value)
    assert names.check_owner(value) == expected
    service = {
        "metadata": {
            "name": "shop-x",
            "namespace": "ns",
            "labels": {"devstack.dev/service": "shop", "devstack.dev/owner": value},
        },
        "spec": {"ports": [{"port": 80}]},
    }
    got = copy_from_service(service)
    if expected is None:
        assert not isinstance(got, Problem)
        assert got.owner == value
    else:
        assert isinstance(got, Problem)
        assert got.reason == "bad-owner-label"
        assert got.message == f"devstack.dev/owner={value!r} {expected}"


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_charts_schemas_state_the_same_rule(schema: Path) -> None:
    prop = json.loads(schema.read_text())["properties"]["devstack"]["properties"]["owner"]
    assert prop["maxLength"] == owner.MAX_LENGTH
    assert prop["pattern"] == f"^({owner.PATTERN})?$"


def test_the_helmfile_readers_schema_states_the_same_rule() -> None:
    from devstack.core.helmfile.parse import devstack_schema

    prop = devstack_schema()["properties"]["owner"]
    assert (prop["maxLength"], prop["pattern"]) == (owner.MAX_LENGTH, f"^({owner.PATTERN})?$")


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Alice.Smith", "alice-smith"),
        ("  bob  ", "bob"),
        ("o'brien__jr", "o-brien-jr"),
        ("--x--", "x"),
        ("élodie", "lodie"),
        ("...", ""),
    ],
)
def test_normalise(raw: str, normalised: str) -> None:
    assert normalise(raw) == normalised


@pytest.mark.parametrize(
    ("devstack_owner", "git_email", "user", "expected"),
    [
        ("carol", "alice@example.com", "bob", "carol"),
        (None, "alice@example.com", "bob", "alice"),
        ("", "alice@example.com", "bob", "alice"),
        (None, "Alice.Smith+dev@example.com", "bob", "alice-smith"),
        (None, None, "bob", "bob"),
        (None, "", "Bob", "bob"),
        # a local part too long for the rule falls through to $USER
        (None, "christopher.whitehead-jones@example.com", "chris", "chris"),
        (None, "@example.com", "bob", "bob"),
    ],
)
def test_resolution_order(
    devstack_owner: str | None, git_email: str | None, user: str | None, expected: str
) -> None:
    got = resolve_owner(devstack_owner=devstack_owner, git_email=git_email, user=user)
    assert got == expected


def test_an_invalid_devstack_owner_is_an_error_not_a_fallback() -> None:
    with pytest.raises(OwnerError) as caught:
        resolve_owner(devstack_owner="a" * 25, git_email="alice@example.com", user="bob")
    assert str(caught.value) == (
        f"DEVSTACK_OWNER={'a' * 25!r} gives owner {'a' * 25!r}, which is 25 characters; "
        f"an owner is {RULE}; set DEVSTACK_OWNER to a valid owner"
    )


def test_no_valid_owner_says_what_was_tried_and_the_fix() -> None:
    with pytest.raises(OwnerError) as caught:
        resolve_owner(devstack_owner=None, git_email="___@example.com", user=None)
    assert str(caught.value) == (
        "no owner: DEVSTACK_OWNER is not set, git user.email gives '', which must be "
        f"{RULE}; $USER is not set; set DEVSTACK_OWNER to {RULE}"
    )


def test_owner_from_environment_prefers_devstack_owner() -> None:
    assert owner.owner_from_environment({"DEVSTACK_OWNER": "Dana", "USER": "x"}) == "dana"


def test_copy_names_fit_the_library_charts_prefix() -> None:
    assert copy_name("checkout", "alice") == "checkout--alice"
    assert copy_name("s" * 18, "o" * 20) == "s" * 18 + "--" + "o" * 20
    with pytest.raises(OwnerError) as caught:
        copy_name("s" * 19, "o" * 20)
    assert str(caught.value) == (
        f"the copy name {'s' * 19 + '--' + 'o' * 20!r} is 41 characters; the service's name "
        "and the owner together may have 38 (shorten the release name or set DEVSTACK_OWNER "
        "to a shorter owner)"
    )
