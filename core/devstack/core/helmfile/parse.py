"""The Helmfile parser (pure: every file comes through a :class:`Files` the
shell hands it).

It reads Helmfile's own format with Helmfile's semantics for the keys devstack
supports (docs/helmfile.md lists them) and turns any other key into a problem
naming the key and its line. Two entry points:

- :func:`parse`: a plain-YAML Helmfile. Meeting a template (a state file named
  ``*.gotmpl`` or containing ``{{``, a values file named ``*.gotmpl``) raises
  :class:`NeedsRender`: the shell then renders the state with helmfile;
- :func:`parse_rendered`: the output of ``helmfile build --embed-values``
  (one document per state file, each headed ``#  Source: <path>``), with the
  few fields helmfile adds to it.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Protocol, cast

import jsonschema

from devstack.core.fields import field_path, json_kind
from devstack.core.helmfile import values as vals
from devstack.core.helmfile.model import (
    Chart,
    Environment,
    HelmDefaults,
    Helmfile,
    HelmfileError,
    NeedsRender,
    Release,
    ReleaseId,
    Repository,
    SetValue,
)
from devstack.core.helmfile.order import CycleError, levels
from devstack.core.helmfile.yamlmarks import Document, Path, YamlError, load_documents

DEFAULT_ENVIRONMENT: Final = "default"

TOP_KEYS: Final = ("releases", "repositories", "helmfiles", "environments", "helmDefaults")
RELEASE_KEYS: Final = (
    "name", "chart", "version", "namespace", "values", "set", "needs", "labels", "installed",
)  # fmt: skip
REPOSITORY_KEYS: Final = ("name", "url", "oci")
HELM_DEFAULTS_KEYS: Final = (
    "kubeContext", "wait", "waitForJobs", "timeout", "createNamespace", "atomic",
)  # fmt: skip
ENVIRONMENT_KEYS: Final = ("values",)
SET_KEYS: Final = ("name", "value", "values", "file")
SUB_HELMFILE_KEYS: Final = ("path",)

#: What ``helmfile build`` adds to a state: accepted (and ignored) there only.
RENDERED_TOP: Final[dict[str, Any]] = {
    "filepath": None,
    "helmBinary": "helm",
    "kustomizeBinary": "kustomize",
    "templates": {},
    "renderedvalues": None,
}
RENDERED_RELEASE: Final = ("chartPath",)
#: helmDefaults that ``helmfile build`` always prints: fine at their zero value.
RENDERED_HELM_DEFAULTS: Final = {
    "verify": False, "enableDNS": False, "devel": False, "waitRetries": 0,
    "recreatePods": False, "force": False, "rollbackOnFailure": False,
    "forceConflicts": False, "skipDeps": False, "skipRefresh": False, "reuseValues": False,
}  # fmt: skip

_RELEASE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SOURCE = re.compile(r"^#\s+Source:\s*(.+?)\s*$", re.M)
_GLOB = re.compile(r"[*?\[]")


class Files(Protocol):
    """What the parser may know of the file system."""

    def read_text(self, path: str) -> str | None:
        """The text of the file at ``path`` (absolute), or None if there is none."""

    def is_dir(self, path: str) -> bool: ...

    def is_file(self, path: str) -> bool: ...


def is_template(path: str, text: str) -> bool:
    """Whether a state file is a Go template: named ``*.gotmpl`` or containing ``{{``."""
    return path.endswith(".gotmpl") or "{{" in text


@functools.cache
def devstack_schema() -> dict[str, Any]:
    """The library chart's schema of ``devstack:`` (generated from
    helm/devstack-lib/values.schema.json by scripts/gen-chart-schema)."""
    text = (
        resources.files("devstack.core.helmfile")
        .joinpath("devstack.schema.json")
        .read_text("utf-8")
    )
    return cast(dict[str, Any], json.loads(text))


def parse(root: str, files: Files, *, environment: str = DEFAULT_ENVIRONMENT) -> Helmfile:
    """Parse the plain-YAML Helmfile at ``root`` (absolute) and the files it
    names. Raises :class:`HelmfileError` with every problem, or
    :class:`NeedsRender` on meeting a template."""
    return _Parser(root, files, environment, rendered=None).run()


def parse_rendered(
    root: str, output: str, files: Files, *, environment: str = DEFAULT_ENVIRONMENT
) -> Helmfile:
    """Parse ``helmfile build --embed-values`` output for ``root``."""
    states: dict[str, str] = {}
    for source, text in split_rendered(output):
        states[source] = text
    if root not in states:
        raise HelmfileError(
            [f"{root}: helmfile build printed no state for it (it printed: {', '.join(states)})"]
        )
    return _Parser(root, files, environment, rendered=states).run()


def split_rendered(output: str) -> list[tuple[str, str]]:
    """``(source path, state YAML)`` of each document ``helmfile build`` printed."""
    heads = list(_SOURCE.finditer(output))
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(output)
        body = output[m.end() : end]
        body = re.sub(r"\n---\s*$", "\n", body)
        out.append((posixpath.normpath(m.group(1)), body))
    return out


# ---------------------------------------------------------------- the parser


@dataclass
class _Entry:
    """Where a part of a release's values came from, to name its line."""

    doc: Document
    prefix: Path
    file: str
    data: Mapping[str, Any]


@dataclass
class _Draft:
    release: Release
    file: str
    doc: Document
    path: Path
    raw_needs: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _State:
    """One state file, its documents merged as Helmfile merges them."""

    path: str
    data: dict[str, Any] = field(default_factory=dict)
    #: Which document each top-level key (and environment) came from.
    origin: dict[str, Document] = field(default_factory=dict)
    helm_defaults: dict[str, tuple[Document, Any]] = field(default_factory=dict)
    environments: dict[str, tuple[Document, Any]] = field(default_factory=dict)


class _Parser:
    def __init__(
        self,
        root: str,
        files: Files,
        environment: str,
        rendered: Mapping[str, str] | None,
    ) -> None:
        self.root = posixpath.normpath(root)
        self.base = posixpath.dirname(self.root)
        self.files = files
        self.environment_name = environment
        self.rendered = rendered
        self.problems: list[str] = []
        self.drafts: list[_Draft] = []
        self.repositories: dict[str, tuple[Repository, str]] = {}
        self.read: list[str] = []
        self.root_defaults = HelmDefaults()
        self.environment = Environment(environment)
        self.environment_names: tuple[str, ...] = ()

    # ------------------------------------------------------------ helpers

    def show(self, path: str) -> str:
        """``path`` for a person: relative to the root's folder when inside it."""
        rel = posixpath.relpath(path, self.base)
        shown = path if rel.startswith("../") else rel
        if self.rendered is not None and path in self.rendered:
            return f"{shown} (as helmfile rendered it)"
        return shown

    def problem(
        self,
        file: str,
        doc: Document | None,
        path: Path,
        message: str,
        *,
        line_of: Path | None = None,
    ) -> None:
        line = doc.line(path if line_of is None else line_of) if doc is not None else 1
        where = f"{field_path(path)}: " if path else ""
        self.problems.append(f"{self.show(file)}:{line}: {where}{message}")

    def unknown_keys(
        self,
        file: str,
        doc: Document,
        path: Path,
        data: Mapping[str, Any],
        allowed: Sequence[str],
        *,
        ignored: Callable[[str, Any], bool] = lambda _k, _v: False,
    ) -> None:
        for key, value in data.items():
            if key in allowed or (self.rendered is not None and ignored(key, value)):
                continue
            self.problem(
                file,
                doc,
                (*path, key),
                f"unknown key (devstack reads: {', '.join(allowed)}; see docs/helmfile.md)",
            )

    def mapping(self, file: str, doc: Document, path: Path, value: Any) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.problem(file, doc, path, f"must be a mapping, not {json_kind(value)}")
        return None

    def string(
        self, file: str, doc: Document, path: Path, value: Any, *, required: bool = False
    ) -> str | None:
        if value is None and not required:
            return None
        if isinstance(value, str) and (value or not required):
            return value
        if value is None or value == "":
            self.problem(file, doc, path, "is required")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self.problem(file, doc, path, f'must be a string, not a number (quote it: "{value}")')
        else:
            self.problem(file, doc, path, f"must be a string, not {json_kind(value)}")
        return None

    def boolean(self, file: str, doc: Document, path: Path, value: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        self.problem(file, doc, path, f"must be true or false, not {json_kind(value)}")
        return None

    def resolve(self, file: str, relative: str) -> str:
        """A path of ``file``'s, relative to its folder (Helmfile's basePath)."""
        return posixpath.normpath(posixpath.join(posixpath.dirname(file), relative))

    # ------------------------------------------------------------ files

    def run(self) -> Helmfile:
        self.state_file(self.root, None, (), [], is_root=True)
        releases = self.finish()
        if self.problems:
            raise HelmfileError(self.problems)
        needs = {r.name: [n.name for n in r.needs] for r in releases if r.installed}
        try:
            order = levels(needs)
        except CycleError as e:  # finish() reports cycles; defensive
            raise HelmfileError([str(e)]) from e
        return Helmfile(
            path=self.root,
            environment=self.environment,
            environment_names=self.environment_names,
            repositories=tuple(r for r, _ in self.repositories.values()),
            helm_defaults=self.root_defaults,
            releases=tuple(releases),
            levels=order,
            files=tuple(self.read),
            rendered=self.rendered is not None,
        )

    def state_file(
        self,
        path: str,
        including: tuple[str, Document] | None,
        at: Path,
        stack: list[str],
        *,
        is_root: bool = False,
    ) -> None:
        def fail(message: str) -> None:
            if including is None:
                self.problems.append(f"{self.show(path)}: {message}")
            else:
                self.problem(including[0], including[1], at, message)

        if path in stack:
            chain = " -> ".join(self.show(p) for p in [*stack[stack.index(path) :], path])
            fail(f"includes {self.show(path)} again ({chain})")
            return
        if self.rendered is not None:
            text = self.rendered.get(path)
            if text is None:
                fail(f"{self.show(path)}: helmfile build printed no state for it")
                return
        else:
            text = self.files.read_text(path)
            if text is None:
                what = "Helmfile" if is_root else "sub-helmfile"
                fail(f"{what} {self.show(path)} does not exist")
                return
            if is_template(path, text):
                why = "is named *.gotmpl" if path.endswith(".gotmpl") else "contains {{"
                raise NeedsRender(path, why)
        self.read.append(path)
        try:
            docs = load_documents(text)
        except YamlError as e:
            self.problems.append(f"{self.show(path)}:{e.line}: {e.message}")
            return
        state = self.merge_documents(path, docs)
        if state is None:
            return
        self.process(state, [*stack, path], is_root=is_root)

    def merge_documents(self, path: str, docs: list[Document]) -> _State | None:
        state = _State(path)
        seen_env_doc: int | None = None
        seen_release_doc: int | None = None
        for doc in docs:
            for p, line, message in doc.problems:
                self.problems.append(f"{self.show(path)}:{line}: {field_path(p)}: {message}")
            if doc.data is None:
                continue
            data = self.mapping(path, doc, (), doc.data)
            if data is None:
                continue
            allowed_top = TOP_KEYS
            self.unknown_keys(
                path, doc, (), data, allowed_top, ignored=lambda k, _v: k in RENDERED_TOP
            )
            if self.rendered is not None:
                for key, default in RENDERED_TOP.items():
                    if default is not None and key in data and data[key] != default:
                        self.problem(path, doc, (key,), f"is not supported (only {default!r} is)")
            if "environments" in data:
                if "releases" in data and self.rendered is None:
                    self.problem(
                        path,
                        doc,
                        ("environments",),
                        "environments and releases must be in separate documents "
                        "(as Helmfile v1 requires): put --- between them",
                    )
                seen_env_doc = doc.index if seen_env_doc is None else seen_env_doc
            if "releases" in data:
                seen_release_doc = doc.index if seen_release_doc is None else seen_release_doc
            if (
                self.rendered is None
                and "environments" in data
                and seen_release_doc is not None
                and seen_release_doc < doc.index
            ):
                self.problem(
                    path,
                    doc,
                    ("environments",),
                    "must come before releases (as Helmfile v1 requires)",
                )
            for key in ("releases", "repositories", "helmfiles"):
                if key not in data:
                    continue
                if key in state.data and data[key]:
                    first = state.origin[key]
                    self.problem(
                        path,
                        doc,
                        (key,),
                        f"is also set in document {first.index + 1} (line {first.line((key,))}); "
                        "Helmfile keeps only the last list: declare them in one document",
                    )
                    continue
                state.data[key] = data[key]
                state.origin[key] = doc
            if "renderedvalues" in data and self.rendered is not None:
                state.data["renderedvalues"] = data["renderedvalues"]
            if "helmDefaults" in data:
                hd = self.mapping(path, doc, ("helmDefaults",), data["helmDefaults"])
                for k, v in (hd or {}).items():
                    state.helm_defaults[k] = (doc, v)
            if "environments" in data:
                envs = self.mapping(path, doc, ("environments",), data["environments"])
                for name, spec in (envs or {}).items():
                    if name in state.environments:
                        first_doc = state.environments[name][0]
                        self.problem(
                            path,
                            doc,
                            ("environments", name),
                            f"is also declared in document {first_doc.index + 1}; "
                            "declare each environment once",
                        )
                        continue
                    state.environments[name] = (doc, spec)
        return state

    # ------------------------------------------------------------ one state

    def process(self, state: _State, stack: list[str], *, is_root: bool) -> None:
        path = state.path
        defaults = self.helm_defaults(state)
        if is_root:
            self.root_defaults = defaults
            self.environments(state)
        else:
            for name, (doc, spec) in state.environments.items():
                self.environment_values(path, doc, name, spec)
        repos = self.repos(state)
        if "helmfiles" in state.data:
            doc = state.origin["helmfiles"]
            entries = state.data["helmfiles"]
            if not isinstance(entries, list):
                self.problem(path, doc, ("helmfiles",), f"must be a list, not {json_kind(entries)}")
            else:
                for i, entry in enumerate(entries):
                    at: Path = ("helmfiles", i)
                    sub = self.sub_helmfile(path, doc, at, entry)
                    if sub is not None:
                        self.state_file(sub, (path, doc), at, stack)
        if "releases" in state.data:
            doc = state.origin["releases"]
            items = state.data["releases"]
            if not isinstance(items, list):
                self.problem(path, doc, ("releases",), f"must be a list, not {json_kind(items)}")
                return
            for i, raw in enumerate(items):
                self.release(path, doc, ("releases", i), raw, repos, defaults)

    def helm_defaults(self, state: _State) -> HelmDefaults:
        path = state.path
        got: dict[str, Any] = {}
        for key, (doc, value) in state.helm_defaults.items():
            at: Path = ("helmDefaults", key)
            if key not in HELM_DEFAULTS_KEYS:
                if self.rendered is not None and RENDERED_HELM_DEFAULTS.get(key, ...) == value:
                    continue
                self.problem(
                    path,
                    doc,
                    at,
                    f"unknown key (devstack reads: {', '.join(HELM_DEFAULTS_KEYS)}; "
                    "see docs/helmfile.md)",
                )
            elif key == "kubeContext":
                got["kube_context"] = self.string(path, doc, at, value)
            elif key == "timeout":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    self.problem(
                        path, doc, at, f"must be a number of seconds, not {json_kind(value)}"
                    )
                else:
                    got["timeout"] = value
            else:
                attr = {
                    "wait": "wait",
                    "waitForJobs": "wait_for_jobs",
                    "createNamespace": "create_namespace",
                    "atomic": "atomic",
                }[key]
                got[attr] = self.boolean(path, doc, at, value)
        if self.rendered is not None and got.get("wait") is False:
            got["wait"] = None  # helmfile build prints the zero values it did not get
        for key in ("wait_for_jobs", "atomic"):
            if self.rendered is not None and got.get(key) is False:
                got[key] = None
        return HelmDefaults(**got)

    def environments(self, state: _State) -> None:
        names = []
        for name, (doc, spec) in state.environments.items():
            names.append(name)
            values = self.environment_values(state.path, doc, name, spec)
            if name == self.environment_name:
                self.environment = Environment(name, values)
        self.environment_names = tuple(names)
        if self.rendered is not None:
            rv = state.data.get("renderedvalues")
            self.environment = Environment(
                self.environment_name, rv if isinstance(rv, dict) else {}
            )
        elif self.environment_name not in names and self.environment_name != DEFAULT_ENVIRONMENT:
            declared = ", ".join(names) or "none"
            self.problems.append(
                f"{self.show(state.path)}: environment {self.environment_name!r} is not "
                f"declared (environments: {declared})"
            )

    def environment_values(self, path: str, doc: Document, name: str, spec: Any) -> dict[str, Any]:
        at: Path = ("environments", name)
        if spec is None:
            return {}
        data = self.mapping(path, doc, at, spec)
        if data is None:
            return {}
        self.unknown_keys(path, doc, at, data, ENVIRONMENT_KEYS)
        if self.rendered is not None:
            return {}  # rendered: the selected environment's values are renderedvalues
        merged, _ = self.values_list(path, doc, (*at, "values"), data.get("values"))
        return merged

    def repos(self, state: _State) -> dict[str, Repository]:
        path = state.path
        out: dict[str, Repository] = {}
        if "repositories" not in state.data:
            return out
        doc = state.origin["repositories"]
        items = state.data["repositories"]
        if not isinstance(items, list):
            self.problem(path, doc, ("repositories",), f"must be a list, not {json_kind(items)}")
            return out
        for i, raw in enumerate(items):
            at: Path = ("repositories", i)
            data = self.mapping(path, doc, at, raw)
            if data is None:
                continue
            self.unknown_keys(path, doc, at, data, REPOSITORY_KEYS)
            name = self.string(path, doc, (*at, "name"), data.get("name"), required=True)
            url = self.string(path, doc, (*at, "url"), data.get("url"), required=True)
            oci = self.boolean(path, doc, (*at, "oci"), data.get("oci")) or False
            if name is None or url is None:
                continue
            if oci and "://" in url:
                self.problem(
                    path,
                    doc,
                    (*at, "url"),
                    f"an OCI repository's url has no scheme (host/path, not {url!r})",
                )
                continue
            if not oci and not url.startswith(("http://", "https://")):
                self.problem(
                    path,
                    doc,
                    (*at, "url"),
                    f"must be an http:// or https:// URL, not {url!r} (an OCI registry needs "
                    "oci: true)",
                )
                continue
            repo = Repository(name=name, url=url, oci=oci)
            if name in out:
                self.problem(path, doc, (*at, "name"), f"repository {name!r} is declared twice")
                continue
            previous = self.repositories.get(name)
            if previous is not None and previous[0] != repo:
                self.problem(
                    path,
                    doc,
                    (*at, "name"),
                    f"repository {name!r} is declared differently in {self.show(previous[1])}",
                )
                continue
            out[name] = repo
            self.repositories.setdefault(name, (repo, path))
        return out

    def sub_helmfile(self, path: str, doc: Document, at: Path, entry: Any) -> str | None:
        if isinstance(entry, dict):
            self.unknown_keys(path, doc, at, entry, SUB_HELMFILE_KEYS)
            rel = self.string(path, doc, (*at, "path"), entry.get("path"), required=True)
            at = (*at, "path")
        else:
            rel = self.string(path, doc, at, entry, required=True)
        if rel is None:
            return None
        if "://" in rel or rel.startswith("git::"):
            self.problem(path, doc, at, f"{rel!r}: only sub-helmfiles by local path are supported")
            return None
        if _GLOB.search(rel):
            self.problem(path, doc, at, f"{rel!r}: globs are not supported; list each file")
            return None
        return self.resolve(path, rel)

    # ------------------------------------------------------------ releases

    def release(
        self,
        path: str,
        doc: Document,
        at: Path,
        raw: Any,
        repos: Mapping[str, Repository],
        defaults: HelmDefaults,
    ) -> None:
        data = self.mapping(path, doc, at, raw)
        if data is None:
            return
        # helmfile build adds chartPath, and copies helmDefaults.kubeContext in
        self.unknown_keys(
            path,
            doc,
            at,
            data,
            RELEASE_KEYS,
            ignored=lambda k, v: (
                k in RENDERED_RELEASE or (k == "kubeContext" and v == defaults.kube_context)
            ),
        )
        before = len(self.problems)
        name = self.string(path, doc, (*at, "name"), data.get("name"), required=True)
        if name is not None and (len(name) > 53 or not _RELEASE_NAME.match(name)):
            self.problem(
                path,
                doc,
                (*at, "name"),
                f"{name!r} is not a Helm release name (1-53 lowercase letters, digits and -, "
                "starting and ending with a letter or digit)",
            )
        namespace = self.string(path, doc, (*at, "namespace"), data.get("namespace")) or ""
        if namespace and not _DNS_LABEL.match(namespace):
            self.problem(path, doc, (*at, "namespace"), f"{namespace!r} is not a namespace name")
        version = self.string(path, doc, (*at, "version"), data.get("version"))
        installed = self.boolean(path, doc, (*at, "installed"), data.get("installed"))
        chart_ref = self.string(path, doc, (*at, "chart"), data.get("chart"), required=True)
        chart = self.chart(path, doc, (*at, "chart"), chart_ref, repos) if chart_ref else None
        labels = self.labels(path, doc, (*at, "labels"), data.get("labels"), name, namespace, chart)
        merged, entries = self.values_list(path, doc, (*at, "values"), data.get("values"))
        value_files = tuple(e.file for e in entries if e.prefix == () and e.file != path)
        sets = self.sets(path, doc, (*at, "set"), data.get("set"))
        for i, s in sets:
            keys = vals.set_path(s.name)
            merged = vals.apply_set(merged, keys, s.value)
            entries.append(_Entry(doc, (*at, "set", i), path, vals.apply_set({}, keys, s.value)))
        devstack = self.devstack(path, doc, at, merged, entries)
        raw_needs = self.needs_list(path, doc, (*at, "needs"), data.get("needs"))
        if len(self.problems) > before or name is None or chart is None:
            return
        ctx = defaults.kube_context or ""
        release = Release(
            name=name,
            chart=chart,
            namespace=namespace,
            id=ReleaseId(ctx, namespace, name),
            version=version,
            values=merged,
            value_files=value_files,
            sets=tuple(s for _, s in sets),
            labels=labels,
            installed=True if installed is None else installed,
            devstack=devstack,
            helm_defaults=defaults,
            source=path,
            line=doc.line(at),
        )
        self.drafts.append(_Draft(release, path, doc, at, raw_needs))

    def chart(
        self, path: str, doc: Document, at: Path, ref: str, repos: Mapping[str, Repository]
    ) -> Chart | None:
        if ref.startswith("oci://"):
            rest = ref[len("oci://") :]
            if "/" not in rest.strip("/"):
                self.problem(path, doc, at, f"{ref!r} names no chart (oci://host/path/chart)")
                return None
            return Chart(kind="oci", ref=ref, name=rest.rstrip("/").rsplit("/", 1)[-1], url=ref)
        if "://" in ref or ref.startswith("git::"):
            self.problem(
                path,
                doc,
                at,
                f"{ref!r}: a chart is a local path, <repository>/<chart> or oci://… "
                "(see docs/helmfile.md)",
            )
            return None
        parts = ref.split("/")
        explicit_local = ref.startswith(("./", "../", "/"))
        if not explicit_local and len(parts) == 2 and parts[0] in repos:
            repo = repos[parts[0]]
            if repo.oci:
                url = f"oci://{repo.url.rstrip('/')}/{parts[1]}"
                return Chart(kind="oci", ref=ref, name=parts[1], repository=repo.name, url=url)
            return Chart(
                kind="repository", ref=ref, name=parts[1], repository=repo.name, url=repo.url
            )
        local = self.resolve(path, ref)
        if self.files.is_dir(local) or (ref.endswith(".tgz") and self.files.is_file(local)):
            return Chart(kind="local", ref=ref, name=posixpath.basename(local), path=local)
        if not explicit_local and len(parts) == 2:
            declared = ", ".join(sorted(repos)) or "none"
            self.problem(
                path,
                doc,
                at,
                f"{ref!r}: no repository {parts[0]!r} is declared (repositories: {declared}) "
                f"and there is no chart folder {self.show(local)}",
            )
        else:
            self.problem(path, doc, at, f"{ref!r}: there is no chart folder {self.show(local)}")
        return None

    def labels(
        self,
        path: str,
        doc: Document,
        at: Path,
        raw: Any,
        name: str | None,
        namespace: str,
        chart: Chart | None,
    ) -> dict[str, str]:
        if raw is None:
            return {}
        data = self.mapping(path, doc, at, raw)
        out: dict[str, str] = {}
        # helmfile build adds these three; they are its, not the file's
        added = {"name": name, "namespace": namespace, "chart": chart.name if chart else None}
        for key, value in (data or {}).items():
            if self.rendered is not None and key in added and value == added[key]:
                continue
            v = self.string(path, doc, (*at, key), value, required=False)
            if v is not None:
                out[key] = v
        return out

    def values_list(
        self, path: str, doc: Document, at: Path, raw: Any
    ) -> tuple[dict[str, Any], list[_Entry]]:
        merged: dict[str, Any] = {}
        entries: list[_Entry] = []
        if raw is None:
            return merged, entries
        if not isinstance(raw, list):
            self.problem(
                path, doc, at, f"must be a list of values files and maps, not {json_kind(raw)}"
            )
            return merged, entries
        for i, item in enumerate(raw):
            here: Path = (*at, i)
            if isinstance(item, dict):
                entries.append(_Entry(doc, here, path, item))
                merged = vals.merge(merged, item)
            elif isinstance(item, str):
                loaded = self.values_file(path, doc, here, item)
                if loaded is not None:
                    entries.append(loaded)
                    merged = vals.merge(merged, loaded.data)
            else:
                self.problem(
                    path, doc, here, f"must be a values file or a map, not {json_kind(item)}"
                )
        return merged, entries

    def values_file(self, path: str, doc: Document, at: Path, rel: str) -> _Entry | None:
        if "://" in rel or rel.startswith("git::"):
            self.problem(path, doc, at, f"{rel!r}: only local values files are supported")
            return None
        full = self.resolve(path, rel)
        text = self.files.read_text(full)
        if text is None:
            self.problem(path, doc, at, f"values file {self.show(full)} does not exist")
            return None
        if full.endswith(".gotmpl"):
            if self.rendered is None:
                raise NeedsRender(full, "is a values template (named *.gotmpl)")
            self.problem(path, doc, at, f"values file {self.show(full)} was not embedded")
            return None
        try:
            docs = load_documents(text)
        except YamlError as e:
            self.problems.append(f"{self.show(full)}:{e.line}: {e.message}")
            return None
        docs = [d for d in docs if d.data is not None]
        if not docs:
            return _Entry(Document({}, 0), (), full, {})
        for p, line, message in docs[0].problems:
            self.problems.append(f"{self.show(full)}:{line}: {field_path(p)}: {message}")
        if len(docs) > 1:
            self.problems.append(
                f"{self.show(full)}:{docs[1].line(())}: a values file has one document"
            )
            return None
        if not isinstance(docs[0].data, dict):
            self.problems.append(
                f"{self.show(full)}:1: a values file must be a mapping, "
                f"not {json_kind(docs[0].data)}"
            )
            return None
        return _Entry(docs[0], (), full, docs[0].data)

    def sets(self, path: str, doc: Document, at: Path, raw: Any) -> list[tuple[int, SetValue]]:
        out: list[tuple[int, SetValue]] = []
        if raw is None:
            return out
        if not isinstance(raw, list):
            self.problem(path, doc, at, f"must be a list, not {json_kind(raw)}")
            return out
        for i, item in enumerate(raw):
            here: Path = (*at, i)
            data = self.mapping(path, doc, here, item)
            if data is None:
                continue
            self.unknown_keys(path, doc, here, data, SET_KEYS)
            name = self.string(path, doc, (*here, "name"), data.get("name"), required=True)
            given = [k for k in ("value", "values", "file") if k in data]
            if len(given) != 1:
                self.problem(
                    path,
                    doc,
                    here,
                    "needs exactly one of value, values and file"
                    + (f" (has {', '.join(given)})" if given else ""),
                )
                continue
            if name is None:
                continue
            try:
                vals.set_path(name)
            except ValueError as e:
                self.problem(path, doc, (*here, "name"), f"{name!r} {e}")
                continue
            kind = given[0]
            raw_value = data[kind]
            if kind == "value":
                text = self.scalar(path, doc, (*here, "value"), raw_value)
                if text is not None:
                    out.append((i, SetValue(name, vals.typed(text), "value")))
            elif kind == "values":
                if not isinstance(raw_value, list):
                    self.problem(
                        path, doc, (*here, "values"), f"must be a list, not {json_kind(raw_value)}"
                    )
                    continue
                items = [
                    self.scalar(path, doc, (*here, "values", j), v) for j, v in enumerate(raw_value)
                ]
                if all(t is not None for t in items):
                    typed = [vals.typed(cast(str, t)) for t in items]
                    out.append((i, SetValue(name, typed, "values")))
            else:
                rel = self.string(path, doc, (*here, "file"), raw_value, required=True)
                if rel is None:
                    continue
                full = self.resolve(path, rel)
                content = self.files.read_text(full)
                if content is None:
                    self.problem(
                        path, doc, (*here, "file"), f"file {self.show(full)} does not exist"
                    )
                    continue
                out.append((i, SetValue(name, content, "file")))
        return out

    def scalar(self, path: str, doc: Document, at: Path, value: Any) -> str | None:
        """A ``set`` value as Helmfile passes it to Helm: as text."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str):
            return value
        if isinstance(value, float):
            self.problem(path, doc, at, f'quote it ("{value}"): Helm reads a number here as text')
            return None
        self.problem(path, doc, at, f"must be a string, number or boolean, not {json_kind(value)}")
        return None

    def needs_list(self, path: str, doc: Document, at: Path, raw: Any) -> list[tuple[Path, str]]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(path, doc, at, f"must be a list of release names, not {json_kind(raw)}")
            return []
        out = []
        for i, item in enumerate(raw):
            value = self.string(path, doc, (*at, i), item, required=True)
            if value is None:
                continue
            if any(part == "" for part in value.split("/")[-2:]) or value.startswith("/"):
                self.problem(
                    path,
                    doc,
                    (*at, i),
                    f"{value!r} is not [kubecontext/][namespace/]name",
                )
                continue
            out.append(((*at, i), value))
        return out

    def devstack(
        self,
        path: str,
        doc: Document,
        at: Path,
        merged: Mapping[str, Any],
        entries: Sequence[_Entry],
    ) -> dict[str, Any]:
        block = merged.get("devstack")
        if block is None:
            return {}
        if not isinstance(block, dict):
            fallback = (path, doc, (*at, "values"), (*at, "values"))
            f, d, shown, line_of = self.origin(entries, ["devstack"]) or fallback
            self.problem(
                f, d, shown, f"devstack: must be a mapping, not {json_kind(block)}", line_of=line_of
            )
            return {}
        clean = vals.without_nulls(block)
        validator = jsonschema.Draft7Validator(devstack_schema())
        errors = sorted(
            validator.iter_errors(clean),
            key=lambda e: [str(p) for p in e.absolute_path] + [e.validator],
        )
        for error in errors:
            for keys, message in _schema_messages(error):
                fallback = (path, doc, (*at, "values"), (*at, "values"))
                f, d, shown, line_of = self.origin(entries, keys) or fallback
                self.problem(f, d, shown, message, line_of=line_of)
        return clean

    def origin(
        self, entries: Sequence[_Entry], keys: Sequence[str | int]
    ) -> tuple[str, Document, Path, Path] | None:
        """The last values entry that sets ``keys`` (or its nearest parent): its
        file, document, path there, and the path of the key (for its line)."""
        for depth in range(len(keys), 0, -1):
            sub = list(keys[:depth])
            for entry in reversed(entries):
                node: Any = entry.data
                ok = True
                for k in sub:
                    if isinstance(node, dict) and k in node:
                        node = node[k]
                        continue
                    if isinstance(node, list) and isinstance(k, int) and k < len(node):
                        node = node[k]
                        continue
                    ok = False
                    break
                if ok:
                    return entry.file, entry.doc, entry.prefix, (*entry.prefix, *sub)
        return None

    # ------------------------------------------------------------ across files

    def finish(self) -> list[Release]:
        by_name: dict[str, _Draft] = {}
        drafts: list[_Draft] = []
        for d in self.drafts:
            first = by_name.get(d.release.name)
            if first is not None:
                self.problem(
                    d.file,
                    d.doc,
                    (*d.path, "name"),
                    f"release {d.release.name!r} is already declared at "
                    f"{self.show(first.file)}:{first.doc.line((*first.path, 'name'))} "
                    "(devstack names a service by its release: names are unique)",
                )
                continue
            by_name[d.release.name] = d
            drafts.append(d)
        by_id = {d.release.id: d for d in drafts}
        resolved: dict[str, list[ReleaseId]] = {}
        for d in drafts:
            rel = d.release
            ids: list[ReleaseId] = []
            for at, text in d.raw_needs:
                parts = text.split("/")
                name = parts[-1]
                ns = parts[-2] if len(parts) > 1 else rel.namespace
                ctx = "/".join(parts[:-2]) if len(parts) > 2 else rel.id.kube_context
                target = ReleaseId(ctx, ns, name)
                if target in by_id:
                    if not by_id[target].release.installed and rel.installed:
                        self.problem(
                            d.file,
                            d.doc,
                            at,
                            f"{text!r} is installed: false; mark it installed or remove it "
                            f"from {rel.name!r}'s needs",
                        )
                        continue
                    if target not in ids:
                        ids.append(target)
                    continue
                hint = ""
                if name in by_name:
                    other = by_name[name].release.id
                    hint = (
                        f"; release {name!r} is in namespace {other.namespace or '(none)'!r}"
                        + (f", kube context {other.kube_context!r}" if other.kube_context else "")
                        + f": write {str(other)!r}"
                    )
                else:
                    hint = f"; releases: {', '.join(sorted(by_name)) or 'none'}"
                self.problem(
                    d.file,
                    d.doc,
                    at,
                    f"{text!r} names no release (as {str(target)!r}){hint}",
                )
            resolved[rel.name] = ids
        out: list[Release] = []
        for d in drafts:
            out.append(_replace_needs(d.release, tuple(resolved[d.release.name])))
        installed = {r.name: [n.name for n in r.needs] for r in out if r.installed}
        try:
            levels(installed)
        except CycleError as e:
            d = by_name[e.cycle[0]]
            self.problem(d.file, d.doc, (*d.path, "needs"), str(e))
        return out


def _replace_needs(release: Release, needs: tuple[ReleaseId, ...]) -> Release:
    from dataclasses import replace

    return replace(release, needs=needs)


def _schema_messages(error: Any) -> list[tuple[list[str | int], str]]:
    """The problems of one schema error of a ``devstack:`` block: the keys
    each is about (to find its line), and its message naming the field."""
    keys: list[str | int] = ["devstack", *error.absolute_path]
    path = field_path(tuple(keys))
    validator = error.validator
    sub = error.schema
    instance = error.instance
    if validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(sub.get("properties", {}))
        return [
            (
                [*keys, k],
                f"{field_path((*keys, k))}: unknown key of the library chart "
                f"(expected one of: {', '.join(allowed)})",
            )
            for k in instance
            if k not in allowed
        ]
    if validator == "required":
        missing = [r for r in error.validator_value if r not in instance]
        return [(keys, f"{path}.{m}: is required") for m in missing]
    if validator == "type":
        want = sub.get("type")
        want_text = " or ".join(want) if isinstance(want, list) else str(want)
        return [(keys, f"{path}: must be {want_text}, not {json_kind(instance)}")]
    if validator == "enum":
        return [(keys, f"{path}: must be one of: {', '.join(str(v) for v in sub['enum'])}")]
    if validator in ("pattern", "maxLength", "minLength") and "description" in sub:
        return [(keys, f"{path}: {instance!r} does not fit: {sub['description']}")]
    return [(keys, f"{path}: {error.message}")]
