"""``devstack status`` and ``devstack urls`` for the services of the Helmfile.

- :func:`status_targets` is pure: which releases of the Helmfile's services
  are in the cluster, yours (``<service>--<owner>``) and the baselines;
- :func:`preview_url`, :func:`sync_state` and :func:`last_reload` are pure:
  a row's columns from the routing settings and a sidecar's ``Status``;
- :func:`gather` is the shell: readiness from the server, the sidecar's
  ``Status`` RPC through the copy's sync route (when it answers), and
  whether the agent put the copy to sleep (its Deployments at zero; since
  when from the agent's sleep record, docs/sleep.md).

``devstack status --to ADDR --token-file FILE`` stays the one sidecar's own
status (:mod:`devstack.cli.status`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from devstack.agent.desired import AgentSettings, host, preview_host
from devstack.cli.cluster_up import dump, namespaces_of, service_label, table
from devstack.cli.project import (
    Project,
    StatusRow,
    add_mode_arguments,
    add_output_argument,
    add_project_arguments,
    is_local,
    load_project,
)
from devstack.cli.releases import (
    cluster,
    deployed_now,
    read_progress,
    read_token,
    release_manifest,
    sidecar_access,
    summary,
    workload_docs,
)
from devstack.core.errors import DevstackError
from devstack.core.helmfile import Helmfile
from devstack.core.owner import OwnerError, copy_name

EXAMPLES = """examples:
  devstack status                       your copies and the baselines, one line each
  devstack status -o json               the same, for scripts
                                        (a copy the agent put to sleep: READY says
                                        "asleep since ..."; `devstack connect` wakes it)
  devstack status --to 127.0.0.1:8080   reach sidecars through this Traefik entry point
  devstack status --to HOST:PORT --token-file FILE   one sidecar's own status
