"""The resolved project context every workflow command starts from: the
Helmfile (and the folder it is in), the owner, the kube target and where
local state lives. One home, so 15 commands resolve these the same way.

- :func:`add_project_arguments` adds the shared flags: ``-f/--file`` and
  ``-e/--environment`` (Helmfile's own), ``--owner``, and kubectl's
  ``--kubeconfig``, ``--context``, ``-n/--namespace``;
- :func:`add_output_argument` adds ``-o/--output`` (``table|json|yaml``
  where a command prints data);
- :func:`add_mode_arguments` and :func:`is_local`: ``--local``/``--cluster``
  and the rule every command uses to choose (the local stack if one runs);
- :func:`resolve_kube` is pure: kubectl's order for the kubeconfig files,
  the context and the namespace;
- :func:`load_project` is the thin shell that reads the files.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.core.errors import ConfigError
from devstack.core.owner import owner_from_environment, validate_owner

if TYPE_CHECKING:
    # The Helmfile reader (and its jsonschema, ~100 ms) is imported only when
    # a command reads the Helmfile (load_project), so that the flags and
    # `--help` of every command, and `connect PATH --to ...`, do not pay for it.
    from devstack.core.helmfile import Helmfile

#: Where devstack keeps a project's local state, below the Helmfile's folder.
STATE_DIR = ".devstack"
OUTPUTS = ("table", "json", "yaml")


def add_project_arguments(
    parser: argparse.ArgumentParser, *, kube: bool = True, file_short: bool = True
) -> None:
    """``file_short=False``: no ``-f`` for ``--file`` (``logs -f`` follows, as kubectl's)."""
    g = parser.add_argument_group("project")
    g.add_argument(
        *(("-f", "--file") if file_short else ("--file",)),
        default=None,
        metavar="HELMFILE",
        help="the Helmfile, or its folder (default: helmfile.yaml here or in a parent folder)",
    )
    g.add_argument(
        "-e",
        "--environment",
        default=None,
        help="the Helmfile environment (env HELMFILE_ENVIRONMENT; default: default)",
    )
    g.add_argument(
        "--owner",
        default=None,
        help="your routing key (default: DEVSTACK_OWNER, git's user.email, $USER)",
    )
    if kube:
        add_kube_arguments(parser)


def add_kube_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster (as kubectl)")
    g.add_argument("--kubeconfig", default=None, help="kubeconfig file (else $KUBECONFIG)")
    g.add_argument("--context", default=None, help="kubeconfig context (else its current one)")
    g.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace (else the context's, else default)",
    )


def add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("where (default: the local stack if one runs, else the cluster)")
    m = g.add_mutually_exclusive_group()
    m.add_argument(
        "--local", action="store_true", help="the local stack `devstack up --local` started"
    )
    m.add_argument("--cluster", action="store_true", help="the cluster, even if a local stack runs")


def is_local(args: argparse.Namespace, project: Project) -> bool:
    """``--local``; else, without ``--cluster``, whether a local stack runs
    (its state file, which `devstack up --local` writes, exists)."""
    if getattr(args, "local", False):
        return True
    if getattr(args, "cluster", False):
        return False
    from devstack.cli import localstack

    return localstack.read_state(project) is not None


def add_output_argument(
    parser: argparse.ArgumentParser, *, choices: Sequence[str] = OUTPUTS
) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=list(choices),
        default=choices[0],
        help=f"{' | '.join(choices)} (default {choices[0]})",
    )


# --- the kube target: kubectl's order (pure) --------------------------------------


@dataclass(frozen=True)
class KubeTarget:
    """Which cluster, as kubectl resolves it."""

    #: The kubeconfig files, merged first-wins (empty: none found).
    files: tuple[str, ...]
    #: The context (None: no kubeconfig, or it names none).
    context: str | None
    namespace: str
    #: What ``--kubeconfig`` said (None: resolved from the environment).
    kubeconfig: str | None = None


