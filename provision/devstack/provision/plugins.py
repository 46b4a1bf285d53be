"""Plugins: new resource kinds from Python entry points (loads code, no AWS I/O).

A distribution registers, in the entry-point group ``devstack.provisioners``,
an object (or a class or factory returning one) that satisfies
:class:`Provisioner`. The entry point's name is the kind, the key it owns
under ``devstack.aws``::

    [project.entry-points."devstack.provisioners"]
    logGroups = "devstack_logs:LogGroups"

The engine validates each declared item against the plugin's ``schema`` before
anything is created, then calls ``apply`` once per item after the built-in
kinds, and ``teardown`` once per item on ``--teardown``. A plugin talks to AWS
through ``ctx.clients.client("logs")`` (boto3 clients for the run's endpoint,
region and credentials), tags what it creates with ``ctx.tags`` and calls
``ctx.created(physical)`` as soon as it has created something, so that a failure
later in the same ``apply`` still reports it.

A plugin may also list what it owns (:class:`ListsOwned`: ``owned(ctx)``, the items
tagged as the run's release and owner). Then items removed from the spec are
reported as stale, removed by ``--prune``, and found by ``--teardown`` without the
spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final, Protocol, runtime_checkable

from devstack.core.errors import ConfigError
from devstack.provision import names
from devstack.provision.spec import BUILTIN_KINDS, SETTINGS

GROUP: Final = "devstack.provisioners"


class AwsClients(Protocol):
    def client(self, service: str) -> Any: ...


@dataclass(frozen=True)
class PluginContext:
    """What a plugin gets for one run."""

    release: str
    owner: str
    region: str
    endpoint: str | None
    clients: AwsClients
    #: The ownership tags to put on what the plugin creates.
    tags: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False
    #: Told by :meth:`created`.
    on_created: Callable[[str], None] | None = None

    def created(self, physical: str) -> None:
        """Report that ``physical`` now exists (call it right after creating it)."""
        if self.on_created is not None:
            self.on_created(physical)

    def physical(self, declared: str) -> str:
        """The owner-prefixed name of ``declared``."""
        return names.physical(declared, self.owner)

    def env_name(self, kind_token: str, declared: str, what: str) -> str:
        """``DEVSTACK_<KIND>_<NAME>_<WHAT>``."""
        return names.env_name(kind_token, declared, what)

    def belongs(self, tags: Mapping[str, str]) -> bool:
        """Whether a resource with ``tags`` is this release's and owner's."""
        return names.belongs_to(tags, self.release, self.owner)


@dataclass(frozen=True)
class PluginResult:
    """What ``apply`` did (or, in a dry run, would do) to one item."""

    #: ``create``, ``update``, ``unchanged``, ``cannot-update`` or ``foreign``.
    action: str
    physical: str
    #: Environment variables for the app (non-secret).
    outputs: Mapping[str, str] = field(default_factory=dict)
    detail: str = ""


@runtime_checkable
class Provisioner(Protocol):
    #: JSON Schema (draft 7) of one declared item; it must require ``name``.
    schema: Mapping[str, Any]

    def apply(self, item: Mapping[str, Any], ctx: PluginContext) -> PluginResult: ...

    def teardown(self, item: Mapping[str, Any], ctx: PluginContext) -> bool:
        """Delete the item if it is this release's and owner's; True if deleted."""
        ...


@runtime_checkable
class ListsOwned(Protocol):
    """A provisioner that can list what the run's release and owner own."""

    def owned(self, ctx: PluginContext) -> Iterable[Mapping[str, Any]]:
        """An item (at least ``{"name": <declared name>}``) for each resource of
        this kind tagged as ``ctx``'s release and owner."""
        ...


@dataclass(frozen=True)
class Loaded:
    provisioners: Mapping[str, Provisioner]
    #: Entry points that failed to load: kind -> why.
    broken: Mapping[str, str]

    def schemas(self) -> dict[str, Mapping[str, Any]]:
        return {k: p.schema for k, p in self.provisioners.items()}

    def require(self, kinds: Iterable[str]) -> None:
        """Fail if a kind the spec uses comes from a plugin that did not load."""
        problems = [
            f"plugin {k!r} failed to load: {self.broken[k]}" for k in kinds if k in self.broken
        ]
        if problems:
            raise ConfigError("; ".join(problems))


def discover() -> list[metadata.EntryPoint]:
    """The installed entry points of the group (the default source)."""
    return list(metadata.entry_points(group=GROUP))


def load(entry_points: Iterable[metadata.EntryPoint] | None = None) -> Loaded:
    """Load provisioners from ``entry_points`` (default: the installed ones).
    A plugin that fails to load only matters if the spec uses its kind."""
    found: dict[str, Provisioner] = {}
    broken: dict[str, str] = {}
    for ep in discover() if entry_points is None else entry_points:
        kind = ep.name
        if kind in BUILTIN_KINDS or kind in SETTINGS:
            broken[kind] = f"{kind!r} is built in; a plugin cannot replace it"
            continue
        try:
            obj = ep.load()
            if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Provisioner)):
                obj = obj()
        except Exception as e:  # a third party's import-time failure
            broken[kind] = f"{type(e).__name__}: {e}"
            continue
        if not isinstance(obj, Provisioner):
            broken[kind] = f"{ep.value} has no schema/apply/teardown"
            continue
        found[kind] = obj
    return Loaded(found, broken)
