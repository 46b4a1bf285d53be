"""What a parsed Helmfile is: frozen values, and the errors that say why not.

Every problem is one line, ``<file>:<line>: <field path>: <message>``, e.g.
``helmfile.yaml:7: releases[1].needs[0]: 'shop/db' names no release ...``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from devstack.core.errors import ConfigError

ChartKind = Literal["local", "repository", "oci"]


class HelmfileError(ConfigError):
    """A Helmfile devstack cannot use. ``problems`` are one line each."""

    reason = "bad-helmfile"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = f"bad Helmfile: {self.problems[0]}"
        else:
            text = "bad Helmfile:\n  " + "\n  ".join(self.problems)
        super().__init__(text)


class TemplateError(ConfigError):
    """A templated Helmfile (or values file) and no way to render it: one line
    naming the file and the fix."""

    reason = "helmfile-template"


class NeedsRender(Exception):
    """Raised by the pure parser on meeting a template in plain mode: the shell
    renders the whole state with helmfile instead. Not a user-visible error."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


@dataclass(frozen=True, order=True)
class ReleaseId:
    """How Helmfile names a release in ``needs``: ``[kubecontext/][namespace/]name``."""

    kube_context: str
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.kube_context:
            return f"{self.kube_context}/{self.namespace}/{self.name}"
        if self.namespace:
            return f"{self.namespace}/{self.name}"
        return self.name


@dataclass(frozen=True)
class Chart:
    """Where a release's chart comes from.

    - ``local``: ``path`` is the chart's folder (or packaged ``.tgz``), absolute;
    - ``repository``: ``repo/chart`` of a declared Helm repository (``url``);
    - ``oci``: ``url`` is the full ``oci://host/path/chart`` reference (given as
      is, or as ``repo/chart`` of a repository declared with ``oci: true``).
    """

    kind: ChartKind
    #: As written in the Helmfile.
    ref: str
    name: str
    path: str | None = None
    repository: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class SetValue:
    """One ``set`` entry: ``name`` is Helm's ``--set`` path (``a.b[0]``)."""

    name: str
    value: Any
    #: ``value`` (``--set``), ``values`` (``--set name={a,b}``) or ``file`` (``--set-file``).
    kind: Literal["value", "values", "file"]


@dataclass(frozen=True)
class HelmDefaults:
    """The ``helmDefaults`` devstack honours (None: not set; Helmfile's default)."""

    kube_context: str | None = None
    wait: bool | None = None
    wait_for_jobs: bool | None = None
    timeout: int | None = None
    create_namespace: bool | None = None
    atomic: bool | None = None


@dataclass(frozen=True)
class Repository:
    name: str
    url: str
    oci: bool = False


@dataclass(frozen=True)
class Environment:
    name: str
    #: Its values, merged in order (what ``.Values`` is in a template).
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    name: str
    chart: Chart
    #: ``""``: the namespace of the kube context (or ``-n``).
    namespace: str
    id: ReleaseId
    version: str | None = None
    #: Helm's values for the release: the ``values`` entries merged in order,
    #: then the ``set`` entries.
    values: Mapping[str, Any] = field(default_factory=dict)
    #: The values files, absolute, in order.
    value_files: tuple[str, ...] = ()
    sets: tuple[SetValue, ...] = ()
    needs: tuple[ReleaseId, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    installed: bool = True
    #: ``values.devstack`` (validated with the library chart's schema); {} if none.
    devstack: Mapping[str, Any] = field(default_factory=dict)
    helm_defaults: HelmDefaults = HelmDefaults()
    #: The Helmfile that declares it, and the line.
    source: str = ""
    line: int = 0


@dataclass(frozen=True)
class Helmfile:
    """A parsed, valid Helmfile (its sub-helmfiles included)."""

    #: The root file, absolute.
    path: str
    environment: Environment
    environment_names: tuple[str, ...]
    repositories: tuple[Repository, ...]
    helm_defaults: HelmDefaults
    #: Every release of every file: sub-helmfiles' first, as Helmfile orders them.
    releases: tuple[Release, ...]
    #: The installed releases in deploy order: each level after the levels it
    #: needs; the releases of one level may deploy in parallel.
    levels: tuple[tuple[str, ...], ...]
    #: Every Helmfile read, absolute.
    files: tuple[str, ...]
    #: True when a helmfile binary rendered it (it was a template).
    rendered: bool = False

    def release(self, name: str) -> Release:
        for r in self.releases:
            if r.name == name:
                return r
        raise KeyError(name)
