"""Declared spec -> desired resources: names, order, tags, properties."""

from __future__ import annotations

import pytest

from devstack.provision import names, spec
from devstack.provision.desired import desired_state


def build(raw: dict[str, object], owner: str = "") -> list[tuple[str, str, str]]:
    s = spec.parse(raw, owner=owner)
    return [(d.kind, d.declared, d.physical) for d in desired_state(s, owner=owner, release="r")]


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        ("", [("sqs", "jobs-dlq", "jobs-dlq"), ("sqs", "jobs", "jobs"), ("sqs", "o", "o.fifo")]),
        (
            "alice",
            [
                ("sqs", "jobs-dlq", "alice-jobs-dlq"),
                ("sqs", "jobs", "alice-jobs"),
                ("sqs", "o", "alice-o.fifo"),
            ],
        ),
    ],
)
def test_queue_names_and_order(owner: str, expected: list[tuple[str, str, str]]) -> None:
    raw = {
        "sqs": [{"name": "jobs", "deadLetter": {"maxReceiveCount": 3}}, {"name": "o", "fifo": True}]
    }
    assert build(raw, owner) == expected


def test_a_declared_dead_letter_queue_is_created_first() -> None:
    raw = {
        "sqs": [
            {"name": "main", "deadLetter": {"maxReceiveCount": 3, "queue": "dead"}},
            {"name": "dead"},
        ]
    }
    assert [d[1] for d in build(raw)] == ["dead", "main"]
    s = spec.parse(raw)
    main = desired_state(s, owner="bob", release="r")[1]
    assert main.props["deadLetter"] == {"queue": "bob-dead", "maxReceiveCount": 3}


def test_owner_prefixes_every_kind_and_tags_are_ownership() -> None:
    raw = {
        "s3": [{"name": "upl"}],
        "sns": [{"name": "ev"}],
        "dynamodb": [{"name": "tbl", "hashKey": {"name": "id", "type": "S"}}],
        "secrets": [{"name": "pw"}],
        "parameters": [{"name": "/app/x", "value": "1"}, {"name": "flat", "value": "1"}],
    }
    s = spec.parse(raw, owner="alice")
    desired = desired_state(s, owner="alice", release="shop")
    assert [d.physical for d in desired] == [
        "alice-upl", "alice-ev", "alice-tbl", "alice-pw", "/alice/app/x", "alice-flat",
    ]  # fmt: skip
    for d in desired:
        assert d.tags == {
            names.TAG_MANAGED_BY: "devstack",
            names.TAG_RELEASE: "shop",
            names.TAG_OWNER: "alice",
        }
    baseline = desired_state(spec.parse(raw), owner="", release="shop")
    assert [d.physical for d in baseline] == ["upl", "ev", "tbl", "pw", "/app/x", "flat"]
    assert names.TAG_OWNER not in baseline[0].tags


def test_secure_parameters_and_secret_values_are_marked_secret() -> None:
    raw = {
        "secrets": [{"name": "pw", "value": "v"}],
        "parameters": [
            {"name": "p", "value": "1", "type": "SecureString"},
            {"name": "q", "value": "1"},
        ],
    }
    d = desired_state(spec.parse(raw), owner="", release="r")
    assert [x.secret for x in d] == [frozenset({"value"}), frozenset({"value"}), frozenset()]


@pytest.mark.parametrize(
    ("declared", "token"),
    [
        ("jobs", "JOBS"),
        ("jobs-dlq", "JOBS_DLQ"),
        ("/app/feature-flag", "APP_FEATURE_FLAG"),
        ("a.b_c", "A_B_C"),
    ],
)
def test_env_tokens(declared: str, token: str) -> None:
    assert names.env_token(declared) == token


@pytest.mark.parametrize(
    ("owner", "ok"),
    [
        ("", True),
        ("alice", True),
        ("a-1", True),
        ("Alice", False),
        ("-a", False),
        ("a" * 31, False),
    ],
)
def test_owner_names(owner: str, ok: bool) -> None:
    assert (names.check_owner(owner) is None) is ok


def test_belongs_to_needs_release_and_owner() -> None:
    tags = names.ownership_tags("shop", "alice")
    assert names.belongs_to(tags, "shop", "alice")
    assert not names.belongs_to(tags, "shop", "")
    assert not names.belongs_to(tags, "other", "alice")
    assert not names.belongs_to(names.ownership_tags("shop", ""), "shop", "alice")
    assert not names.belongs_to({names.TAG_RELEASE: "shop"}, "shop", "")
