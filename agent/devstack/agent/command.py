"""``devstack agent``: run the cluster agent (parses settings; does I/O).

Every flag also reads an environment variable (the flag wins), so the Helm
chart can configure the agent through ``env``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from collections.abc import Mapping

from devstack.agent.api import parse_listen
from devstack.agent.controller import ControllerSettings
from devstack.agent.desired import AgentSettings
from devstack.agent.leader import LeaseSettings
from devstack.agent.service import Agent, AgentConfig
from devstack.core import logging as devstack_logging
from devstack.core.errors import ConfigError
from devstack.core.routing import (
    DEFAULT_BAGGAGE_KEY,
    DEFAULT_ROUTE_HEADER,
    RouteSettings,
    RoutingError,
    parse_traefik_version,
)


def _env_list(env: Mapping[str, str], name: str) -> list[str]:
    return [p.strip() for p in env.get(name, "").split(",") if p.strip()]


EXAMPLES = """examples:
  devstack agent --domain shop.example.com
                                        route every namespace's devstack Services
                                        (in the cluster: its ServiceAccount; outside: KUBECONFIG)
  devstack agent --namespace dev --namespace staging --preview-domain preview.example.com
                                        only these namespaces; preview URLs under that domain
  devstack agent --kubeconfig ~/.kube/config --context dev --listen 127.0.0.1:8081
                                        from a laptop, against the dev context

