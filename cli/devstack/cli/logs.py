"""``devstack logs SERVICE [-f]``: the app's output.

In a cluster, it is the output of your copy's pods (the Helm release
``<service>--<owner>``), or the baseline's with ``--baseline``, read through
the API server's ``pods/log`` as ``kubectl logs`` reads it: the app's
container by default (not the devstack sidecar), ``-c``, ``--all-containers``,
``--tail``, ``--since``; ``-f`` follows, through restarts and replaced pods
(:mod:`devstack.cli.podlogs`).

On the local stack (``devstack up --local``) it is your copy's app output
(stdout and stderr of the process the sidecar supervises, kept apart from the
sidecar's own log), or the baseline's, read from the log file the state
names. ``-f`` keeps printing what is appended, as ``tail -f``.

Which one: the same rule as the other commands (``--local``, ``--cluster``,
else the local stack when one runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from devstack.cli import localstack
from devstack.cli.project import (
    Project,
    add_mode_arguments,
    add_project_arguments,
    is_local,
    load_project,
)
from devstack.core import logging as dlog
from devstack.core.errors import ConfigError

EXAMPLES = """\
examples:
  devstack logs stock                 your copy of stock's output so far
  devstack logs stock -f              ... and what follows, until Ctrl-C
  devstack logs stock --tail 20 -f    the last 20 lines, then follow
  devstack logs stock --since 10m     what it wrote in the last 10 minutes
  devstack logs stock -c devstack-sidecar
                                      the sidecar's own log (in a cluster)
  devstack logs stock --all-containers -f
                                      every container, each line [CONTAINER]-prefixed
  devstack logs web --baseline        the baseline's output

In a cluster, lines from several pods are prefixed [pod/NAME/CONTAINER] (as
`kubectl logs --prefix`). With -f, a container that restarts or a pod that is
replaced is followed again (said on stderr). A pod that has not started yet is
waited for, up to --wait-timeout seconds.
"""

#: Flags that mean something in a cluster only.
_CLUSTER_ONLY = ("container", "all_containers", "since", "prefix", "timestamps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show (or follow) the output of your copy of a service, or of its baseline: "
        "in a cluster, its pods' logs; on the local stack, its process's output."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("service", metavar="SERVICE", help="the release whose output to show")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    parser.add_argument(
        "--baseline", action="store_true", help="the baseline's output, not your copy's"
    )
    parser.add_argument(
        "--tail", type=int, default=None, metavar="N", help="only the last N lines first"
    )
    g = parser.add_argument_group("in a cluster (as kubectl logs)")
    g.add_argument(
        "--since",
        default=None,
        metavar="DURATION",
        help="only lines newer than this (30s, 5m, 2h)",
    )
    g.add_argument(
        "-c",
        "--container",
        default=None,
        help="this container (default: the app's, not the devstack sidecar)",
    )
    g.add_argument(
        "--all-containers",
        action="store_true",
        help="every container of the pod, each line prefixed with its name",
    )
    g.add_argument(
        "--prefix",
        action="store_true",
        help="prefix every line with [pod/NAME/CONTAINER] (always with several pods)",
    )
    g.add_argument("--timestamps", action="store_true", help="keep each line's timestamp")
    g.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a pod to start (default 60)",
    )
    add_mode_arguments(parser)
    add_project_arguments(parser, file_short=False)


def _last(data: bytes, tail: int | None) -> bytes:
    if tail is None:
        return data
    return b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""


def run_local(args: argparse.Namespace, project: Project) -> int:
    given = [f"--{n.replace('_', '-')}" for n in _CLUSTER_ONLY if getattr(args, n, None)]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: only in a cluster (the local stack keeps one output file "
            "per process); add --cluster to read the cluster's pods"
        )
    state = localstack.require_state(project)
    path = localstack.log_file(state, args.service, baseline=args.baseline)
    out = sys.stdout.buffer
    try:
        with path.open("rb") as f:
            # One open file: what is written between showing and following is not lost.
            out.write(_last(f.read(), args.tail))
            out.flush()
            while args.follow:
                chunk = f.read(65536)
                if chunk:
                    out.write(chunk)
                    out.flush()
                else:
                    time.sleep(0.1)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such log (did the local stack stop?)") from e
    except KeyboardInterrupt:
        return 0
    return 0


class _Stdout:
    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)

    def flush(self) -> None:
        sys.stdout.buffer.flush()


def _notice(text: str) -> None:
    print(f"devstack logs: {text}", file=sys.stderr, flush=True)


def run_cluster(args: argparse.Namespace, project: Project) -> int:
    from devstack.cli.podlogs import LogOptions, PodLogs, find_release, parse_duration
    from devstack.cli.releases import cluster

    if args.all_containers and args.container:
        raise ConfigError("give -c CONTAINER or --all-containers, not both")
    if args.tail is not None and args.tail < 0:
        raise ConfigError(f"--tail {args.tail}: give 0 or more lines")
    if args.wait_timeout < 0:
        raise ConfigError("--wait-timeout: give 0 or more seconds")
    options = LogOptions(
        follow=args.follow,
        tail=args.tail,
        since_seconds=parse_duration(args.since) if args.since else None,
        container=args.container,
        all_containers=args.all_containers,
        prefix=args.prefix,
        timestamps=args.timestamps,
        wait_timeout=args.wait_timeout,
    )

    async def go() -> int:
        async with cluster(project, "devstack-logs") as api:
            target = await find_release(api, project, args.service, baseline=args.baseline)
            logs = PodLogs(api, target, options, _Stdout(), _notice)
            if options.follow:
                await logs.follow()
                return 0
            return await logs.read()

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        return 0


def run(args: argparse.Namespace) -> int:
    # stdout is the log alone: devstack's own events go to stderr, warnings only
    # unless DEVSTACK_LOG_LEVEL says otherwise
    dlog.configure(level=os.environ.get("DEVSTACK_LOG_LEVEL", "warning"))
    project = load_project(args)
    if is_local(args, project):
        return run_local(args, project)
    return run_cluster(args, project)
