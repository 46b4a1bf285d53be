"""``devstack agent``: flags, environment and errors (no server). The real
process against the real API server: tests/cluster/test_agent_command.py."""

from __future__ import annotations

import argparse
import os

import pytest

from devstack.agent.command import add_arguments, config_from_args
from devstack.core.errors import ConfigError


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    old = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env or {})
        add_arguments(parser)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return parser.parse_args(argv)


def test_defaults() -> None:
    cfg = config_from_args(parse([], {"POD_NAME": "agent-0"}), env={})
    assert cfg.agent.domain == "localtest.me"
    assert cfg.agent.preview_domain == "preview.localtest.me"
    assert cfg.agent.entry_points == ("web",)
    assert cfg.agent.traefik_version == "3"
    assert cfg.agent.route.baggage_header == "baggage"
    assert cfg.agent.route.route_header == "x-devstack-route"
    assert cfg.controller.namespaces == ()
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 8080)
    assert (cfg.lease.namespace, cfg.lease.name, cfg.lease.identity) == (
        "default",
        "devstack-agent",
        "agent-0",
    )


def test_environment_then_flags() -> None:
    env = {
        "DEVSTACK_NAMESPACES": "a, b",
        "DEVSTACK_DOMAIN": "dev.example",
        "DEVSTACK_PREVIEW_DOMAIN": "pr.example",
        "DEVSTACK_ENTRY_POINTS": "web,websecure",
        "DEVSTACK_TRAEFIK_VERSION": "2.9",
        "DEVSTACK_BAGGAGE_KEY": "route",
        "DEVSTACK_ROUTE_HEADER": "x-route",
        "DEVSTACK_BAGGAGE_STYLE": "jaeger",
        "DEVSTACK_AGENT_LISTEN": "127.0.0.1:9000",
        "DEVSTACK_LEASE_NAME": "lock",
        "POD_NAMESPACE": "infra",
        "POD_NAME": "agent-1",
    }
    cfg = config_from_args(parse([], env), env=env)
    assert cfg.controller.namespaces == ("a", "b")
    assert (cfg.agent.domain, cfg.agent.preview_domain) == ("dev.example", "pr.example")
    assert cfg.agent.entry_points == ("web", "websecure")
    assert cfg.agent.crd_group == "traefik.containo.us"
    assert cfg.agent.route.baggage_header == "uberctx-route"
    assert cfg.agent.route.route_header == "x-route"
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 9000)
    assert (cfg.lease.namespace, cfg.lease.name, cfg.lease.identity) == ("infra", "lock", "agent-1")

    flags = [
        "--namespace",
        "c",
        "--entry-point",
        "web",
        "--lease-namespace",
        "ops",
        "--identity",
        "me",
    ]
    cfg = config_from_args(parse(flags, env), env=env)
    assert cfg.controller.namespaces == ("c",)
    assert cfg.agent.entry_points == ("web",)
    assert (cfg.lease.namespace, cfg.lease.identity) == ("ops", "me")


@pytest.mark.parametrize(
    "argv",
    [
        ["--traefik-version", "1.7"],
        ["--listen", "nowhere"],
        ["--baggage-key", "bad key"],
        ["--route-header", "baggage"],
        ["--domain", "a..b"],
    ],
)
def test_bad_settings_are_one_clear_error(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        config_from_args(parse(argv), env={})


def test_leader_election_timings_from_the_environment_then_flags() -> None:
    assert (lambda s: (s.lease_duration, s.renew_deadline, s.retry_period))(
        config_from_args(parse([]), env={}).lease
    ) == (15.0, 10.0, 2.0)
    env = {"DEVSTACK_LEASE_DURATION": "6", "DEVSTACK_RENEW_DEADLINE": "4"}
    lease = config_from_args(parse(["--retry-period", "0.5"], env), env=env).lease
    assert (lease.lease_duration, lease.renew_deadline, lease.retry_period) == (6.0, 4.0, 0.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lease-duration", "soon"], "--lease-duration 'soon': expected a number of seconds"),
        (["--retry-period", "0"], "--retry-period '0': expected seconds between 0 and 86400"),
        (
            ["--lease-duration", "5", "--renew-deadline", "5"],
            "leader election needs --lease-duration > --renew-deadline > --retry-period "
            "(got 5, 5, 2)",
        ),
    ],
)
def test_bad_leader_election_timings_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_args(parse(argv), env={})
    assert str(e.value) == message
