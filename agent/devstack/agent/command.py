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
from devstack.agent.sleep import SleepSettings, parse_duration
from devstack.agent.usage.ledger import Prices
from devstack.agent.usage.service import UsageSettings, parse_teams
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
  devstack agent --idle-after 4h --traefik-metrics-url http://traefik.traefik:9100/metrics
                                        personal copies sleep after 4 h without a sync
                                        session or a request routed to them (docs/sleep.md)
  devstack agent --team alice=payments --team bob=search --price-core-hour 0.031 \\
      --price-gib-hour 0.004 --currency EUR
                                        attribute usage to teams and price it; /v1/usage and
                                        `devstack usage` report it (docs/usage.md)

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
    g = parser.add_argument_group("sleep (docs/sleep.md)")
    g.add_argument(
        "--sleep",
        action=argparse.BooleanOptionalAction,
        default=env.get("DEVSTACK_SLEEP", "true").strip().lower() not in ("0", "false", "no"),
        help="scale idle personal copies to zero (env DEVSTACK_SLEEP; default on; "
        "expired copies are scaled to zero either way)",
    )
    g.add_argument(
        "--idle-after",
        default=env.get("DEVSTACK_IDLE_AFTER", "2h"),
        metavar="DURATION",
        help="a copy with no sync session and no routed request for this long sleeps "
        "(30m, 2h, 1d; env DEVSTACK_IDLE_AFTER; default 2h)",
    )
    g.add_argument(
        "--sleep-check-interval",
        default=env.get("DEVSTACK_SLEEP_CHECK_INTERVAL", "60s"),
        metavar="DURATION",
        help="how often to look for idle copies and scrape Traefik "
        "(env DEVSTACK_SLEEP_CHECK_INTERVAL; default 60s)",
    )
    g.add_argument(
        "--traefik-metrics-url",
        action="append",
        dest="traefik_metrics_urls",
        metavar="URL",
        help="a Traefik replica's Prometheus /metrics, with addServicesLabels on: the routed "
        "requests (repeatable; env DEVSTACK_TRAEFIK_METRICS_URLS, comma-separated; none: "
        "only sync sessions keep a copy awake)",
    )
    u = parser.add_argument_group("usage attribution (docs/usage.md)")
    u.add_argument(
        "--usage-interval",
        default=env.get("DEVSTACK_USAGE_INTERVAL", "60s"),
        metavar="DURATION",
        help="how often the leader samples and writes the usage records (10s, 60s, 5m; "
        "env DEVSTACK_USAGE_INTERVAL; default 60s)",
    )
    u.add_argument(
        "--usage-retention-days",
        default=env.get("DEVSTACK_USAGE_RETENTION_DAYS", "35"),
        metavar="DAYS",
        help="day records older than this are deleted (env DEVSTACK_USAGE_RETENTION_DAYS; "
        "default 35)",
    )
    u.add_argument(
        "--team",
        action="append",
        dest="teams",
        metavar="OWNER=TEAM",
        help="the team of an owner whose objects have no devstack.dev/team label "
        "(repeatable; env DEVSTACK_TEAMS, e.g. alice=payments,bob=search)",
    )
    for flag, var, what in (
        ("--price-core-hour", "DEVSTACK_PRICE_CORE_HOUR", "one CPU core requested for an hour"),
        ("--price-gib-hour", "DEVSTACK_PRICE_GIB_HOUR", "one GiB of memory requested for an hour"),
        ("--price-storage-gib-hour", "DEVSTACK_PRICE_STORAGE_GIB_HOUR",
         "one GiB of PVC storage for an hour"),
    ):  # fmt: skip
        u.add_argument(
            flag,
            default=env.get(var),
            metavar="PRICE",
            help=f"what {what} costs (env {var}; with any price set, reports carry a cost)",
        )
    u.add_argument(
        "--currency",
        default=env.get("DEVSTACK_CURRENCY", "USD"),
        help="the prices' currency (env DEVSTACK_CURRENCY; default USD)",
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
        sleep=_sleep_settings(args, env),
        usage=usage_settings(args, env),
        listen_host=host,
        listen_port=port,
        kubeconfig=args.kubeconfig,
        context=args.context,
    )


def _sleep_settings(args: argparse.Namespace, env: Mapping[str, str]) -> SleepSettings:
    urls = tuple(args.traefik_metrics_urls or _env_list(env, "DEVSTACK_TRAEFIK_METRICS_URLS"))
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--traefik-metrics-url {url!r}: give an http:// or https:// URL")
    return SleepSettings(
        enabled=bool(args.sleep),
        idle_after=parse_duration(args.idle_after, what="--idle-after"),
        check_interval=parse_duration(args.sleep_check_interval, what="--sleep-check-interval"),
        traefik_metrics_urls=urls,
    )


def _seconds(value: str, *, what: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h`` as seconds; a ConfigError otherwise."""
    text = str(value).strip()
    unit = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise ConfigError(f"{what} {value!r}: use seconds or a duration (10s, 5m, 1h)") from None
    if not 0 < seconds <= 86400:
        raise ConfigError(f"{what} {value!r}: use a duration between 1s and 24h")
    return seconds


def usage_settings(args: argparse.Namespace, env: Mapping[str, str]) -> UsageSettings:
    """The usage flags (and their environment variables) as settings."""
    interval = _seconds(args.usage_interval, what="--usage-interval")
    try:
        retention = int(str(args.usage_retention_days).strip())
    except ValueError:
        retention = 0
    if retention < 1:
        raise ConfigError(
            f"--usage-retention-days {args.usage_retention_days!r}: use a whole number of days"
            " (1 or more)"
        )
    try:
        teams = parse_teams(args.teams or _env_list(env, "DEVSTACK_TEAMS"))
    except ValueError as e:
        raise ConfigError(f"--team: {e}") from None
    prices: dict[str, float] = {}
    for flag, attr in (
        ("--price-core-hour", "price_core_hour"),
        ("--price-gib-hour", "price_gib_hour"),
        ("--price-storage-gib-hour", "price_storage_gib_hour"),
    ):
        raw = getattr(args, attr)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            price = float(raw)
        except ValueError:
            price = -1.0
        if not price >= 0 or price == float("inf"):
            raise ConfigError(f"{flag} {raw!r}: use a price of 0 or more (for example 0.031)")
        prices[attr.removeprefix("price_")] = price
    currency = str(args.currency or "").strip()
    if not currency:
        raise ConfigError("--currency is empty: give one, for example USD or EUR")
    return UsageSettings(
        interval=interval,
        retention_days=retention,
        teams=teams,
        prices=Prices(**prices, currency=currency) if prices else None,
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
