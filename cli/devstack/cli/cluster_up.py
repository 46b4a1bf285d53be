"""``devstack up [SERVICE...]`` against a cluster: your personal copies of the
named services (all of them when none is named), and the baselines of what
they need that the cluster does not have yet, in ``needs`` order.

- :func:`plan_up` is pure: the Helmfile, the owner, the named services and
  which releases exist give the levels to deploy, which release is a copy
  (``<service>--<owner>``) and which a baseline, and the values devstack
  injects (the library chart's ``devstack.enabled``, ``devstack.owner`` and
  ``devstack.service``, which make the sidecar and the routing labels
  ``devstack.dev/service``/``devstack.dev/owner``), and, for a copy whose
  image ``devstack build`` recorded (``.devstack/builds.json``), that image
  at ``devstack.build.values.repository``/``.tag``;
- :func:`run_cluster` is the runner: it deploys each level through Helm's
  engine (helm-python-sdk), the releases of one level in parallel, waits until
  each release's Pods are Ready (its Jobs complete), one progress line per
  change, and prints a table at the end.

``devstack.cli.up`` owns the command line (``SERVICE...``, ``--local``, the
project and output flags) and calls :func:`add_cluster_arguments` and
:func:`run_cluster` when ``--local`` is not given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import yaml

from devstack.cli.charts import ChartError, chart_folder
from devstack.cli.images import BuildRecord, image_values, read_records, with_sets
from devstack.cli.project import Project
from devstack.cli.releases import (
    ReleaseError,
    helm,
    helm_config,
    helm_errors,
    manifest_docs,
    one_line,
    read_progress,
    release_namespace,
    summary,
    workload_docs,
)
from devstack.core import logging as dlog
from devstack.core.errors import ConfigError, TemporaryError
from devstack.core.helmfile import Helmfile, Release, ReleaseId
from devstack.core.helmfile.values import merge
from devstack.core.owner import copy_name

log = dlog.get_logger("devstack.cli.cluster_up")

Role = Literal["copy", "baseline"]
Action = Literal["install", "upgrade"]
DEFAULT_WAIT_TIMEOUT = 300.0


class PlanError(ConfigError):
    """A plan that cannot be made: an unknown service, an uninstalled one."""

    reason = "bad-plan"


# --- the plan (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRelease:
    #: The Helmfile release (the service).
    service: str
    #: The Helm release: ``<service>--<owner>`` for a copy, the service for a baseline.
    release: str
    role: Role
    #: ``""``: the kube context's namespace.
    namespace: str
    action: Action
    #: What devstack adds to the release's own values.
    injected: Mapping[str, Any]
    #: The release's values with ``injected`` merged over them: what Helm gets.
    values: Mapping[str, Any]
    #: The chart, as the Helmfile names it, and its folder (local charts).
    chart: str
    chart_path: str | None
    version: str | None
    #: The services this one needs (in the plan or already in the cluster).
    needs: tuple[str, ...] = ()
    #: The Helmfile's ``helmDefaults.kubeContext`` for it (None: not set).
    kube_context: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "service": self.service,
            "role": self.role,
            "namespace": self.namespace,
            "action": self.action,
            "chart": self.chart,
            "needs": list(self.needs),
            "injectedValues": _plain(self.injected),
        }


@dataclass(frozen=True)
class UpPlan:
    owner: str
    #: Deploy order: each level after the ones before it; one level in parallel.
    levels: tuple[tuple[PlannedRelease, ...], ...]
    #: Baselines the copies need that the cluster already has.
    present: tuple[str, ...] = ()

    @property
    def releases(self) -> tuple[PlannedRelease, ...]:
        return tuple(r for level in self.levels for r in level)

    def as_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "levels": [[r.as_json() for r in level] for level in self.levels],
            "present": list(self.present),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def service_label(release: Release) -> str:
    """The ``devstack.dev/service`` label of a service's baseline and copies:
    its ``devstack.service`` if set, else the release name."""
    given = release.devstack.get("service")
    return str(given) if given else release.name


def injected_values(release: Release, role: Role, owner: str) -> dict[str, Any]:
    """What devstack adds to a release's values, in the library chart's terms:
    a copy gets devstack on with its sidecar (sync route, token, workspace),
    the owner and the service label; a baseline whose values have a
    ``devstack:`` block gets devstack on without the sidecar
    (``sidecar.enabled: false``: the routing labels the agent finds it by,
    and its provisioning hooks), the empty owner and the service label. A
    chart without a ``devstack:`` block gets nothing."""
    service = service_label(release)
    if role == "copy":
        return {
            "devstack": {
                "enabled": True,
                "owner": owner,
                "service": service,
                "sidecar": {"enabled": True},
            }
        }
    if "devstack" not in release.values:
        return {}
    return {
        "devstack": {
            "enabled": True,
            "owner": "",
            "service": service,
            "sidecar": {"enabled": False},
        }
    }


def resolve_services(helmfile: Helmfile, services: Sequence[str]) -> list[Release]:
    """The named services (every installed one when none is named), in the
    Helmfile's order; an unknown or ``installed: false`` one is an error."""
    by_name = {r.name: r for r in helmfile.releases}
    if not services:
        return [r for r in helmfile.releases if r.installed]
    problems = []
    for s in services:
        if s not in by_name:
            known = ", ".join(r.name for r in helmfile.releases if r.installed) or "none"
            problems.append(f"{helmfile.path} declares no service {s!r} (it declares: {known})")
        elif not by_name[s].installed:
            problems.append(f"service {s!r} is installed: false in {by_name[s].source}")
    if problems:
        raise PlanError("; ".join(problems))
    wanted = set(services)
    return [r for r in helmfile.releases if r.name in wanted]