def resolve_kube(
    *,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    environ: Mapping[str, str],
    home: str,
    read: Callable[[str], str | None],
) -> KubeTarget:
    """kubectl's order: ``--kubeconfig``, else every file in ``$KUBECONFIG``
    (merged, the first file's settings winning), else ``~/.kube/config``;
    ``--context``, else the first ``current-context`` set; ``-n``, else the
    context's namespace, else ``default``. ``read`` returns a file's text, or
    None if it does not exist."""
    if kubeconfig:
        if read(kubeconfig) is None:
            raise ConfigError(f"--kubeconfig {kubeconfig}: no such file")
        files: tuple[str, ...] = (kubeconfig,)
    elif environ.get("KUBECONFIG"):
        files = tuple(p for p in environ["KUBECONFIG"].split(os.pathsep) if p)
    else:
        files = (os.path.join(home, ".kube", "config"),)
    import yaml

    docs: list[dict[str, Any]] = []
    for path in files:
        text = read(path)
        if text is None:
            continue
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else "not YAML"
            raise ConfigError(f"kubeconfig {path}: not valid YAML ({first})") from e
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {path}: expected a mapping at the top")
        docs.append(doc)
    chosen = context or next(
        (str(d["current-context"]) for d in docs if d.get("current-context")), None
    )
    contexts: dict[str, Mapping[str, Any]] = {}
    for d in docs:
        for entry in d.get("contexts") or ():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                contexts.setdefault(entry["name"], entry.get("context") or {})
    if context and context not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise ConfigError(f"--context {context}: no such context in the kubeconfig (has: {known})")
    ns = namespace or (contexts.get(chosen, {}).get("namespace") if chosen else None) or "default"
    return KubeTarget(files=files, context=chosen, namespace=str(ns), kubeconfig=kubeconfig)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from e


# --- the project -----------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    #: The folder the Helmfile is in.
    root: Path
    helmfile: Helmfile
    owner: str
    kube: KubeTarget
    environment: str

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR


def find_helmfile(start: Path) -> Path:
    """``start`` itself if it is a file; else the nearest folder from
    ``start`` upwards holding ``helmfile.yaml`` or ``helmfile.yaml.gotmpl``."""
    if start.is_file():
        return start.absolute()
    here = start.absolute()
    for folder in (here, *here.parents):
        for name in ("helmfile.yaml", "helmfile.yaml.gotmpl"):
            if (folder / name).is_file():
                return folder / name
    raise ConfigError(
        f"no helmfile.yaml in {here} or above it: run `devstack init`, or pass -f HELMFILE"
    )


def load_project(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> Project:
    """Resolve the shared flags of ``args`` (see :func:`add_project_arguments`)."""
    env = dict(os.environ if environ is None else environ)
    given = getattr(args, "file", None)
    start = Path(given) if given else Path.cwd()
    if given and not start.exists():
        raise ConfigError(f"-f {given}: no such file or folder")
    from devstack.core.helmfile import load
    from devstack.core.helmfile.parse import DEFAULT_ENVIRONMENT

    path = find_helmfile(start)
    environment = (
        getattr(args, "environment", None) or env.get("HELMFILE_ENVIRONMENT") or DEFAULT_ENVIRONMENT
    )
    helmfile = load(path, environment=environment, env=env)
    raw_owner = getattr(args, "owner", None)
    owner = (
        validate_owner(raw_owner, source="--owner") if raw_owner else owner_from_environment(env)
    )
    kube = resolve_kube(
        kubeconfig=getattr(args, "kubeconfig", None),
        context=getattr(args, "context", None),
        namespace=getattr(args, "namespace", None),
        environ=env,
        home=env.get("HOME") or str(Path.home()),
        read=_read,
    )
    return Project(
        root=path.parent,
        helmfile=helmfile,
        owner=str(owner),
        kube=kube,
        environment=environment,
    )


# --- what `status` shows, in both modes ---------------------------------------------


@dataclass(frozen=True)
class StatusRow:
    """One line of ``devstack status``: a personal copy (or a baseline, with
    ``owner`` empty), in a cluster or on the local stack."""

    service: str
    owner: str
    #: True/False; None when it cannot be told (not deployed, no answer).
    ready: bool | None
    #: The sync state (``connected``, ``idle``, ``no sidecar``, ...).
    sync: str
    #: The last reload's outcome, one line (``""``: none yet).
    last_reload: str
    preview_url: str
    #: A copy the cluster's agent put to sleep: since when (RFC 3339);
    #: ``"unknown"`` when its sleep record cannot be read. None: awake.
    asleep_since: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "owner": self.owner,
            "ready": self.ready,
            "sync": self.sync,
            "last_reload": self.last_reload,
            "preview_url": self.preview_url,
            "asleep_since": self.asleep_since,
        }
