"""The engine's bookkeeping, against a recording fake applier and plugin: what a
failure partway through reports, and what pruning deletes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from devstack.provision import engine, names, spec
from devstack.provision.errors import AwsError, ProvisionFailed
from devstack.provision.hooks import HookResult
from devstack.provision.names import PhysicalName
from devstack.provision.plan import Action, ActionKind, Observed, ResourceId
from devstack.provision.plugins import PluginContext, PluginResult

TARGET = engine.Target(release="shop", owner="alice", region="us-east-1", endpoint=None)
OURS = names.ownership_tags("shop", "alice")


class FakeApplier:
    """Records what it is asked; ``fail_after`` names resources whose create call
    succeeds and whose next call fails."""

    def __init__(self, owned: Sequence[Observed] = (), fail_after: set[str] | None = None):
        self._owned = list(owned)
        self.fail_after = fail_after or set()
        self.deleted: list[str] = []
        self.clients: Any = None

    def check(self) -> str:
        return "123456789012"

    def observe(self, ids: Sequence[ResourceId]) -> dict[ResourceId, Observed]:
        return {}

    def owned(self, release: str, owner: str) -> list[Observed]:
        return list(self._owned)

    def apply(self, action: Action, *, record: Callable[[str], None]) -> Observed:
        d = action.desired
        assert action.kind is ActionKind.CREATE
        record("created")
        if d.physical in self.fail_after:
            raise AwsError(f"{d.kind} {d.physical}: versioning: refused")
        return Observed(d.kind, d.physical, d.props, dict(d.tags), {"arn": "a", "url": "u"})

    def delete(self, o: Observed) -> None:
        self.deleted.append(f"{o.kind} {o.physical}")


class Groups:
    """A plugin kind that lists what it owns."""

    schema: Mapping[str, Any] = {"type": "object", "required": ["name"]}

    def __init__(self, owned: list[str]) -> None:
        self._owned = owned
        self.torn_down: list[str] = []

    def apply(self, item: Mapping[str, Any], ctx: PluginContext) -> PluginResult:
        return PluginResult("unchanged", ctx.physical(str(item["name"])))

    def teardown(self, item: Mapping[str, Any], ctx: PluginContext) -> bool:
        self.torn_down.append(str(item["name"]))
        return True

    def owned(self, ctx: PluginContext) -> list[dict[str, Any]]:
        return [{"name": n} for n in self._owned]


def no_hooks(hook: Any, payload: Any, *, cwd: Path | None, env: Any) -> HookResult:
    raise AssertionError("no hooks declared")


def run(
    raw: dict[str, Any],
    applier: FakeApplier,
    *,
    prune: bool = False,
    plugins: Mapping[str, Any] | None = None,
) -> engine.Report:
    plugins = plugins or {}
    the_spec = spec.parse(
        raw, owner="alice", plugin_schemas={k: p.schema for k, p in plugins.items()}
    )
    return engine.provision(
        the_spec,
        target=TARGET,
        applier=applier,
        provisioners=plugins,
        sink=None,
        run_hook=no_hooks,
        prune=prune,
    )


def test_a_resource_is_reported_once_its_create_call_succeeds() -> None:
    applier = FakeApplier(fail_after={"alice-uploads"})
    with pytest.raises(ProvisionFailed) as e:
        run({"sqs": [{"name": "jobs"}], "s3": [{"name": "uploads"}]}, applier)
    # buckets come first: the bucket exists (its create call succeeded), the queue not yet
    assert e.value.done == ("created s3 alice-uploads",)


def stale(kind: str, physical: str) -> Observed:
    return Observed(kind, PhysicalName(physical), {}, OURS)


def test_stale_resources_are_reported_and_kept_without_prune() -> None:
    applier = FakeApplier(owned=[stale("sqs", "alice-old")])
    groups = Groups(owned=["orders", "gone"])
    report = run({"g": [{"name": "orders"}]}, applier, plugins={"g": groups})
    assert report.stale == ("sqs alice-old", "g alice-gone")
    assert report.pruned == ()
    assert applier.deleted == [] and groups.torn_down == []
    assert "stale         g alice-gone: no longer declared; --prune or --teardown removes it" in (
        report.lines()
    )


def test_prune_deletes_what_is_no_longer_declared_in_a_safe_order() -> None:
    applier = FakeApplier(
        owned=[stale("sqs", "alice-old"), stale("sns", "alice-events"), stale("s3", "alice-b")]
    )
    groups = Groups(owned=["orders", "gone"])
    report = run({"g": [{"name": "orders"}]}, applier, plugins={"g": groups}, prune=True)
    # topics before the queues they deliver to
    assert applier.deleted == ["sns alice-events", "sqs alice-old", "s3 alice-b"]
    assert groups.torn_down == ["gone"]
    assert report.pruned == ("sns alice-events", "sqs alice-old", "s3 alice-b", "g alice-gone")
    assert report.done == tuple(f"deleted {p}" for p in report.pruned)
    assert report.stale == ()