def _need_names(helmfile: Helmfile, release: Release) -> tuple[str, ...]:
    by_id: dict[ReleaseId, str] = {r.id: r.name for r in helmfile.releases}
    return tuple(by_id[n] for n in release.needs if n in by_id)


def plan_up(
    helmfile: Helmfile,
    owner: str,
    services: Sequence[str],
    deployed: Collection[tuple[str, str]],
    *,
    namespace: str = "default",
    builds: Mapping[str, BuildRecord] | None = None,
    baseline: bool = False,
) -> UpPlan:
    """The plan for ``devstack up SERVICE...`` (pure). ``deployed`` holds the
    ``(namespace, release)`` of every Helm release in the cluster; ``namespace``
    is the kube context's, for releases that name none; ``builds`` the image
    ``devstack build`` recorded per service, which its copy (never its
    baseline) deploys. ``baseline`` (``up --baseline``, the platform team's
    deploy): the named services' shared baselines instead of copies,
    installed or upgraded, with what they need that is missing."""
    builds = builds or {}
    targets = resolve_services(helmfile, services)
    target_names = {r.name for r in targets}
    by_name = {r.name: r for r in helmfile.releases}

    def ns_of(r: Release) -> str:
        return r.namespace or namespace

    planned: dict[str, PlannedRelease] = {}
    present: list[str] = []

    def plan(r: Release, role: Role) -> None:
        name = copy_name(r.name, owner) if role == "copy" else r.name
        injected = injected_values(r, role, owner)
        # a copy whose image `devstack build` recorded deploys that image, set
        # at devstack.build.values.repository/.tag as --set would set them
        sets = image_values(r, builds[r.name]) if role == "copy" and r.name in builds else ()
        merged = with_sets(merge(r.values, injected), sets)
        injected = with_sets(injected, sets)
        planned[r.name] = PlannedRelease(
            service=r.name,
            release=name,
            role=role,
            namespace=r.namespace,
            action="upgrade" if (ns_of(r), name) in deployed else "install",
            injected=injected,
            values=merged,
            chart=r.chart.ref,
            chart_path=r.chart.path if r.chart.kind == "local" else None,
            version=r.version,
            needs=_need_names(helmfile, r),
            kube_context=r.helm_defaults.kube_context,
        )

    def baselines_for(r: Release) -> None:
        for need in _need_names(helmfile, r):
            if need in target_names or need in planned or need in present:
                continue
            dep = by_name[need]
            if (ns_of(dep), dep.name) in deployed:
                present.append(need)
                continue
            plan(dep, "baseline")
            baselines_for(dep)

    for r in targets:
        plan(r, "baseline" if baseline else "copy")
    for r in targets:
        baselines_for(r)
    levels = tuple(tuple(planned[n] for n in level if n in planned) for level in helmfile.levels)
    order = {r.name: i for i, r in enumerate(helmfile.releases)}
    return UpPlan(
        owner=owner,
        levels=tuple(lv for lv in levels if lv),
        present=tuple(sorted(present, key=order.__getitem__)),
    )


