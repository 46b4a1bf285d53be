"""A service's image: its build settings and the record of what ``devstack
build`` pushed, which ``devstack up`` deploys (one home for both, so the two
commands read them the same way).

- :func:`build_block` is the release's ``devstack.build`` with the library
  chart's defaults (``helm/devstack-lib/templates/_defaults.tpl``) under it:
  the one place the defaults are applied in Python; :func:`build_settings`
  resolves it (the context, the Dockerfile, the command's words);
- :func:`image_values` is where ``up`` puts a recorded image in a copy's
  values (``devstack.build.values.repository``/``.tag``, Helm ``--set``
  paths), and :func:`with_sets` sets them;
- :func:`read_records` / :func:`write_record` are the record,
  ``<project>/.devstack/builds.json``: per service, the image, the tag, the
  digest of the build context and when it was pushed. It is written
  atomically (a temporary file renamed over it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.core.errors import ConfigError
from devstack.core.helmfile import Release
from devstack.core.helmfile.values import Key, apply_set, merge, set_path

#: The builders ``devstack build`` knows, in the order it looks for them on the PATH.
BUILDERS: tuple[str, ...] = ("docker", "buildah", "nerdctl", "podman")
#: The record, in the project's state folder (``.devstack/``).
BUILDS_FILE = "builds.json"
RECORD_VERSION = 1
DEFAULT_DOCKERFILE = "Dockerfile"

#: ``devstack.build`` of ``helm/devstack-lib/templates/_defaults.tpl`` (a test
#: checks they agree). ``""`` means "worked out": the context is
#: ``local.dir`` (else the Helmfile's folder), the Dockerfile ``Dockerfile``,
#: the builder the first of :data:`BUILDERS` on the PATH.
BUILD_DEFAULTS: Mapping[str, Any] = {
    "image": "",
    "context": "",
    "dockerfile": "",
    "builder": "",
    "command": [],
    "args": {},
    "values": {"repository": "image.repository", "tag": "image.tag"},
}


class BuildConfigError(ConfigError):
    """``devstack.build`` of a release that cannot be used as it is."""

    reason = "bad-build"


def build_block(release: Release) -> dict[str, Any]:
    """The release's ``devstack.build`` merged over the library chart's defaults."""
    given = release.devstack.get("build") or {}
    return merge(BUILD_DEFAULTS, given)


@dataclass(frozen=True)
class BuildSettings:
    """``devstack.build`` of one service, resolved."""

    service: str
    #: Where the release is declared, for errors (``helmfile.yaml:12: release web``).
    where: str
    #: The repository, without a tag (``""``: not set).
    image: str
    #: Absolute.
    context: Path
    #: Absolute: the Dockerfile relative to the context.
    dockerfile: Path
    #: ``""``: the first builder found on the PATH.
    builder: str
    #: The configured command's words (``()``: none; use a builder).
    command: tuple[str, ...]
    #: Build arguments, sorted by name, values as text.
    args: tuple[tuple[str, str], ...]
    #: Where ``up`` puts the image in the release's values (Helm ``--set`` paths).
    repository_path: str
    tag_path: str


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _where(release: Release) -> str:
    if release.source:
        return f"{release.source}:{release.line}: release {release.name}"
    return f"release {release.name}"


def _paths(release: Release, block: Mapping[str, Any]) -> tuple[str, str]:
    out = []
    for key in ("repository", "tag"):
        name = str(block["values"][key])
        try:
            set_path(name)
        except ValueError as e:
            raise BuildConfigError(
                f"{_where(release)}: devstack.build.values.{key} {name!r} is not a Helm "
                f"--set path: it {e} (write it as image.tag, or a\\.b for a dot in a key)"
            ) from e
        out.append(name)
    return out[0], out[1]


def build_settings(release: Release, root: Path) -> BuildSettings:
    """``devstack.build`` of ``release`` with the defaults applied; ``root``
    is the Helmfile's folder, which the context is relative to."""
    block = build_block(release)
    local = release.devstack.get("local") or {}
    context = (root / str(block["context"] or local.get("dir") or ".")).resolve()
    dockerfile = (context / str(block["dockerfile"] or DEFAULT_DOCKERFILE)).resolve()
    raw = block["command"]
    try:
        command = tuple(shlex.split(raw) if isinstance(raw, str) else (str(w) for w in raw))
    except ValueError as e:
        raise BuildConfigError(f"{_where(release)}: devstack.build.command: {e}") from e
    repository_path, tag_path = _paths(release, block)
    return BuildSettings(
        service=release.name,
        where=_where(release),
        image=str(block["image"]),
        context=context,
        dockerfile=dockerfile,
        builder=str(block["builder"]),
        command=command,
        args=tuple(sorted((str(k), _text(v)) for k, v in block["args"].items())),
        repository_path=repository_path,
        tag_path=tag_path,
    )


