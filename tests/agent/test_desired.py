"""The pure desired-state function, as tables of named cases."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from devstack.agent.desired import (
    AgentSettings,
    ObjectRef,
    copy_from_service,
    desired_state,
)
from devstack.core.routing import RouteSettings

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
    assert not isinstance(parsed, type(None)) and getattr(parsed, "port", None) == 8080
    chosen = copy_from_service(
        svc("a", "shop", ports=two, annotations={"devstack.dev/port": "grpc"})
    )
    assert getattr(chosen, "port", None) == 9000
    first = copy_from_service(svc("a", "shop", ports=[{"port": 7}, {"port": 8}]))
    assert getattr(first, "port", None) == 7


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
