"""The engine: observe, plan, apply, run hooks, prune, write outputs; and teardown.

It does no I/O of its own: AWS goes through an :class:`Applier` (the real one
is :class:`devstack.provision.aws.BotoApplier`), hooks through a
:class:`HookRunner`, outputs through an :class:`OutputsSink`. Its job is the
order of things and the bookkeeping that makes a failure partway through say
exactly what was done (:class:`ProvisionFailed`): the applier and the plugins
report each resource the moment it exists, not when its last call returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from devstack.core.errors import DevstackError
from devstack.core.logging import get_logger
from devstack.provision import desired as desired_mod
from devstack.provision import names
from devstack.provision import outputs as outputs_mod
from devstack.provision.errors import HookError, ProvisionFailed
from devstack.provision.hooks import HookResult
from devstack.provision.outputs import Outputs, OutputsSink
from devstack.provision.plan import (
    STALE_HINT,
    Action,
    ActionKind,
    Desired,
    Observed,
    Plan,
    ResourceId,
    plan,
    teardown_order,
)
from devstack.provision.plugins import (
    AwsClients,
    ListsOwned,
    PluginContext,
    PluginResult,
    Provisioner,
)
from devstack.provision.spec import Hook, Spec

log = get_logger("provision.engine")


class Applier(Protocol):
    """What the engine needs from AWS."""

    @property
    def clients(self) -> AwsClients: ...

    def check(self) -> str: ...

    def observe(self, ids: Sequence[ResourceId]) -> dict[ResourceId, Observed]: ...

    def owned(self, release: str, owner: str) -> list[Observed]: ...

    def apply(self, action: Action, *, record: Callable[[str], None]) -> Observed:
        """Carry out ``action``; call ``record("created")`` / ``record("updated")``
        as soon as a call that creates or changes the resource succeeds."""
        ...

    def delete(self, o: Observed) -> None: ...


class HookRunner(Protocol):
    def __call__(
        self, hook: Hook, payload: Mapping[str, Any], *, cwd: Path | None, env: Mapping[str, str]
    ) -> HookResult: ...


@dataclass(frozen=True)
class Target:
    """Who and where: one release and owner, one endpoint and region."""

    release: str
    owner: str
    region: str
    endpoint: str | None
    #: Where hooks run (the spec file's folder).
    workdir: Path | None = None
    #: Extra environment for hooks (the fallback LocalStack credentials).
    hook_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    plan: Plan
    plugins: tuple[tuple[str, str, PluginResult], ...] = ()
    outputs: Outputs = field(default_factory=Outputs)
    hooks: tuple[str, ...] = ()
    #: ``verb kind name`` for everything created, changed or deleted.
    done: tuple[str, ...] = ()
    dry_run: bool = False
    #: ``kind physical`` of what this release and owner created but no longer declare:
    #: deleted (``pruned``), or left in place (``stale``).
    stale: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        out = [a.describe() for a in self.plan.actions]
        for kind, declared, r in self.plugins:
            line = f"{r.action:<13} {kind} {declared}"
            if r.physical != declared:
                line += f" ({r.physical})"
            out.append(line + (f": {r.detail}" if r.detail else ""))
        verb = "would prune" if self.dry_run else "pruned"
        out += [f"{verb:<13} {p}" for p in self.pruned]
        out += [f"{'stale':<13} {s}: {STALE_HINT}" for s in self.stale]
        out += [f"{'hook':<13} {h}" for h in self.hooks]
        return out

    @property
    def blocked(self) -> list[Action]:
        return [a for a in self.plan.actions if a.kind is ActionKind.CANNOT_UPDATE]


@dataclass(frozen=True)
class TeardownReport:
    deleted: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        return [f"{verb:<13} {d}" for d in self.deleted] + [f"{'hook':<13} {h}" for h in self.hooks]


def _payload(phase: str, target: Target, spec: Spec, outputs: Outputs) -> dict[str, Any]:
    return {
        "phase": phase,
        "release": target.release,
        "owner": target.owner,
        "region": target.region,
        "endpoint": target.endpoint,
        "spec": dict(spec.raw),
        "outputs": dict(outputs.config),
        "secretOutputs": dict(outputs.secret),
    }


def _hook_env(phase: str, target: Target) -> dict[str, str]:
    env = {
        **target.hook_env,
        "DEVSTACK_RELEASE": target.release,
        "DEVSTACK_OWNER": target.owner,
        "DEVSTACK_PHASE": phase,
        "AWS_REGION": target.region,
        "AWS_DEFAULT_REGION": target.region,
    }
    if target.endpoint:
        env["AWS_ENDPOINT_URL"] = target.endpoint
    return env


def _created_by(record: Callable[[str, str, str], None], kind: str) -> Callable[[str], None]:
    """A plugin's ``ctx.created(physical)``: reported at once."""
    return lambda physical: record(kind, physical, "created")


