"""The routing-key model: parsing, exact matching, rule expressions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.core.routing import (
    BAGGAGE_MAX_BYTES,
    BAGGAGE_MAX_MEMBERS,
    RouteSettings,
    RoutingError,
    baggage_member_regexp,
    baggage_members,
    baggage_of,
    baggage_rule,
    crd_group_for,
    host_rule,
    is_dns_label,
    merge_baggage,
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
        pytest.param("", "devstack-route=alice", id="empty"),
        pytest.param("a=1", "devstack-route=alice,a=1", id="added-first"),
        pytest.param(
            "tenant=t1,devstack-route=alice;p=1,user=a%20b",
            "tenant=t1,devstack-route=alice;p=1,user=a%20b",
            id="already-set-kept-verbatim",
        ),
        pytest.param(
            "a=1,devstack-route=bob;p=2,b=2", "a=1,devstack-route=alice,b=2", id="replaced-in-place"
        ),
        pytest.param(
            "a=1,devstack-route=,b=2", "a=1,devstack-route=alice,b=2", id="empty-member-set"
        ),
        pytest.param(
            "devstack-route=bob,a=1,devstack-route=alice;x,devstack-route=carol",
            "devstack-route=alice,a=1",
            id="one-member-never-two",
        ),
        pytest.param(
            " a = 1 ;p=v;q , b=x%2Cy,c=3;k",
            "devstack-route=alice,a = 1 ;p=v;q,b=x%2Cy,c=3;k",
            id="members-and-properties-as-written",
        ),
        pytest.param(
            'a=1,,bad,=x,q="x",sp=a b,b=2',
            "devstack-route=alice,a=1,b=2",
            id="malformed-members-dropped",
        ),
        pytest.param(
            "xdevstack-route=bob,devstack-routex=bob",
            "devstack-route=alice,xdevstack-route=bob,devstack-routex=bob",
            id="exact-key",
        ),
    ],
)
def test_with_owner_in_baggage(baggage: str | None, result: str) -> None:
    assert with_owner_in_baggage(baggage, "alice") == result
    assert owner_from_baggage(result) == "alice"


def test_with_owner_in_baggage_encodes_the_owner_and_other_keys() -> None:
    assert with_owner_in_baggage("a=1", "a b,c") == "devstack-route=a%20b%2Cc,a=1"
    assert with_owner_in_baggage("devstack-route=a%20b;p", "a b") == "devstack-route=a%20b;p"
    assert with_owner_in_baggage("t=1,team=bob", "al", key="team") == "t=1,team=al"


def _members(n: int, size: int = 3) -> list[str]:
    """``n`` distinct members of ``size`` characters each (``m001=x...``)."""
    return [f"m{i:03d}=".ljust(size, "x") for i in range(n)]


@pytest.mark.parametrize(
    ("members", "kept"),
    [
        pytest.param(_members(179), 179, id="179+key-all-kept"),
        pytest.param(_members(180), 179, id="180+key-one-dropped"),
        pytest.param(_members(250), 179, id="250+key-tail-dropped"),
        # 8192 bytes: "devstack-route=alice" (20) + 81 x (",m000=x..." 1 + 100) = 8201 > 8192
        pytest.param(_members(81, 100), 80, id="bytes-whole-member-dropped"),
        pytest.param([*_members(80, 100), "z=" + "y" * 9000], 80, id="oversized-member-dropped"),
    ],
)
def test_with_owner_in_baggage_keeps_to_the_w3c_limits(members: list[str], kept: int) -> None:
    result = with_owner_in_baggage(",".join(members), "alice")
    out = result.split(",")
    assert out == ["devstack-route=alice", *members[:kept]]  # whole members, in order
    assert len(out) <= BAGGAGE_MAX_MEMBERS
    assert len(result.encode()) <= BAGGAGE_MAX_BYTES


def test_the_routing_member_survives_the_limits_where_it_stands() -> None:
    members = _members(200)
    members[190] = "devstack-route=bob;p=1"
    out = with_owner_in_baggage(",".join(members), "alice").split(",")
    assert out == [*members[:179], "devstack-route=alice"]
    members[190] = "devstack-route=alice;p=1"
    out = with_owner_in_baggage(",".join(members), "alice").split(",")
    assert out == [*members[:179], "devstack-route=alice;p=1"]


@pytest.mark.parametrize(
    ("values", "result"),
    [
        pytest.param((None,), "", id="nothing"),
        pytest.param(("a=1;p, b=2",), "a=1;p,b=2", id="one-as-written"),
        pytest.param(("a=1,b=2", "c=3"), "a=1,b=2,c=3", id="added-at-the-end"),
        pytest.param(("a=1;p,b=2", "a=9"), "a=9,b=2", id="replaced-in-place"),
        pytest.param((None, "a=1"), "a=1", id="no-first"),
        pytest.param(("a=1,bad", None, "b=2,=x"), "a=1,b=2", id="malformed-dropped"),
        pytest.param((",".join(_members(200)),), ",".join(_members(180)), id="limits"),
    ],
)
def test_merge_baggage(values: tuple[str | None, ...], result: str) -> None:
    assert merge_baggage(*values) == result


def test_merge_baggage_without_the_limits() -> None:
    assert merge_baggage(",".join(_members(200)), "z=1", limit=False) == ",".join(
        [*_members(200), "z=1"]
    )


@pytest.mark.parametrize(
    ("headers", "baggage"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"Baggage": " a=1 "}, "a=1", id="case-blind"),
        pytest.param([("baggage", "a=1"), ("x", "y"), ("baggage", "b=2")], "a=1,b=2", id="several"),
        pytest.param([("baggage", " ")], None, id="blank"),
        pytest.param({"uberctx-devstack-route": "al"}, None, id="jaeger-is-not-baggage"),
    ],
)
def test_baggage_of(headers: dict[str, str] | list[tuple[str, str]], baggage: str | None) -> None:
    assert baggage_of(headers) == baggage


def test_baggage_members() -> None:
    assert baggage_members(None) == []
    assert baggage_members(" a=1 ;p ,\tb = 2,c=") == ["a=1 ;p", "b = 2", "c="]


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
