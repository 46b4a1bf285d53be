"""``devstack connect SERVICE [PATH]``: sync to your copy of SERVICE, found in
the cluster: the sync host of the library chart's IngressRoute (the HTTP/2
authority Traefik routes by) and the token from the Secret the copy's pod
mounts. Then the same sync as the explicit form,
``devstack connect [PATH] --to HOST:PORT --token-file FILE`` (which stays,
:mod:`devstack.cli.connect`): the explicit form is the one with a token file.

:func:`copy_sidecar` is the one home of "find my copy's sidecar", on the
local stack or in the cluster; ``devstack test`` uses it too.

In a cluster, ``connect`` first wakes your copy if the agent put it to sleep
(:func:`wake_copy`: scale back, wait until ready; an expired copy is an
error that says to run ``devstack up``), and while the session lasts it
marks it in use (:func:`sync_heartbeat`: the Deployment annotation
``devstack.dev/last-sync``, at the start and every 60 s). See docs/sleep.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from devstack.cli import connect
from devstack.cli.exec import SidecarTarget
from devstack.cli.project import (
    Project,
    add_mode_arguments,
    add_project_arguments,
    is_local,
    load_project,
)
from devstack.core.errors import ConfigError
from devstack.core.owner import copy_name

if TYPE_CHECKING:
    # The Kubernetes client is imported only when a cluster is asked, so that
    # `connect --help` and the local stack do not pay for it; the Helmfile
    # reader (Release is only an annotation here) only where a command reads
    # the Helmfile.
    from devstack.cli.releases import SidecarAccess
    from devstack.core.helmfile import Release

EXAMPLES = """examples:
  devstack connect web                  sync . to your copy of web, then keep it in sync
  devstack connect web services/web     sync that folder
  devstack connect web --once           sync until the trees match, then exit
  devstack connect web --to 127.0.0.1:8080
                                        reach it through this Traefik entry point
                                        (default: the copy's sync host on port 80/443)
  devstack connect PATH --to HOST:PORT --token-file FILE [--authority HOST]
                                        any sidecar, by hand

With a local stack running (`devstack up --local`), SERVICE is your copy there
(default PATH: the service's source folder); --cluster asks the cluster anyway.
In a cluster, a copy the agent put to sleep is woken first (and waited for), and
the session keeps it awake (docs/sleep.md).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Sync a source tree to your copy of a service and keep it in sync; each save "
        "reloads the app as its reload rules say."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "first",
        nargs="?",
        default=None,
        metavar="SERVICE",
        help="the service (a release of the Helmfile); with --token-file: the PATH",
    )
    parser.add_argument(
        "second", nargs="?", default=None, metavar="PATH", help="source tree (default: .)"
    )
    add_sidecar_arguments(parser, explicit=True)
    connect.add_sync_arguments(parser)
    add_mode_arguments(parser)
    add_project_arguments(parser)


def add_sidecar_arguments(parser: argparse.ArgumentParser, *, explicit: bool = False) -> None:
    """--to, --authority, --tls: how to reach your copy's sidecar in a cluster
    (``explicit``: with ``connect``'s --token-file, for any sidecar)."""
    g = parser.add_argument_group("sidecar")
    g.add_argument(
        "--to",
        default=os.environ.get("DEVSTACK_SIDECAR"),
        metavar="HOST:PORT",
        help="where to dial: the cluster's Traefik entry point (default: the copy's sync host "
        "on port 80, 443 with TLS)"
        + ("; with --token-file, the sidecar (env DEVSTACK_SIDECAR)" if explicit else ""),
    )
    if explicit:
        g.add_argument(
            "--token-file",
            default=os.environ.get("DEVSTACK_TOKEN_FILE"),
            help="the explicit form: the sidecar's token is in this file (env DEVSTACK_TOKEN_FILE)",
        )
    g.add_argument(
        "--authority",
        default=os.environ.get("DEVSTACK_AUTHORITY"),
        metavar="HOST",
        help="HTTP/2 :authority to send (default: the copy's sync host)",
    )
    g.add_argument("--tls", action="store_true", help="use TLS (e.g. a websecure entry point)")


def local_sidecar(project: Project, service: str) -> tuple[str, str, str]:
    """Your copy of ``service`` on the local stack: its sidecar's address, its
    token and its source folder (from the state `devstack up --local` wrote)."""
    from devstack.cli import localstack
    from devstack.cli.channel import load_token

    state = localstack.read_state(project)
    if state is None:
        raise ConfigError("no local stack runs: start it with `devstack up --local`")
    for s in state.services:
        if s.service == service:
            if s.copy is None:
                raise ConfigError(
                    f"the local stack runs no copy of {service}, only its baseline: "
                    f"`devstack down`, then `devstack up --local {service}`"
                )
            return s.copy.sidecar, load_token(s.copy.token_file), s.copy.source
    known = ", ".join(s.service for s in state.services if s.copy is not None) or "none"
    raise ConfigError(f"the local stack runs no service {service!r} (your copies: {known})")


def declared_release(project: Project, service: str) -> Release:
    """The Helmfile's release ``service``, or one line listing the declared ones."""
    try:
        return project.helmfile.release(service)
    except KeyError:
        known = ", ".join(r.name for r in project.helmfile.releases) or "none"
        raise ConfigError(
            f"{project.helmfile.path} declares no service {service!r} (it declares: {known})"
        ) from None


async def find_sidecar(project: Project, service: str) -> tuple[SidecarAccess, str]:
    """Your copy of ``service`` in the cluster: how to reach its sidecar, and its token."""
    from devstack.cli.releases import (
        ReleaseError,
        cluster,
        read_token,
        release_manifest,
        release_namespace,
        sidecar_access,
    )

    release = declared_release(project, service)
    name = copy_name(service, project.owner)
    ns = release_namespace(project, release.namespace)
    async with cluster(project, "devstack-connect") as api:
        try:
            docs = await release_manifest(api, ns, name)
        except ReleaseError as e:
            raise ConfigError(f"{e}: run `devstack up {service}` first") from e
        access = sidecar_access(docs, release=name)
        token = await read_token(api, ns, access)
    return access, token


def run(args: argparse.Namespace) -> int:
    if args.token_file:
        if args.second is not None:
            raise ConfigError("with --token-file, give one PATH (no SERVICE)")
        if not args.to:
            raise ConfigError("--token-file needs --to HOST:PORT (the sidecar's address)")
        args.path = args.first or "."
        return connect.run(args)
    if not args.first:
        raise ConfigError(
            "name the service: devstack connect SERVICE [PATH] "
            "(or devstack connect PATH --to HOST:PORT --token-file FILE)"
        )
    project = load_project(args)
    local = is_local(args, project)
    if not local:
        asyncio.run(wake_copy(project, args.first))
    found = copy_sidecar(args, project, args.first, local=local)
    args.path = args.second or found.source or "."
    args.to, args.authority, args.tls = found.address, found.authority, found.tls
    if local:
        return connect.sync(args, found.token)
    with sync_heartbeat(project, args.first):
        return connect.sync(args, found.token)


#: How often a session marks the copy in use (the agent's idle clock).
HEARTBEAT_INTERVAL = 60.0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _copy_of(project: Project, service: str) -> tuple[str, str, str]:
    """Your copy of ``service``: (its namespace, its service label, its release)."""
    from devstack.cli.cluster_up import service_label
    from devstack.cli.releases import release_namespace

    release = declared_release(project, service)
    return (
        release_namespace(project, release.namespace),
        service_label(release),
        copy_name(service, project.owner),
    )


async def wake_copy(project: Project, service: str, *, timeout: float = 300.0) -> list[str]:
    """Wake your copy of ``service`` if it sleeps, and wait until it is
    ready (a progress line per change); an expired copy is an error."""
    from devstack.agent.desired import Copy, copy_from_service
    from devstack.agent.kube import SERVICES
    from devstack.agent.sleeper import WakeError, copy_selector, wake
    from devstack.cli.releases import cluster

    ns, label, release = _copy_of(project, service)
    async with cluster(project, "devstack-connect") as api:
        services, _ = await api.list(
            SERVICES, namespace=ns, label_selector=copy_selector(label, project.owner)
        )
        now = datetime.datetime.now(datetime.UTC)
        for raw in services:
            parsed = copy_from_service(raw)
            if isinstance(parsed, Copy) and parsed.expired(now) and parsed.expires_at:
                when = parsed.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
                raise ConfigError(
                    f"your copy of {service} expired at {when}: its TTL took its routes and "
                    f"scaled it to zero; run `devstack up {service}` to renew it"
                )
        try:
            return await wake(
                api, ns, label, project.owner, release=release, progress=_progress, timeout=timeout
            )
        except WakeError as e:
            raise ConfigError(f"{e}; then run `devstack connect {service}` again") from e


@contextlib.contextmanager
def sync_heartbeat(
    project: Project, service: str, *, interval: float = HEARTBEAT_INTERVAL
) -> Iterator[None]:
    """Mark your copy of ``service`` in use now and every ``interval``
    seconds until the block ends (a thread of its own: the sync owns the
    main thread's event loop). A mark that fails warns once; the sync goes on."""
    from devstack.agent.sleeper import heartbeat
    from devstack.cli.releases import cluster, one_line

    ns, label, _ = _copy_of(project, service)
    stop = threading.Event()
    warned: list[bool] = []

    async def beat() -> None:
        async with cluster(project, "devstack-connect") as api:
            await heartbeat(api, ns, label, project.owner)

    def once() -> None:
        try:
            asyncio.run(beat())
        except Exception as e:  # a mark that fails must not stop the sync
            if not warned:
                warned.append(True)
                print(
                    f"devstack connect: cannot mark your copy of {service} in use "
                    f"({one_line(e)}); the agent may put it to sleep while you sync",
                    file=sys.stderr,
                    flush=True,
                )

    started = threading.Event()

    def loop() -> None:
        once()
        started.set()
        while not stop.wait(interval):
            once()

    thread = threading.Thread(target=loop, name="devstack-heartbeat", daemon=True)
    thread.start()
    started.wait(timeout=30)  # the first mark, before the sync starts
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass(frozen=True)
class CopySidecar(SidecarTarget):
    """Your copy's sidecar, found in either mode."""

    #: On the local stack: the service's source folder; None in a cluster.
    source: str | None = None


def copy_sidecar(
    args: argparse.Namespace, project: Project, service: str, *, local: bool | None = None
) -> CopySidecar:
    """Your copy of ``service``'s sidecar, where ``connect`` and ``test`` reach
    it: on the local stack (``--local``, or one runs and no ``--cluster``; or
    ``local`` when the caller decided already), from its state file; in the
    cluster, from the copy's sync route and token Secret, dialled through
    Traefik, with ``--to``/``--authority``/``--tls`` overriding what the route
    says."""
    if is_local(args, project) if local is None else local:
        address, token, source = local_sidecar(project, service)
        return CopySidecar(address, token, source=source)
    access, token = asyncio.run(find_sidecar(project, service))
    return CopySidecar(
        address=getattr(args, "to", None) or access.default_address,
        token=token,
        authority=getattr(args, "authority", None) or access.host,
        tls=bool(getattr(args, "tls", False)) or access.tls,
    )