def check_context(plan: UpPlan, context: str | None) -> None:
    """Every release of the plan goes to one kube context, the project's; a
    release whose Helmfile names another one is an error, never a deploy to
    the wrong cluster."""
    other = sorted(
        (r.kube_context, r.release)
        for r in plan.releases
        if r.kube_context and r.kube_context != context
    )
    if other:
        named = ", ".join(f"{release} ({ctx})" for ctx, release in other)
        raise PlanError(
            f"helmDefaults.kubeContext names another kube context than {context or 'none'} "
            f"for: {named}; devstack up deploys to one context: pass --context"
        )


# --- printing ------------------------------------------------------------------------------


def _flat(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(_flat(v, key + "."))
        else:
            out.append(f"{key}={json.dumps(v)}")
    return out


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, kubectl style."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def format_plan(plan: UpPlan, *, default_namespace: str) -> str:
    rows: list[list[str]] = [
        ["LEVEL", "RELEASE", "SERVICE", "ROLE", "NAMESPACE", "ACTION", "CHART"]
    ]
    for i, level in enumerate(plan.levels, 1):
        for r in level:
            rows.append(
                [
                    str(i),
                    r.release,
                    r.service,
                    r.role,
                    r.namespace or default_namespace,
                    r.action,
                    r.chart,
                ]
            )
    lines = [table(rows) if plan.levels else "nothing to deploy"]
    injected = [(r.release, _flat(r.injected)) for r in plan.releases if r.injected]
    if injected:
        lines.append("values devstack injects:")
        lines.extend(f"  {name}: {' '.join(vals)}" for name, vals in injected)
    if plan.present:
        lines.append(f"already in the cluster: {', '.join(plan.present)}")
    return "\n".join(lines)


def dump(data: Any, output: str) -> str:
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False).rstrip()
    return json.dumps(data, indent=2)


# --- the runner ------------------------------------------------------------------------------


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only ``up`` against a cluster has (``up.py`` adds the services,
    ``--local``, the project and the output flags)."""
    g = parser.add_argument_group("cluster")
    g.add_argument(
        "--baseline",
        action="store_true",
        help="deploy (or upgrade) the shared baselines of the named services, not your "
        "copies: what the platform team runs; routed and provisioned, with no sidecar",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (releases in deploy order, copies and baselines, the values "
        "devstack injects) and change nothing (no remote chart is downloaded either)",
    )
    g.add_argument(
        "--wait-timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long each release may take to install and become ready "
        f"(default {DEFAULT_WAIT_TIMEOUT:.0f})",
    )


@dataclass
class Outcome:
    release: PlannedRelease
    state: str = "pending"
    ok: bool = False
    error: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            **self.release.as_json(),
            "state": self.state,
            "ok": self.ok,
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class Reporter:
    """One line per release per change of state, on ``stream``."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    last: dict[str, str] = field(default_factory=dict)

    def state(self, release: str, text: str) -> None:
        if self.last.get(release) == text:
            return
        self.last[release] = text
        self.stream.write(f"{release}: {text}\n")
        self.stream.flush()