def _plugin_error(step: str, e: Exception) -> HookError:
    return HookError(f"{step}: {type(e).__name__}: {e}")


def _owned_plugin_items(
    provisioners: Mapping[str, Provisioner], ctx: PluginContext
) -> list[tuple[str, Mapping[str, Any]]]:
    """(kind, item) for what every plugin that can list it says this run's release
    and owner own."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    for kind, p in sorted(provisioners.items()):
        if not isinstance(p, ListsOwned):
            continue
        try:
            found += [(kind, dict(item)) for item in p.owned(ctx)]
        except DevstackError:
            raise
        except Exception as e:  # a third party's bug, reported as such
            raise _plugin_error(f"plugin {kind}: listing what it owns", e) from e
    return found


def _stale_plugin_items(
    spec: Spec, provisioners: Mapping[str, Provisioner], ctx: PluginContext
) -> list[tuple[str, Mapping[str, Any]]]:
    declared = {(k, str(i["name"])) for k, items in spec.extra.items() for i in items}
    return [
        (kind, item)
        for kind, item in _owned_plugin_items(provisioners, ctx)
        if (kind, str(item["name"])) not in declared
    ]


def provision(
    spec: Spec,
    *,
    target: Target,
    applier: Applier,
    provisioners: Mapping[str, Provisioner],
    sink: OutputsSink | None,
    run_hook: HookRunner,
    dry_run: bool = False,
    prune: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> Report:
    """Make AWS match ``spec`` for ``target``; run the hooks; with ``prune``, delete
    what this release and owner created earlier but no longer declare; write the
    outputs."""
    desired = desired_mod.desired_state(spec, owner=target.owner, release=target.release)
    applier.check()
    observed = applier.observe([d.id for d in desired])
    owned = applier.owned(target.release, target.owner)
    the_plan = plan(desired, observed, release=target.release, owner=target.owner, owned=owned)
    for line in the_plan.describe():
        log.info("provision.planned", action=line)
    ctx = PluginContext(
        release=target.release,
        owner=target.owner,
        region=target.region,
        endpoint=target.endpoint,
        clients=applier.clients,
        tags=names.ownership_tags(target.release, target.owner),
        dry_run=dry_run,
    )
    if dry_run:
        planned = tuple(
            (kind, str(item["name"]), provisioners[kind].apply(item, ctx))
            for kind, items in spec.extra.items()
            for item in items
        )
        leftover = [f"{o.kind} {o.physical}" for o in teardown_order(the_plan.stale)]
        leftover += [
            f"{k} {ctx.physical(str(i['name']))}"
            for k, i in _stale_plugin_items(spec, provisioners, ctx)
        ]
        return Report(
            the_plan,
            planned,
            dry_run=True,
            stale=() if prune else tuple(leftover),
            pruned=tuple(leftover) if prune else (),
        )

    done: list[str] = []
    reported: set[tuple[str, str]] = set()

    def record(kind: str, physical: str, verb: str) -> None:
        """Report ``verb kind physical`` once per resource, as soon as it is true."""
        if (kind, physical) in reported:
            return
        reported.add((kind, physical))
        line = f"{verb} {kind} {physical}"
        done.append(line)
        log.info("provision.applied", kind=kind, name=physical, action=verb)
        if on_step:
            on_step(line)

    def recorder(kind: str, physical: str) -> Callable[[str], None]:
        return lambda verb: record(kind, physical, verb)

    step = "provisioning"
    stale: list[str] = []
    pruned: list[str] = []
    try:
        states: list[tuple[Desired, Observed]] = []
        for action in the_plan.actions:
            step = action.describe()
            d = action.desired
            state = applier.apply(action, record=recorder(d.kind, d.physical))
            states.append((d, state))
        result = outputs_mod.compute(states, endpoint=target.endpoint, region=target.region)

        plugin_results: list[tuple[str, str, PluginResult]] = []
        for kind, items in spec.extra.items():
            kind_ctx = dataclasses.replace(ctx, on_created=_created_by(record, kind))
            for item in items:
                step = f"plugin {kind} {item['name']}"
                try:
                    r = provisioners[kind].apply(item, kind_ctx)
                except DevstackError:
                    raise
                except Exception as e:  # a third party's bug, reported as such
                    raise _plugin_error(step, e) from e
                problems = outputs_mod.check_names(r.outputs, source=step)
                if problems:
                    raise HookError("; ".join(problems))
                plugin_results.append((kind, str(item["name"]), r))
                result = result.with_config(r.outputs)
                if r.action in ("create", "update"):
                    record(kind, r.physical, f"{r.action}d")

        hooks_run: list[str] = []
        for hook in spec.hooks:
            if "provision" not in hook.on:
                continue
            step = f"hook {hook.name}"
            hr = run_hook(
                hook,
                _payload("provision", target, spec, result),
                cwd=target.workdir,
                env=_hook_env("provision", target),
            )
            hooks_run.append(hook.name)
            done.append(f"ran hook {hook.name}")
            result = result.with_config(hr.outputs)

        step = "finding stale plugin items"
        stale_items = _stale_plugin_items(spec, provisioners, ctx)
        if not prune:
            stale = [f"{o.kind} {o.physical}" for o in teardown_order(the_plan.stale)]
            stale += [f"{k} {ctx.physical(str(i['name']))}" for k, i in stale_items]
        else:
            for o in teardown_order(the_plan.stale):
                step = f"prune {o.kind} {o.physical}"
                applier.delete(o)
                pruned.append(f"{o.kind} {o.physical}")
                done.append(f"deleted {o.kind} {o.physical}")
                log.info("provision.pruned", kind=o.kind, name=o.physical)
            for kind, item in stale_items:
                physical = ctx.physical(str(item["name"]))
                step = f"prune plugin {kind} {physical}"
                try:
                    deleted = provisioners[kind].teardown(item, ctx)
                except DevstackError:
                    raise
                except Exception as e:
                    raise _plugin_error(step, e) from e
                if deleted:
                    pruned.append(f"{kind} {physical}")
                    done.append(f"deleted {kind} {physical}")
                    log.info("provision.pruned", kind=kind, name=physical)

        if sink is not None:
            step = f"writing outputs to {sink.describe()}"
            sink.write(result)
    except DevstackError as e:
        log.error("provision.failed", step=step, error=str(e), done=done)
        raise ProvisionFailed(step, e, done) from e
    for line in stale:
        log.warning("provision.stale", resource=line, hint=STALE_HINT)
    return Report(
        the_plan,
        tuple(plugin_results),
        result,
        tuple(hooks_run),
        tuple(done),
        stale=tuple(stale),
        pruned=tuple(pruned),
    )


def teardown(
    spec: Spec | None,
    *,
    target: Target,
    applier: Applier,
    provisioners: Mapping[str, Provisioner],
    sink: OutputsSink | None,
    run_hook: HookRunner,
    dry_run: bool = False,
) -> TeardownReport:
    """Delete what belongs to ``target``'s release and owner, and nothing else.

    Teardown hooks run first (the resources still exist), then plugin items
    (declared in ``spec``, or listed by plugins that can list what they own), then
    every resource tagged as this release's and owner's, then the outputs.
    """
    applier.check()
    owned = teardown_order(applier.owned(target.release, target.owner))
    spec = spec or Spec()
    if dry_run:
        return TeardownReport(tuple(f"{o.kind} {o.physical}" for o in owned), dry_run=True)
    ctx = PluginContext(
        release=target.release,
        owner=target.owner,
        region=target.region,
        endpoint=target.endpoint,
        clients=applier.clients,
        tags=names.ownership_tags(target.release, target.owner),
    )
    deleted: list[str] = []
    hooks_run: list[str] = []
    step = "teardown"
    try:
        for hook in spec.hooks:
            if "teardown" not in hook.on:
                continue
            step = f"hook {hook.name}"
            run_hook(
                hook,
                _payload("teardown", target, spec, Outputs()),
                cwd=target.workdir,
                env=_hook_env("teardown", target),
            )
            hooks_run.append(hook.name)
        step = "finding plugin items"
        for kind, item in _teardown_plugin_items(spec, provisioners, ctx):
            step = f"plugin {kind} {item['name']}: teardown"
            try:
                if provisioners[kind].teardown(item, ctx):
                    deleted.append(f"{kind} {ctx.physical(str(item['name']))}")
            except DevstackError:
                raise
            except Exception as e:
                raise _plugin_error(step, e) from e
        for o in owned:
            step = f"delete {o.kind} {o.physical}"
            applier.delete(o)
            deleted.append(f"{o.kind} {o.physical}")
            log.info("provision.deleted", kind=o.kind, name=o.physical)
        if sink is not None:
            step = f"deleting outputs {sink.describe()}"
            sink.delete()
    except DevstackError as e:
        log.error("provision.teardown_failed", step=step, error=str(e), deleted=deleted)
        raise ProvisionFailed(step, e, [f"deleted {d}" for d in deleted]) from e
    return TeardownReport(tuple(deleted), tuple(hooks_run))


def _teardown_plugin_items(
    spec: Spec, provisioners: Mapping[str, Provisioner], ctx: PluginContext
) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Declared items first, then owned ones not declared (each once, by name)."""
    seen: set[tuple[str, str]] = set()
    for kind, items in spec.extra.items():
        for item in items:
            seen.add((kind, str(item["name"])))
            yield kind, item
    for kind, item in _owned_plugin_items(provisioners, ctx):
        if (kind, str(item["name"])) not in seen:
            seen.add((kind, str(item["name"])))
            yield kind, item
