"""The agent's objects as Traefik file-provider configuration (pure)."""

from __future__ import annotations

import datetime
from typing import Any

from devstack.agent.desired import AgentSettings, desired_state
from devstack.agent.traefik_file import file_config

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def svc(name: str, owner: str | None = None, *, ns: str = "dev") -> dict[str, Any]:
    labels = {"devstack.dev/service": "shop"}
    if owner:
        labels["devstack.dev/owner"] = owner
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"u-{name}", "labels": labels},
        "spec": {"ports": [{"name": "http", "port": 8080}]},
    }


URLS = {"shop": "http://127.0.0.1:1001", "shop-alice": "http://127.0.0.1:1002"}


def test_every_route_becomes_a_router_with_its_rule_priority_and_upstream() -> None:
    desired = desired_state([svc("shop"), svc("shop-alice", "alice")], AgentSettings(), NOW)
    result = file_config(desired.objects, lambda _ns, name, _port: URLS.get(name))
    http = result.config["http"]
    assert result.unresolved == ()
    routes = [
        (obj["metadata"]["name"], i, r)
        for ref, obj in desired.objects.items()
        if ref.kind == "IngressRoute"
        for i, r in enumerate(obj["spec"]["routes"])
    ]
    assert len(http["routers"]) == len(routes) == 5
    for name, i, route in routes:
        router = http["routers"][f"dev-{name}-{i}"]
        assert router["rule"] == route["match"]
        assert router["priority"] == route["priority"]
        assert router["entryPoints"] == ["web"]
        upstream = route["services"][0]["name"]
        assert http["services"][router["service"]] == {
            "loadBalancer": {"servers": [{"url": URLS[upstream]}]}
        }


def test_the_preview_middleware_is_carried_over_and_referenced() -> None:
    desired = desired_state([svc("shop"), svc("shop-alice", "alice")], AgentSettings(), NOW)
    http = file_config(desired.objects, lambda _ns, name, _port: URLS.get(name)).config["http"]
    mw = http["middlewares"]["dev-devstack-shop--alice-route"]
    assert mw["headers"]["customRequestHeaders"] == {
        "baggage": "devstack-route=alice",
        "x-devstack-route": "alice",
    }
    preview = [
        r for r in http["routers"].values() if "preview" in r["rule"] and "alice" in r["rule"]
    ]
    assert [r["middlewares"] for r in preview] == [["dev-devstack-shop--alice-route"]]


def test_a_route_whose_upstream_is_unknown_is_left_out_and_named() -> None:
    desired = desired_state([svc("shop"), svc("shop-alice", "alice")], AgentSettings(), NOW)
    result = file_config(
        desired.objects, lambda _ns, name, _port: URLS.get(name) if name == "shop" else None
    )
    assert sorted(result.unresolved) == [
        "dev/devstack-shop--alice#0",
        "dev/devstack-shop--alice#1",
        "dev/devstack-shop--alice#2",
    ]
    assert all(r["service"] == "dev-shop-8080" for r in result.config["http"]["routers"].values())
