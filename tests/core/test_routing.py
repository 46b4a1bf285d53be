"""The routing-key model: parsing, exact matching, rule expressions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.core.routing import (
    RouteSettings,
    RoutingError,
    baggage_member_regexp,
    baggage_rule,
    crd_group_for,
    host_rule,
    is_dns_label,
    owner_from_baggage,
    owner_from_headers,
    parse_baggage,
    parse_traefik_version,
    plain_header_rule,
    route_headers,
    routing_key_present_regexp,
    syntax_for,
    with_owner_in_baggage,
)

W3C = RouteSettings()
JAEGER = RouteSettings(baggage_style="jaeger")


@pytest.mark.parametrize(
    ("value", "members"),
    [
        pytest.param("devstack-route=alice", [("devstack-route", "alice")], id="one"),
        pytest.param(
            "foo=1,devstack-route=alice;p=1",
            [("foo", "1"), ("devstack-route", "alice")],
            id="properties-dropped",
        ),
        pytest.param(" a = 1 ,\tb=2 ", [("a", "1"), ("b", "2")], id="whitespace"),
        pytest.param("a=hello%20world", [("a", "hello world")], id="percent-decoded"),
        pytest.param("novalue,=x,a=1", [("a", "1")], id="malformed-skipped"),
        pytest.param("", [], id="empty"),
    ],
)
def test_parse_baggage(value: str, members: list[tuple[str, str]]) -> None:
    assert parse_baggage(value) == members


@pytest.mark.parametrize(
    ("headers", "owner"),
    [
        pytest.param({}, None, id="untagged"),
        pytest.param({"baggage": "devstack-route=alice"}, "alice", id="baggage"),
        pytest.param({"Baggage": "foo=1,devstack-route=alice;p=1"}, "alice", id="mixed"),
        pytest.param({"x-devstack-route": "alice"}, "alice", id="plain"),
        pytest.param({"X-Devstack-Route": " alice "}, "alice", id="plain-case-blind"),
        pytest.param({"baggage": "devstack-route=alice2"}, "alice2", id="exact-value"),
        pytest.param({"baggage": "xdevstack-route=alice"}, None, id="look-alike-key"),
        pytest.param(
            {"baggage": "devstack-route=alice", "x-devstack-route": "bob"},
            "alice",
            id="baggage-wins",
        ),
        pytest.param({"baggage": "foo=1", "x-devstack-route": "bob"}, "bob", id="fallback"),
        pytest.param({"baggage": "devstack-route="}, None, id="empty-value"),
        pytest.param(
            {"baggage": "devstack-route=,devstack-route=bob"}, "bob", id="first-non-empty-wins"
        ),
        pytest.param(
            {"baggage": "devstack-route= ;p=1", "x-devstack-route": "bob"},
            "bob",
            id="empty-member-is-no-key",
        ),
    ],
)
def test_owner_from_headers_w3c(headers: dict[str, str], owner: str | None) -> None:
    assert owner_from_headers(headers, W3C) == owner


def test_owner_from_headers_reads_several_baggage_headers_as_one_list() -> None:
    pairs = [("baggage", "a=1"), ("baggage", "devstack-route=bob")]
    assert owner_from_headers(pairs, W3C) == "bob"


def test_owner_from_headers_jaeger() -> None:
    assert owner_from_headers({"uberctx-devstack-route": "alice"}, JAEGER) == "alice"
    assert owner_from_headers({"baggage": "devstack-route=alice"}, JAEGER) is None
    assert owner_from_headers({"x-devstack-route": "bob"}, JAEGER) == "bob"


def test_configurable_names() -> None:
    s = RouteSettings(baggage_key="team-route", route_header="x-team")
    assert owner_from_headers({"baggage": "team-route=al"}, s) == "al"
    assert owner_from_headers({"baggage": "devstack-route=al"}, s) is None
    assert owner_from_headers({"x-team": "al"}, s) == "al"
    assert route_headers("al", s) == {"baggage": "team-route=al", "x-team": "al"}


@pytest.mark.parametrize(
    ("baggage", "result"),
    [
        pytest.param(None, "devstack-route=alice", id="none"),
        pytest.param("a=1", "devstack-route=alice,a=1", id="kept"),
        pytest.param(
            "a=1,devstack-route=bob;p=2,b=2", "devstack-route=alice,a=1,b=2", id="replaced"
        ),
    ],
)
def test_with_owner_in_baggage(baggage: str | None, result: str) -> None:
    assert with_owner_in_baggage(baggage, "alice") == result


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        ("devstack-route=alice", True),
        ("foo=1,devstack-route=alice;p=1", True),
        ("foo=1, devstack-route = alice ,bar=2", True),
        ("devstack-route=alice;a=b;c", True),
        ("devstack-route=alice2", False),
        ("devstack-route=xalice", False),
        ("xdevstack-route=alice", False),
        ("foo=devstack-route=alice", False),
        ("foo=1;devstack-route=alice", False),
        ("devstack-route=bob,other=alice", False),
        ("", False),
    ],
)
def test_the_baggage_regexp_matches_exactly(value: str, matches: bool) -> None:
    # The expression uses only RE2 syntax that Python's re shares.
    assert bool(re.search(baggage_member_regexp("alice"), value)) is matches


@given(
    owner=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True),
    other=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True),
    before=st.lists(st.from_regex(r"[a-z]{1,5}=[a-z0-9]{1,5}", fullmatch=True), max_size=3),
    after=st.lists(st.from_regex(r"[a-z]{1,5}=[a-z0-9]{1,5}", fullmatch=True), max_size=3),
)
def test_regexp_and_parser_agree(
    owner: str, other: str, before: list[str], after: list[str]
) -> None:
    value = ",".join([*before, f"devstack-route={other}", *after])
    parsed = owner_from_baggage(value)
    assert bool(re.search(baggage_member_regexp(owner), value)) is (parsed == owner)


@pytest.mark.parametrize(
    ("value", "carries_a_key"),
    [
        ("devstack-route=bob", True),
        ("foo=1, devstack-route = bob ;p=1", True),
        ("devstack-route=%20", True),
        ("devstack-route=", False),
        ("devstack-route= ;p=1", False),
        ("devstack-route=,foo=1", False),
        ("xdevstack-route=bob", False),
        ("foo=devstack-route=bob", False),
        ("foo=1;devstack-route=bob", False),
        ("", False),
    ],
)
def test_the_key_present_regexp_agrees_with_the_parser(value: str, carries_a_key: bool) -> None:
    assert bool(re.search(routing_key_present_regexp(W3C), value)) is carries_a_key
    assert (owner_from_baggage(value) is not None) is carries_a_key


@pytest.mark.parametrize(("value", "carries_a_key"), [("bob", True), (" ", False), ("", False)])
def test_the_key_present_regexp_jaeger(value: str, carries_a_key: bool) -> None:
    assert bool(re.search(routing_key_present_regexp(JAEGER), value)) is carries_a_key
    headers = {"uberctx-devstack-route": value}
    assert (owner_from_headers(headers, JAEGER) is not None) is carries_a_key


def test_v3_rules() -> None:
    assert host_rule("shop.localtest.me") == "Host(`shop.localtest.me`)"
    assert baggage_rule("alice", W3C) == (
        "HeaderRegexp(`baggage`, "
        r"`(^|,)[ \t]*devstack-route[ \t]*=[ \t]*alice[ \t]*(;[^,]*)?(,|$)`)"
    )
    assert plain_header_rule("alice", W3C) == (
        "Header(`x-devstack-route`, `alice`) && !HeaderRegexp(`baggage`, "
        r"`(^|,)[ \t]*devstack-route[ \t]*=[ \t]*[^ \t,;]`)"
    )
    assert baggage_rule("alice", JAEGER) == "Header(`uberctx-devstack-route`, `alice`)"
    assert plain_header_rule("alice", JAEGER) == (
        r"Header(`x-devstack-route`, `alice`) && !HeaderRegexp(`uberctx-devstack-route`, `[^ \t]`)"
    )


def test_v2_rules() -> None:
    assert baggage_rule("alice", W3C, syntax="v2").startswith("HeadersRegexp(`baggage`, ")
    assert plain_header_rule("alice", W3C, syntax="v2") == (
        "Headers(`x-devstack-route`, `alice`) && !HeadersRegexp(`baggage`, "
        r"`(^|,)[ \t]*devstack-route[ \t]*=[ \t]*[^ \t,;]`)"
    )
    assert (
        baggage_rule("alice", JAEGER, syntax="v2") == "Headers(`uberctx-devstack-route`, `alice`)"
    )


def test_a_backquote_cannot_break_out_of_a_rule() -> None:
    with pytest.raises(RoutingError):
        host_rule("evil`) || Host(`x")


@pytest.mark.parametrize(
    ("version", "parsed", "syntax", "group"),
    [
        ("3", (3, 0), "v3", "traefik.io"),
        ("3.7", (3, 7), "v3", "traefik.io"),
        ("v2.11.3", (2, 11), "v2", "traefik.io"),
        ("2.10", (2, 10), "v2", "traefik.io"),
        ("2.9", (2, 9), "v2", "traefik.containo.us"),
    ],
)
def test_traefik_versions(version: str, parsed: tuple[int, int], syntax: str, group: str) -> None:
    assert parse_traefik_version(version) == parsed
    assert syntax_for(version) == syntax
    assert crd_group_for(version) == group


@pytest.mark.parametrize("version", ["1.7", "latest", "", "3.x"])
def test_bad_traefik_versions(version: str) -> None:
    with pytest.raises(RoutingError):
        parse_traefik_version(version)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"baggage_key": "has space"},
        {"route_header": "bad:header"},
        {"baggage_style": "b3"},
        {"route_header": "baggage"},
    ],
)
def test_bad_settings(kwargs: dict[str, str]) -> None:
    with pytest.raises(RoutingError):
        RouteSettings(**kwargs)  # type: ignore[arg-type]


def test_dns_labels() -> None:
    assert is_dns_label("alice")
    assert is_dns_label("a-1")
    assert not is_dns_label("Alice")
    assert not is_dns_label("-a")
    assert not is_dns_label("a" * 64)
