"""The pure desired-state function, as tables of named cases."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.agent.desired import (
    AgentSettings,
    Copy,
    ObjectRef,
    Problem,
    copy_from_service,
    desired_state,
)
from devstack.core.routing import RouteSettings, owner_from_headers

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def svc(
    name: str,
    service: str | None,
    owner: str | None = None,
    *,
    ns: str = "dev",
    created: str = "2026-01-01T00:00:00Z",
    annotations: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    labels = {}
    if service is not None:
        labels["devstack.dev/service"] = service
    if owner is not None:
        labels["devstack.dev/owner"] = owner
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{ns}-{name}",
            "labels": labels,
            "annotations": annotations or {},
            "creationTimestamp": created,
        },
        "spec": {"ports": ports if ports is not None else [{"name": "http", "port": 80}]},
    }


def names(objects: dict[ObjectRef, Any]) -> list[str]:
    return sorted(f"{r.kind}/{r.namespace}/{r.name}" for r in objects)


CASES = [
    pytest.param([], [], [], id="nothing"),
    pytest.param([svc("plain", None)], [], [], id="unlabelled-service-ignored"),
    pytest.param(
        [svc("shop", "shop")],
        ["IngressRoute/dev/devstack-shop"],
        [],
        id="baseline-only",
    ),
    pytest.param(
        [svc("shop", "shop"), svc("shop-alice", "shop", "alice")],
        [
            "IngressRoute/dev/devstack-shop",
            "IngressRoute/dev/devstack-shop--alice",
            "Middleware/dev/devstack-shop--alice-route",
        ],
        [],
        id="baseline-and-owner",
    ),
    pytest.param(
        [svc("shop-alice", "shop", "alice", ns="alice")],
        ["IngressRoute/alice/devstack-shop--alice", "Middleware/alice/devstack-shop--alice-route"],
        [],
        id="owner-without-baseline-in-own-namespace",
    ),
    pytest.param(
        [svc("shop", "shop"), svc("shop-old", "shop", created="2025-01-01T00:00:00Z")],
        ["IngressRoute/dev/devstack-shop"],
        ["duplicate-copy:shop"],
        id="duplicate-baseline-oldest-wins",
    ),
    pytest.param(
        # Hosts are <service>.<domain>: a baseline is cluster-wide by name, so
        # another namespace cannot claim a second one.
        [
            svc("shop", "shop", ns="team-a"),
            svc("shop", "shop", ns="team-b", created="2026-02-01T00:00:00Z"),
        ],
        ["IngressRoute/team-a/devstack-shop"],
        ["duplicate-copy:shop"],
        id="duplicate-baseline-across-namespaces",
    ),
    pytest.param(
        [
            svc("shop-al", "shop", "al", ns="team-a"),
            svc("shop-al", "shop", "al", ns="team-b", created="2026-02-01T00:00:00Z"),
        ],
        ["IngressRoute/team-a/devstack-shop--al", "Middleware/team-a/devstack-shop--al-route"],
        ["duplicate-copy:shop-al"],
        id="duplicate-owner-copy-across-namespaces",
    ),
    pytest.param(
        [svc("x", "Bad_Name")],
        [],
        ["bad-service-label:x"],
        id="bad-service-label",
    ),
    pytest.param(
        [svc("x", "shop", "Alice")],
        [],
        ["bad-owner-label:x"],
        id="bad-owner-label",
    ),
    pytest.param([svc("x", "shop", ports=[])], [], ["no-port:x"], id="no-port"),
    pytest.param(
        [svc("x", "shop", "al", annotations={"devstack.dev/ttl": "soon"})],
        [],
        ["bad-ttl:x"],
        id="bad-ttl",
    ),
    pytest.param(
        [
            svc("shop", "shop"),
            svc(
                "shop-al",
                "shop",
                "al",
                annotations={"devstack.dev/expires-at": "2026-01-01T11:59:59Z"},
            ),
        ],
        ["IngressRoute/dev/devstack-shop"],
        [],
        id="expired-copy-has-no-routes",
    ),
    pytest.param(
        [svc("shop-al", "shop", "al", annotations={"devstack.dev/ttl": "86400"})],
        ["IngressRoute/dev/devstack-shop--al", "Middleware/dev/devstack-shop--al-route"],
        [],
        id="ttl-not-yet-expired",
    ),
]


@pytest.mark.parametrize(("services", "expected", "problems"), CASES)
def test_desired_objects(
    services: list[dict[str, Any]], expected: list[str], problems: list[str]
) -> None:
    d = desired_state(services, AgentSettings(), NOW)
    assert names(d.objects) == expected
    assert sorted(f"{p.reason}:{p.name}" for p in d.problems) == sorted(problems)


def test_owner_routes_match_the_key_in_either_header_with_higher_priority() -> None:
    d = desired_state(
        [svc("shop", "shop"), svc("shop-alice", "shop", "alice")], AgentSettings(), NOW
    )
    base = d.objects[ObjectRef(kind="IngressRoute", namespace="dev", name="devstack-shop")]
    mine = d.objects[ObjectRef(kind="IngressRoute", namespace="dev", name="devstack-shop--alice")]
    mw = d.objects[ObjectRef(kind="Middleware", namespace="dev", name="devstack-shop--alice-route")]
    assert base["apiVersion"] == "traefik.io/v1alpha1"
    assert base["spec"]["entryPoints"] == ["web"]
    assert [(r["match"], r["priority"]) for r in base["spec"]["routes"]] == [
        ("Host(`shop.localtest.me`)", 1000),
        ("Host(`shop.preview.localtest.me`)", 1000),
    ]
    routes = mine["spec"]["routes"]
    assert routes[0]["match"].startswith("Host(`shop.localtest.me`) && HeaderRegexp(`baggage`")
    assert routes[1]["match"] == (
        "Host(`shop.localtest.me`) && Header(`x-devstack-route`, `alice`)"
        " && !HeaderRegexp(`baggage`, `(^|,)[ \\t]*devstack-route[ \\t]*=[ \\t]*[^ \\t,;]`)"
    )
    assert routes[2]["match"] == "Host(`shop--alice.preview.localtest.me`)"
    assert routes[0]["priority"] > routes[1]["priority"] > base["spec"]["routes"][0]["priority"]
    assert routes[2]["middlewares"] == [{"name": "devstack-shop--alice-route", "namespace": "dev"}]
    assert all(r["services"] == [{"name": "shop-alice", "port": 80}] for r in routes)
    assert mw["spec"] == {
        "headers": {
            "customRequestHeaders": {
                "baggage": "devstack-route=alice",
                "x-devstack-route": "alice",
            }
        }
    }
    assert mine["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "name": "shop-alice",
            "uid": "uid-dev-shop-alice",
            "controller": True,
        }
    ]
    assert mine["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "devstack",
        "devstack.dev/service": "shop",
        "devstack.dev/owner": "alice",
    }


@pytest.mark.parametrize(
    ("settings", "api_version", "fragment"),
    [
        pytest.param(
            AgentSettings(traefik_version="2.10"),
            "traefik.io/v1alpha1",
            "HeadersRegexp(",
            id="2.10",
        ),
        pytest.param(
            AgentSettings(traefik_version="2.9"),
            "traefik.containo.us/v1alpha1",
            "HeadersRegexp(`baggage`",
            id="2.9",
        ),
        pytest.param(
            AgentSettings(route=RouteSettings(baggage_style="jaeger")),
            "traefik.io/v1alpha1",
            "Header(`uberctx-devstack-route`, `alice`)",
            id="jaeger",
        ),
    ],
)
def test_traefik_flavours(settings: AgentSettings, api_version: str, fragment: str) -> None:
    d = desired_state([svc("shop-alice", "shop", "alice")], settings, NOW)
    route = d.objects[ObjectRef(kind="IngressRoute", namespace="dev", name="devstack-shop--alice")]
    assert route["apiVersion"] == api_version
    assert fragment in route["spec"]["routes"][0]["match"]


def test_port_selection() -> None:
    two = [{"name": "grpc", "port": 9000}, {"name": "http", "port": 8080}]
    parsed = copy_from_service(svc("a", "shop", ports=two))
    assert isinstance(parsed, Copy) and parsed.port == 8080
    chosen = copy_from_service(
        svc("a", "shop", ports=two, annotations={"devstack.dev/port": "grpc"})
    )
    assert isinstance(chosen, Copy) and chosen.port == 9000
    first = copy_from_service(svc("a", "shop", ports=[{"port": 7}, {"port": 8}]))
    assert isinstance(first, Copy) and first.port == 7
    missing = copy_from_service(
        svc("a", "shop", ports=two, annotations={"devstack.dev/port": "metrics"})
    )
    assert isinstance(missing, Problem) and missing.reason == "no-port"


def test_routes_view_and_expiry() -> None:
    soon = "2026-01-01T12:30:00Z"
    d = desired_state(
        [
            svc("shop", "shop"),
            svc("shop-al", "shop", "al", annotations={"devstack.dev/expires-at": soon}),
            svc("shop-bo", "shop", "bo", annotations={"devstack.dev/ttl": "60"}),
        ],
        AgentSettings(domain="dev.example", preview_domain="pr.example"),
        NOW,
    )
    (view,) = [r.as_json() for r in d.routes]
    assert view["host"] == "shop.dev.example"
    assert view["preview_url"] == "http://shop.pr.example"
    assert [
        (o["owner"], o["preview_url"], o["expires_at"], o["expired"]) for o in view["owners"]
    ] == [
        ("al", "http://shop--al.pr.example", "2026-01-01T12:30:00Z", False),
        ("bo", "http://shop--bo.pr.example", "2026-01-01T00:01:00Z", True),
    ]
    assert [c.name for c in d.expired] == ["shop-bo"]
    assert d.next_expiry == datetime.datetime(2026, 1, 1, 12, 30, tzinfo=datetime.UTC)


def test_desired_state_is_a_pure_function_of_its_input() -> None:
    services = [svc("shop", "shop"), svc("shop-alice", "shop", "alice")]
    a = desired_state(services, AgentSettings(), NOW)
    b = desired_state(list(reversed(services)), AgentSettings(), NOW)
    assert a == b


# --- Traefik and the propagation helpers agree on whose request it is ----------------

_TERM = re.compile(r"(!?)(\w+)\((.*)\)")
_ARG = re.compile(r"`([^`]*)`")


def rule_matches(rule: str, host: str, headers: list[tuple[str, str]]) -> bool:
    """Evaluate a generated rule the way Traefik does, for the matchers the
    agent uses (``a && b && !c``; any header value may match; ``*Regexp``
    is an unanchored search, and our expressions are RE2 that Python's re
    reads alike)."""
    for term in rule.split(" && "):
        m = _TERM.fullmatch(term.strip())
        assert m is not None, term
        negate, name, args = m.group(1) == "!", m.group(2), _ARG.findall(m.group(3))
        values = [v for k, v in headers if k.lower() == args[0].lower()]
        if name == "Host":
            ok = host == args[0]
        elif name in ("Header", "Headers"):
            ok = args[1] in values
        elif name in ("HeaderRegexp", "HeadersRegexp"):
            ok = any(re.search(args[1], v) for v in values)
        else:
            raise AssertionError(f"a matcher this check does not know: {name}")
        if ok is negate:
            return False
    return True


def routed_to(objects: dict[ObjectRef, Any], host: str, headers: list[tuple[str, str]]) -> str:
    """The Service the highest-priority matching route sends a request to."""
    matching = [
        (route["priority"], route["services"][0]["name"])
        for ref, obj in objects.items()
        if ref.kind == "IngressRoute"
        for route in obj["spec"]["routes"]
        if rule_matches(route["match"], host, headers)
    ]
    assert matching, "no route matches"
    top = max(p for p, _ in matching)
    winners = {name for p, name in matching if p == top}
    assert len(winners) == 1, f"a tie between {winners}"
    return winners.pop()


COPIES = ("alice", "carol")  # bob and alice2 have no copy
OWNERS = st.sampled_from(["alice", "bob", "carol", "alice2"])
OTHER_MEMBER = st.from_regex(r"[a-z]{1,5}=[a-z0-9]{1,5}(;p=1)?", fullmatch=True)


@st.composite
def w3c_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    members = draw(st.lists(OTHER_MEMBER, max_size=3))
    if draw(st.booleans()):  # at most one routing key, in any spelling
        spelling = draw(st.sampled_from(["{k}={o}", " {k} = {o} ", "{k}={o};p=1"]))
        members.insert(draw(st.integers(0, len(members))), spelling)
    if draw(st.booleans()):  # an empty member carries no key
        members.insert(draw(st.integers(0, len(members))), "{k}=")
    key = draw(OWNERS)
    value = ",".join(members).replace("{k}", "devstack-route").replace("{o}", key)
    headers = [("baggage", value)] if value else []
    if draw(st.booleans()):
        headers.append(("x-devstack-route", draw(OWNERS)))
    return headers


@st.composite
def jaeger_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    headers = []
    if draw(st.booleans()):
        headers.append(("uberctx-devstack-route", draw(st.one_of(OWNERS, st.just(" ")))))
    if draw(st.booleans()):
        headers.append(("x-devstack-route", draw(OWNERS)))
    return headers


def _agree(settings: AgentSettings, headers: list[tuple[str, str]]) -> None:
    services = [svc("shop", "shop"), *(svc(f"shop-{o}", "shop", o) for o in COPIES)]
    objects = desired_state(services, settings, NOW).objects
    owner = owner_from_headers(headers, settings.route)
    expected = f"shop-{owner}" if owner in COPIES else "shop"
    assert routed_to(objects, "shop.localtest.me", headers) == expected


@pytest.mark.parametrize("version", ["3", "2.10"])
@given(headers=w3c_headers())
def test_traefik_and_the_helpers_agree_w3c(version: str, headers: list[tuple[str, str]]) -> None:
    _agree(AgentSettings(traefik_version=version), headers)


@pytest.mark.parametrize("version", ["3", "2.10"])
@given(headers=jaeger_headers())
def test_traefik_and_the_helpers_agree_jaeger(version: str, headers: list[tuple[str, str]]) -> None:
    _agree(
        AgentSettings(traefik_version=version, route=RouteSettings(baggage_style="jaeger")), headers
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], "shop", id="untagged"),
        pytest.param([("x-devstack-route", "alice")], "shop-alice", id="plain"),
        pytest.param([("baggage", "devstack-route=alice")], "shop-alice", id="baggage"),
        pytest.param(
            [("baggage", "devstack-route=bob"), ("x-devstack-route", "alice")],
            "shop",
            id="baggage-bob-wins-over-plain-alice",
        ),
        pytest.param(
            [("baggage", "devstack-route=carol"), ("x-devstack-route", "alice")],
            "shop-carol",
            id="baggage-carol-wins-over-plain-alice",
        ),
        pytest.param(
            [("baggage", "foo=1,devstack-route="), ("x-devstack-route", "alice")],
            "shop-alice",
            id="empty-member-is-no-key",
        ),
        pytest.param(
            [("baggage", "foo=1"), ("x-devstack-route", "alice")], "shop-alice", id="other-baggage"
        ),
    ],
)
def test_disagreeing_headers_table(headers: list[tuple[str, str]], expected: str) -> None:
    _agree(AgentSettings(), headers)
    services = [svc("shop", "shop"), *(svc(f"shop-{o}", "shop", o) for o in COPIES)]
    objects = desired_state(services, AgentSettings(), NOW).objects
    assert routed_to(objects, "shop.localtest.me", headers) == expected
