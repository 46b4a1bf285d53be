"""``devstack down [SERVICE...]``: remove your personal copies, and nothing else.

- :func:`plan_down` is pure: of the Helmfile's services (or the named ones),
  the copies ``<service>--<owner>`` that exist, dependents first (the
  reverse of the deploy order);
- :func:`run` uninstalls them through Helm's engine, so the library chart's
  pre-delete hook tears down the copy's AWS resources, and the agent, seeing
  the copy's Service go, removes its routes. A release that is not the
  owner's (``devstack.owner`` in its values says otherwise) is left alone.
  Baselines and other owners' copies are never in the plan.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from devstack.cli.cluster_up import dump, namespaces_of, resolve_services, table
from devstack.cli.project import (
    Project,
    add_mode_arguments,
    add_output_argument,
    add_project_arguments,
    is_local,
    load_project,
)
from devstack.cli.releases import (
    ReleaseError,
    deployed_now,
    helm_config,
    helm_errors,
    one_line,
    release_namespace,
)
from devstack.core.errors import ConfigError
from devstack.core.helmfile import Helmfile
from devstack.core.owner import OwnerError, copy_name

EXAMPLES = """examples:
  devstack down                 remove all your copies
  devstack down web --dry-run   what would go
  devstack down -o json         the result, for scripts
"""


@dataclass(frozen=True)
class Removal:
    service: str
    release: str
    #: ``""``: the kube context's namespace.
    namespace: str

    def as_json(self, default_namespace: str) -> dict[str, Any]:
        return {
            "release": self.release,
            "service": self.service,
            "namespace": self.namespace or default_namespace,
        }


def plan_down(
    helmfile: Helmfile,
    owner: str,
    services: Sequence[str],
    deployed: Collection[tuple[str, str]],
    *,
    namespace: str = "default",
) -> tuple[tuple[Removal, ...], ...]:
    """Levels of copies to uninstall (pure): those of ``owner`` that exist,
    the ones that need others first."""
    wanted = {r.name for r in resolve_services(helmfile, services)}
    by_name = {r.name: r for r in helmfile.releases}
    levels: list[tuple[Removal, ...]] = []
    for level in reversed(helmfile.levels):
        out = []
        for name in level:
            if name not in wanted:
                continue
            r = by_name[name]
            try:
                copy = copy_name(name, owner)
            except OwnerError:
                continue  # too long to have been deployed
            if ((r.namespace or namespace), copy) in deployed:
                out.append(Removal(service=name, release=copy, namespace=r.namespace))
        if out:
            levels.append(tuple(out))
    return tuple(levels)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Remove your personal copies (Helm uninstall: their routes and provisioned AWS "
        "resources go with them). Baselines and other people's copies are never touched."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help="only these services' copies (default: all)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would go; change nothing"
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long each uninstall (its teardown hook included) may take (default 300)",
    )
    add_mode_arguments(parser)
    add_project_arguments(parser)
    add_output_argument(parser)


def _owner_of(project: Project, namespace: str, release: str) -> str | None:
    config = helm_config(project, namespace)
    try:
        values = config.get_values(release) or {}
    finally:
        config.close()
    devstack = values.get("devstack") if isinstance(values, dict) else None
    owner = devstack.get("owner") if isinstance(devstack, dict) else None
    return str(owner) if owner is not None else None


def _uninstall(project: Project, removal: Removal, timeout: float) -> str:
    """``removed``, or why not."""
    ns = release_namespace(project, removal.namespace)
    owner = _owner_of(project, ns, removal.release)
    if owner != project.owner:
        return f"left alone: its devstack.owner is {owner!r}, not {project.owner!r}"
    config = helm_config(project, ns)
    try:
        config.uninstall(removal.release, wait="watcher", timeout=int(timeout))
    finally:
        config.close()
    return "removed"


async def _execute(
    project: Project, levels: Sequence[Sequence[Removal]], timeout: float
) -> list[tuple[Removal, str, str]]:
    results: list[tuple[Removal, str, str]] = []

    async def one(r: Removal) -> None:
        print(f"{r.release}: uninstalling", file=sys.stderr, flush=True)
        failures: tuple[type[BaseException], ...] = (ReleaseError, *helm_errors())
        try:
            state = await asyncio.to_thread(_uninstall, project, r, timeout)
            error = ""
        except failures as e:
            state = "failed"
            error = (
                f"{r.release}: helm uninstall failed: {one_line(e)} (run `devstack down` "
                "again; if its teardown hook failed, see its Job's logs)"
            )
        print(f"{r.release}: {state}", file=sys.stderr, flush=True)
        results.append((r, state, error))

    for level in levels:
        await asyncio.gather(*(one(r) for r in level))
        if any(error for _, _, error in results):
            break
    return results


def _down_local(args: argparse.Namespace, project: Project) -> int:
    """The local stack `devstack up --local` started: every process stops, your
    provisioned resources go (devstack.cli.localstack owns how)."""
    from devstack.cli import localstack

    if args.services:
        raise ConfigError("the local stack stops as a whole: `devstack down --local`, no SERVICE")
    if args.dry_run:
        rows = localstack.status_rows(project)
        data = {
            "owner": project.owner,
            "local": True,
            "stop": [{"service": r.service, "owner": r.owner} for r in rows],
        }
        if args.output != "table":
            print(dump(data, args.output))
        else:
            names = [f"{r.service}--{r.owner}" if r.owner else r.service for r in rows]
            print(f"would stop the local stack: {', '.join(names) or 'nothing runs'}")
        return 0
    localstack.down(project)
    if args.output != "table":
        print(dump({"owner": project.owner, "local": True, "stopped": True}, args.output))
    else:
        print("the local stack is stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    project = load_project(args)
    if is_local(args, project):
        return _down_local(args, project)
    default_ns = project.kube.namespace
    deployed = deployed_now(project, namespaces_of(project.helmfile, default_ns))
    levels = plan_down(
        project.helmfile, project.owner, args.services, deployed, namespace=default_ns
    )
    removals = [r for level in levels for r in level]
    if args.dry_run:
        if args.output == "table":
            if removals:
                rows = [["RELEASE", "SERVICE", "NAMESPACE"]]
                rows += [[r.release, r.service, r.namespace or default_ns] for r in removals]
                print(table(rows))
            else:
                print(f"nothing to remove: {project.owner} has no copies")
        else:
            print(
                dump(
                    {"owner": project.owner, "remove": [r.as_json(default_ns) for r in removals]},
                    args.output,
                )
            )
        return 0
    if not removals:
        print(f"nothing to remove: {project.owner} has no copies", file=sys.stderr)
        if args.output != "table":
            print(dump({"owner": project.owner, "removed": []}, args.output))
        return 0
    results = asyncio.run(_execute(project, levels, args.wait_timeout))
    if args.output == "table":
        rows = [["RELEASE", "SERVICE", "NAMESPACE", "RESULT"]]
        rows += [[r.release, r.service, r.namespace or default_ns, s] for r, s, _ in results]
        print(table(rows))
    else:
        print(
            dump(
                {
                    "owner": project.owner,
                    "removed": [
                        {**r.as_json(default_ns), "result": s, **({"error": e} if e else {})}
                        for r, s, e in results
                    ],
                },
                args.output,
            )
        )
    errors = [e for _, _, e in results if e]
    for e in errors:
        print(f"devstack down: {e}", file=sys.stderr)
    return 1 if errors else 0