"""

#: How long a sidecar has to answer ``Status``.
STATUS_TIMEOUT = 5.0


@dataclass(frozen=True)
class Target:
    """One release ``status`` reports on."""

    service: str
    release: str
    #: ``""``: the baseline.
    owner: str
    namespace: str
    #: The ``devstack.dev/service`` label (what the routes are named by).
    label: str


def status_targets(
    helmfile: Helmfile,
    owner: str,
    deployed: Collection[tuple[str, str]],
    *,
    namespace: str = "default",
) -> list[Target]:
    """For each installed service in Helmfile order: ``owner``'s copy, then
    the baseline, each when the cluster has it (pure)."""
    out = []
    for r in helmfile.releases:
        if not r.installed:
            continue
        ns = r.namespace or namespace
        try:
            copy: str | None = copy_name(r.name, owner)
        except OwnerError:
            copy = None
        if copy is not None and (ns, copy) in deployed:
            out.append(Target(r.name, copy, owner, ns, service_label(r)))
        if (ns, r.name) in deployed:
            out.append(Target(r.name, r.name, "", ns, service_label(r)))
    return out


def preview_url(target: Target, settings: AgentSettings) -> str:
    """A copy's preview host, or the baseline's host, as the agent routes them."""
    if target.owner:
        return f"http://{preview_host(target.label, target.owner, settings)}"
    return f"http://{host(target.label, settings)}"


def sync_state(resp: Any) -> str:
    sessions = int(resp.sessions)
    if sessions:
        return f"connected ({sessions} session{'s' if sessions > 1 else ''})"
    return "idle"


def last_reload(resp: Any) -> str:
    if not resp.HasField("last_reload"):
        return ""
    r = resp.last_reload
    return f"{r.kind}: {r.message}" if r.message else str(r.kind)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("routing (as the cluster's agent is set up)")
    g.add_argument(
        "--domain",
        default=os.environ.get("DEVSTACK_DOMAIN", "localtest.me"),
        help="baseline hosts are <service>.<domain> (env DEVSTACK_DOMAIN; default localtest.me)",
    )
    g.add_argument(
        "--preview-domain",
        default=os.environ.get("DEVSTACK_PREVIEW_DOMAIN", "preview.localtest.me"),
        help="preview hosts are <service>--<owner>.<preview domain> "
        "(env DEVSTACK_PREVIEW_DOMAIN; default preview.localtest.me)",
    )


def settings_of(args: argparse.Namespace) -> AgentSettings:
    return AgentSettings(domain=args.domain, preview_domain=args.preview_domain)


def targets_of(project: Project) -> list[Target]:
    default_ns = project.kube.namespace
    deployed = deployed_now(project, namespaces_of(project.helmfile, default_ns))
    return status_targets(project.helmfile, project.owner, deployed, namespace=default_ns)


async def sidecar_status(address: str, token: str, authority: str, tls: bool) -> Any:
    from devstack.cli.channel import open_channel, translate
    from devstack.core.protocol import bearer
    from devstack.sync.v1 import sync_pb2 as pb
    from devstack.sync.v1 import sync_pb2_grpc

    async with open_channel(address, authority=authority, tls=tls) as channel:
        stub: Any = sync_pb2_grpc.SyncStub(channel)
        try:
            return await stub.Status(
                pb.StatusRequest(), metadata=bearer(token), timeout=STATUS_TIMEOUT
            )
        except grpc.RpcError as e:
            raise translate(e, address) from e


def asleep_since(
    deployments: Sequence[Any], records: dict[tuple[str, str], Any] | None
) -> str | None:
    """Whether a copy sleeps (it has Deployments, all at zero replicas), and
    since when its sleep record says (``"unknown"``: no record to read)."""
    from devstack.agent.sleep import format_time

    if not deployments or any(int((d.get("spec") or {}).get("replicas", 1)) for d in deployments):
        return None
    for d in deployments:
        meta = d.get("metadata") or {}
        record = (records or {}).get((str(meta.get("namespace")), str(meta.get("name"))))
        if record is not None:
            return format_time(record.since)
    return "unknown"


async def _row(
    project: Project,
    api: Any,
    t: Target,
    settings: AgentSettings,
    via: str | None,
    records: dict[tuple[str, str], Any] | None = None,
) -> StatusRow:
    docs = await release_manifest(api, t.namespace, t.release)
    items = await read_progress(api, t.namespace, workload_docs(docs))
    state = summary(items)
    ready = state.startswith("ready")
    sync, reload_ = "no sidecar", ""
    asleep = None
    if t.owner:
        from devstack.agent.sleeper import copy_deployments

        asleep = asleep_since(await copy_deployments(api, t.namespace, t.label, t.owner), records)
    if asleep is not None:
        sync = "asleep"
    elif t.owner:
        try:
            access = sidecar_access(docs, release=t.release)
        except DevstackError:
            access = None
        if access is not None:
            try:
                token = await read_token(api, t.namespace, access)
                resp = await sidecar_status(
                    via or access.default_address, token, access.host, access.tls
                )
                sync, reload_ = sync_state(resp), last_reload(resp)
            except DevstackError as e:
                sync = f"unreachable ({e.reason})"
    return StatusRow(
        service=t.service,
        owner=t.owner,
        ready=ready,
        sync=sync,
        last_reload=reload_,
        preview_url=preview_url(t, settings),
        asleep_since=asleep,
    )


async def gather(
    project: Project, targets: Sequence[Target], settings: AgentSettings, via: str | None
) -> list[StatusRow]:
    from devstack.agent.sleeper import read_sleep_records

    async with cluster(project, "devstack-status") as api:
        records = await read_sleep_records(api)
        return list(
            await asyncio.gather(*(_row(project, api, t, settings, via, records) for t in targets))
        )


def format_rows(rows: Sequence[StatusRow]) -> str:
    out = [["SERVICE", "OWNER", "READY", "SYNC", "LAST RELOAD", "PREVIEW URL"]]
    for r in rows:
        ready = "-" if r.ready is None else ("yes" if r.ready else "no")
        if r.asleep_since is not None:
            ready = f"asleep since {r.asleep_since}"
        out.append(
            [r.service, r.owner or "(baseline)", ready, r.sync, r.last_reload or "-", r.preview_url]
        )
    return table(out)


# --- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show your copies and the baselines of the Helmfile's services: ready, sync state, "
        "last reload, preview URL. With --token-file: one sidecar's own status."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("sidecar")
    g.add_argument(
        "--to",
        default=os.environ.get("DEVSTACK_SIDECAR"),
        metavar="HOST:PORT",
        help="reach sidecars here (a Traefik entry point; default: each copy's sync host on "
        "port 80/443); with --token-file, the one sidecar to ask (env DEVSTACK_SIDECAR)",
    )
    g.add_argument(
        "--token-file",
        default=os.environ.get("DEVSTACK_TOKEN_FILE"),
        help="the one sidecar's token: show that sidecar's status (env DEVSTACK_TOKEN_FILE)",
    )
    g.add_argument(
        "--authority",
        default=os.environ.get("DEVSTACK_AUTHORITY"),
        metavar="HOST",
        help="with --token-file: the HTTP/2 :authority to send",
    )
    g.add_argument("--tls", action="store_true", help="with --token-file: use TLS")
    g.add_argument("--json", action="store_true", help="with --token-file: print JSON")
    add_settings_arguments(parser)
    add_mode_arguments(parser)
    add_project_arguments(parser)
    add_output_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.token_file:
        from devstack.cli import status
        from devstack.core.errors import ConfigError

        if not args.to:
            raise ConfigError("--token-file needs --to HOST:PORT (the sidecar's address)")
        return status.run(args)
    project = load_project(args)
    if is_local(args, project):
        from devstack.cli import localstack

        rows = localstack.status_rows(project)
    else:
        targets = targets_of(project)
        rows = asyncio.run(gather(project, targets, settings_of(args), args.to)) if targets else []
    if args.output == "table":
        if rows:
            print(format_rows(rows))
        else:
            print(f"nothing deployed: run `devstack up` (owner {project.owner})")
    else:
        print(dump({"owner": project.owner, "services": [r.as_json() for r in rows]}, args.output))
    return 0