def _ensure_dependencies(chart_path: str) -> None:
    """A local chart whose dependencies are not vendored gets them as
    ``helm dependency build`` would (Helmfile does the same)."""
    path = Path(chart_path)
    meta = path / "Chart.yaml"
    if not path.is_dir() or not meta.is_file():
        return
    declared = (yaml.safe_load(meta.read_text()) or {}).get("dependencies") or ()
    if declared and not (path / "charts").is_dir():
        helm().dependency_update(path, skip_refresh=True)


def _helm_deploy(project: Project, r: PlannedRelease, timeout: float) -> str:
    """Install or upgrade through Helm's engine; the rendered manifest."""
    if r.chart_path is None:  # a repository's or registry's chart: from the cache
        chart_path = chart_folder(project.helmfile.release(r.service))
    else:
        chart_path = r.chart_path
        _ensure_dependencies(chart_path)
    ns = release_namespace(project, r.namespace)
    config = helm_config(project, ns)
    values = dict(_plain(r.values))
    try:
        if r.action == "install":
            got = config.install(
                chart_path, r.release, values, timeout=int(timeout), create_namespace=True
            )
        else:
            got = config.upgrade(chart_path, r.release, values, timeout=int(timeout))
    finally:
        config.close()
    return str(got.get("manifest") or "")


async def _deploy_one(
    project: Project, api: Any, outcome: Outcome, reporter: Reporter, timeout: float
) -> None:
    r = outcome.release
    ns = release_namespace(project, r.namespace)
    started = time.monotonic()
    reporter.state(
        r.release, f"{'installing' if r.action == 'install' else 'upgrading'} ({r.role})"
    )
    failures: tuple[type[BaseException], ...] = (ReleaseError, *helm_errors())
    try:
        manifest = await asyncio.to_thread(_helm_deploy, project, r, timeout)
    except ChartError as e:  # already one line naming the release, chart and fix
        outcome.state, outcome.error = "failed", str(e)
        reporter.state(r.release, "failed")
        return
    except failures as e:
        outcome.state = "failed"
        outcome.error = (
            f"{r.release}: helm {r.action} failed: {one_line(e)} "
            f"(fix the chart or values of {r.service}, then run `devstack up` again)"
        )
        reporter.state(r.release, "failed")
        return
    workloads = workload_docs(manifest_docs(manifest))
    if r.role == "copy" and not await _wake_copy(project, api, outcome, ns, workloads, reporter):
        return
    deadline = started + timeout
    text = "waiting"
    while True:
        try:
            items = await read_progress(api, ns, workloads)
        except TemporaryError as e:  # the server is busy or restarting: ask again
            log.info("up.progress-retry", release=r.release, error=one_line(e))
        else:
            text = summary(items)
            reporter.state(r.release, text)
        if text.startswith("ready"):
            outcome.state, outcome.ok = "ready", True
            break
        if text.startswith("failed"):
            outcome.state = "failed"
            outcome.error = (
                f"{r.release}: {text} (see `kubectl -n {ns} describe` of it, fix it and run "
                "`devstack up` again)"
            )
            break
        if time.monotonic() >= deadline:
            outcome.state = "timed out"
            outcome.error = (
                f"{r.release}: not ready after {timeout:.0f}s ({text.removeprefix('waiting: ')}); "
                f"see `kubectl -n {ns} get pods -l app.kubernetes.io/instance={r.release}`, "
                "or give it longer with --wait-timeout"
            )
            reporter.state(r.release, "timed out")
            break
        await asyncio.sleep(0.5)
    outcome.seconds = time.monotonic() - started
    log.info("up.release", release=r.release, state=outcome.state, seconds=outcome.seconds)