# --- the record -----------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRecord:
    """One service's last pushed image."""

    service: str
    #: The repository, without a tag.
    image: str
    tag: str
    #: ``sha256:<hex>`` of the build context (see ``devstack.cli.build``).
    digest: str
    #: When it was pushed: ISO 8601, UTC.
    built_at: str
    #: ``docker``, ``buildah``, ``nerdctl``, ``podman`` or ``command``.
    builder: str = ""

    @property
    def ref(self) -> str:
        return f"{self.image}:{self.tag}"

    def as_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "tag": self.tag,
            "digest": self.digest,
            "builtAt": self.built_at,
            "builder": self.builder,
        }


def records_path(state_dir: Path) -> Path:
    return state_dir / BUILDS_FILE


def parse_records(text: str, *, where: str) -> dict[str, BuildRecord]:
    """The records in ``text`` (the file's content); ``where`` names it in errors."""
    fix = f"delete {where} and run `devstack build SERVICE` again"
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{where}: not valid JSON ({e}); {fix}") from e
    if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION:
        raise ConfigError(
            f"{where}: not a devstack build record of version {RECORD_VERSION}; {fix}"
        )
    services = doc.get("services")
    if not isinstance(services, dict):
        raise ConfigError(f"{where}: no services mapping; {fix}")
    out: dict[str, BuildRecord] = {}
    for name, entry in services.items():
        fields = ("image", "tag", "digest", "builtAt")
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in fields):
            raise ConfigError(f"{where}: services.{name}: needs {', '.join(fields)}; {fix}")
        out[str(name)] = BuildRecord(
            service=str(name),
            image=entry["image"],
            tag=entry["tag"],
            digest=entry["digest"],
            built_at=entry["builtAt"],
            builder=str(entry.get("builder") or ""),
        )
    return out


def read_records(state_dir: Path) -> dict[str, BuildRecord]:
    """Every service's record (``{}`` when nothing was built yet)."""
    path = records_path(state_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from e
    return parse_records(text, where=str(path))


def format_records(records: Mapping[str, BuildRecord]) -> str:
    doc = {
        "version": RECORD_VERSION,
        "services": {name: records[name].as_json() for name in sorted(records)},
    }
    return json.dumps(doc, indent=2) + "\n"


def write_record(state_dir: Path, record: BuildRecord) -> Path:
    """Add (or replace) ``record`` in the file, atomically: a reader sees the
    old file or the new one, never a torn one."""
    path = records_path(state_dir)
    records = read_records(state_dir)
    records[record.service] = record
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(format_records(records))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


# --- what `up` sets ---------------------------------------------------------------------


def image_values(release: Release, record: BuildRecord) -> tuple[tuple[str, str], ...]:
    """The ``(--set path, value)`` pairs that deploy ``record`` for ``release``:
    the repository at ``devstack.build.values.repository``, the tag at
    ``devstack.build.values.tag``."""
    repository_path, tag_path = _paths(release, build_block(release))
    return ((repository_path, record.image), (tag_path, record.tag))


def with_sets(values: Mapping[str, Any], sets: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """``values`` with each ``(path, value)`` set, as Helm's ``--set`` sets it
    (dots and ``[N]`` into nested maps and lists)."""
    out = dict(values)
    for name, value in sets:
        keys: list[Key] = set_path(name)
        out = apply_set(out, keys, value)
    return out
