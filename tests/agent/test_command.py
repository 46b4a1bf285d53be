"""``devstack agent``: flags, environment, errors, and the real process."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from devstack.agent.command import add_arguments, config_from_args
from devstack.core.errors import ConfigError
from tests.support.kube import EmulatorThread
from tests.support.net import free_port, wait_until


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


def test_the_command_runs_serves_and_stops_cleanly(kube: EmulatorThread, tmp_path: Path) -> None:
    kubeconfig = kube.kubeconfig(tmp_path / "kc")
    kube.emulator.register_service(
        namespace="dev", name="shop", port=9, labels={"devstack.dev/service": "shop"}
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVSTACK_", "KUBE"))}
    env.update({"POD_NAME": "agent-cli", "DEVSTACK_LEASE_NAMESPACE": "devstack"})
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devstack.cli.main",
                "agent",
                "--kubeconfig",
                str(kubeconfig),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            env=env,
            stderr=err,
        )
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(ready, timeout=30)
        routes = kube.emulator.resource("traefik.io/v1alpha1", "ingressroutes")
        wait_until(lambda: kube.emulator.get(routes, "dev", "devstack-shop"), timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/routes", timeout=5) as r:
            assert json.loads(r.read())["services"][0]["host"] == "shop.localtest.me"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code == 0
    events = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "agent.started" in names and "agent.write" in names and names[-1] == "agent.stopped"
    lease = kube.emulator.get(
        kube.emulator.resource("coordination.k8s.io/v1", "leases"), "devstack", "devstack-agent"
    )
    assert lease is not None and lease["spec"]["holderIdentity"] == ""