async def _wake_copy(
    project: Project,
    api: Any,
    outcome: Outcome,
    namespace: str,
    workloads: Sequence[Mapping[str, Any]],
    reporter: Reporter,
) -> bool:
    """A copy the agent scaled to zero (asleep, or past its TTL) goes back to
    the replicas its chart renders, and is waited for (docs/sleep.md).
    False, with the outcome failed, when it does not come back."""
    from devstack.agent.sleeper import WakeError, wake

    r = outcome.release
    replicas = {
        str(d["metadata"]["name"]): int((d.get("spec") or {}).get("replicas", 1))
        for d in workloads
        if d.get("kind") == "Deployment"
    }
    try:
        await wake(
            api,
            namespace,
            service_label(project.helmfile.release(r.service)),
            project.owner,
            release=r.release,
            replicas=replicas,
            progress=lambda line: reporter.state(r.release, line.removeprefix(f"{r.release}: ")),
        )
    except (WakeError, TemporaryError) as e:
        outcome.state, outcome.error = "failed", f"{r.release}: waking it failed: {one_line(e)}"
        reporter.state(r.release, "failed")
        return False
    return True


async def execute(
    project: Project, plan: UpPlan, *, timeout: float, reporter: Reporter
) -> list[Outcome]:
    """Deploy ``plan`` level by level; a level that fails stops the ones after it."""
    from devstack.cli.releases import cluster

    outcomes = [Outcome(r) for r in plan.releases]
    by_release = {o.release.release: o for o in outcomes}
    async with cluster(project, "devstack-up") as api:
        for level in plan.levels:
            await asyncio.gather(
                *(
                    _deploy_one(project, api, by_release[r.release], reporter, timeout)
                    for r in level
                )
            )
            if not all(by_release[r.release].ok for r in level):
                for o in outcomes:
                    if o.state == "pending":
                        o.state = "skipped"
                break
    return outcomes


def namespaces_of(helmfile: Helmfile, default: str) -> set[str]:
    return {r.namespace or default for r in helmfile.releases}


def _format_outcomes(outcomes: Iterable[Outcome], *, default_namespace: str) -> str:
    rows = [["RELEASE", "SERVICE", "ROLE", "NAMESPACE", "STATE", "TIME"]]
    for o in outcomes:
        r = o.release
        rows.append(
            [
                r.release,
                r.service,
                r.role,
                r.namespace or default_namespace,
                o.state,
                f"{o.seconds:.0f}s" if o.seconds else "-",
            ]
        )
    return table(rows)


def run_cluster(args: argparse.Namespace, project: Project) -> int:
    """``devstack up [SERVICE...]`` against the project's cluster."""
    output = getattr(args, "output", "table")
    services = list(getattr(args, "services", None) or ())
    default_ns = project.kube.namespace
    deployed = _deployed(project)
    plan = plan_up(
        project.helmfile,
        project.owner,
        services,
        deployed,
        namespace=default_ns,
        builds=read_records(project.state_dir),
        baseline=bool(getattr(args, "baseline", False)),
    )
    check_context(plan, project.kube.context)
    if args.dry_run:
        if output == "table":
            print(format_plan(plan, default_namespace=default_ns))
        else:
            print(dump(plan.as_json(), output))
        return 0
    if not plan.levels:
        print("nothing to deploy", file=sys.stderr)
        return 0
    outcomes = asyncio.run(
        execute(project, plan, timeout=float(args.wait_timeout), reporter=Reporter())
    )
    if output == "table":
        print(_format_outcomes(outcomes, default_namespace=default_ns))
    else:
        print(dump({"owner": plan.owner, "releases": [o.as_json() for o in outcomes]}, output))
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"devstack up: {o.error}", file=sys.stderr)
    return 1 if failed else 0


def _deployed(project: Project) -> set[tuple[str, str]]:
    from devstack.cli.releases import deployed_now

    return deployed_now(project, namespaces_of(project.helmfile, project.kube.namespace))