Its chart (helm/devstack) runs it with leader election and least-privilege RBAC;
/healthz, /metrics and /v1/routes are served on --listen. See docs/routing.md.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    env = os.environ
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch only this namespace (repeatable; env DEVSTACK_NAMESPACES, "
        "comma-separated; default: all namespaces)",
    )
    parser.add_argument(
        "--domain",
        default=env.get("DEVSTACK_DOMAIN", "localtest.me"),
        help="baseline host is <service>.<domain> (env DEVSTACK_DOMAIN)",
    )
    parser.add_argument(
        "--preview-domain",
        default=env.get("DEVSTACK_PREVIEW_DOMAIN", "preview.localtest.me"),
        help="preview hosts are <service>--<owner>.<preview domain> (env DEVSTACK_PREVIEW_DOMAIN)",
    )
    parser.add_argument(
        "--entry-point",
        action="append",
        dest="entry_points",
        metavar="NAME",
        help="Traefik entry point (repeatable; env DEVSTACK_ENTRY_POINTS; default web)",
    )
    parser.add_argument(
        "--traefik-version",
        default=env.get("DEVSTACK_TRAEFIK_VERSION", "3"),
        help="3 (default), 2.10, 2.9 ... (env DEVSTACK_TRAEFIK_VERSION)",
    )
    parser.add_argument(
        "--baggage-key",
        default=env.get("DEVSTACK_BAGGAGE_KEY", DEFAULT_BAGGAGE_KEY),
        help="baggage member that carries the routing key (env DEVSTACK_BAGGAGE_KEY)",
    )
    parser.add_argument(
        "--route-header",
        default=env.get("DEVSTACK_ROUTE_HEADER", DEFAULT_ROUTE_HEADER),
        help="plain header that carries the routing key (env DEVSTACK_ROUTE_HEADER)",
    )
    parser.add_argument(
        "--baggage-style",
        choices=("w3c", "jaeger"),
        default=env.get("DEVSTACK_BAGGAGE_STYLE", "w3c"),
        help="w3c: header `baggage`; jaeger: header `uberctx-<key>` (env DEVSTACK_BAGGAGE_STYLE)",
    )
    parser.add_argument(
        "--listen",
        default=env.get("DEVSTACK_AGENT_LISTEN", "0.0.0.0:8080"),
        help="HTTP API address (env DEVSTACK_AGENT_LISTEN)",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (else KUBECONFIG)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument(
        "--lease-name",
        default=env.get("DEVSTACK_LEASE_NAME", "devstack-agent"),
        help="leader-election Lease (env DEVSTACK_LEASE_NAME)",
    )
    parser.add_argument(
        "--lease-namespace",
        default=env.get("DEVSTACK_LEASE_NAMESPACE") or env.get("POD_NAMESPACE") or "default",
        help="namespace of the Lease (env DEVSTACK_LEASE_NAMESPACE, else POD_NAMESPACE)",
    )
    for flag, var, default, what in (
        ("--lease-duration", "DEVSTACK_LEASE_DURATION", 15.0, "how long a Lease holds"),
        ("--renew-deadline", "DEVSTACK_RENEW_DEADLINE", 10.0, "a leader that could not renew "
         "for this long steps down"),
        ("--retry-period", "DEVSTACK_RETRY_PERIOD", 2.0, "how often to try to acquire or renew"),
    ):  # fmt: skip
        parser.add_argument(
            flag,
            default=env.get(var, str(default)),
            metavar="SECONDS",
            help=f"leader election: {what} (env {var}; default {default:g})",
        )
    parser.add_argument(
        "--identity",
        default=env.get("POD_NAME") or socket.gethostname(),
        help="this replica's name in the Lease (env POD_NAME, else the host name)",
    )


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> AgentConfig:
    """The agent's configuration, or one :class:`ConfigError` that says what is wrong."""
    env = os.environ if env is None else env
    namespaces = tuple(args.namespaces or _env_list(env, "DEVSTACK_NAMESPACES"))
    entry_points = tuple(args.entry_points or _env_list(env, "DEVSTACK_ENTRY_POINTS") or ["web"])
    try:
        parse_traefik_version(args.traefik_version)
        route = RouteSettings(
            baggage_key=args.baggage_key,
            route_header=args.route_header,
            baggage_style=args.baggage_style,
        )
        host, port = parse_listen(args.listen)
    except (RoutingError, ValueError) as e:
        raise ConfigError(str(e)) from e
    if args.baggage_style not in ("w3c", "jaeger"):
        raise ConfigError(f"--baggage-style {args.baggage_style!r}: use w3c or jaeger")
    timings = _lease_timings(args)
    for name, value in (("--domain", args.domain), ("--preview-domain", args.preview_domain)):
        if not value or any(not part for part in value.split(".")):
            raise ConfigError(f"{name} {value!r} is not a domain name")
    return AgentConfig(
        agent=AgentSettings(
            domain=args.domain,
            preview_domain=args.preview_domain,
            entry_points=entry_points,
            traefik_version=args.traefik_version,
            route=route,
        ),
        controller=ControllerSettings(namespaces=namespaces),
        lease=LeaseSettings(
            namespace=args.lease_namespace,
            name=args.lease_name,
            identity=args.identity,
            **timings,
        ),
        listen_host=host,
        listen_port=port,
        kubeconfig=args.kubeconfig,
        context=args.context,
    )


def _lease_timings(args: argparse.Namespace) -> dict[str, float]:
    """The leader-election timings, checked as client-go checks them: the
    Lease outlasts the renew deadline, which outlasts the retry period."""
    out: dict[str, float] = {}
    for flag, attr in (
        ("--lease-duration", "lease_duration"),
        ("--renew-deadline", "renew_deadline"),
        ("--retry-period", "retry_period"),
    ):
        raw = getattr(args, attr)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} {raw!r}: expected a number of seconds") from None
        if not 0 < value < 86400:
            raise ConfigError(f"{flag} {raw!r}: expected seconds between 0 and 86400")
        out[attr] = value
    if not out["lease_duration"] > out["renew_deadline"] > out["retry_period"]:
        raise ConfigError(
            "leader election needs --lease-duration > --renew-deadline > --retry-period "
            f"(got {out['lease_duration']:g}, {out['renew_deadline']:g}, {out['retry_period']:g})"
        )
    return out


async def _main(config: AgentConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Agent(config) as agent:
        waiter = asyncio.create_task(agent.wait())
        stopper = asyncio.create_task(stop.wait())
        done, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if waiter in done:
            waiter.result()
    return 0


def run(args: argparse.Namespace) -> int:
    devstack_logging.configure()
    config = config_from_args(args)
    return asyncio.run(_main(config))
