"""The thin I/O shell of the Helmfile reader: real files, and rendering a
templated state with a ``helmfile`` binary.

:func:`load` is what commands call. It parses plain YAML itself; on a template
(:class:`~devstack.core.helmfile.model.NeedsRender`) it runs
``helmfile --file <root> --environment <env> build --embed-values`` with
``HELMFILE_RENDER_YAML=true`` (so a ``.yaml`` file containing ``{{`` is
rendered too, as devstack's rule says) and parses what it prints. Without a
helmfile binary it stops with one line naming the file and the fix.

``helmfile build`` runs ``helm version`` (helm must be on the PATH too) and
pulls ``oci://`` charts to read them: that is helmfile's behaviour, not ours.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import structlog

from devstack.core.helmfile.model import Helmfile, NeedsRender, TemplateError
from devstack.core.helmfile.parse import DEFAULT_ENVIRONMENT, parse, parse_rendered

log = structlog.get_logger("devstack.helmfile")

INSTALL_HINT = (
    "install helmfile v1 and helm on the PATH (https://helmfile.readthedocs.io/en/stable/"
    "#installation), or write it as plain YAML"
)
#: Seconds a render may take (it may pull oci:// charts).
RENDER_TIMEOUT = 300.0


class OsFiles:
    """The real file system, for the parser."""

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def is_dir(self, path: str) -> bool:
        return Path(path).is_dir()

    def is_file(self, path: str) -> bool:
        return Path(path).is_file()


def find_root(start: str | os.PathLike[str]) -> Path:
    """The Helmfile at ``start``: the file itself, or in the folder
    ``helmfile.yaml``, else ``helmfile.yaml.gotmpl`` (Helmfile's own preference)."""
    p = Path(start).absolute()
    if p.is_dir():
        for name in ("helmfile.yaml", "helmfile.yaml.gotmpl"):
            if (p / name).is_file():
                return p / name
        raise TemplateError(
            f"{p}: no helmfile.yaml or helmfile.yaml.gotmpl here (devstack init writes one)"
        )
    return p


def load(
    path: str | os.PathLike[str],
    *,
    environment: str = DEFAULT_ENVIRONMENT,
    helmfile_binary: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Helmfile:
    """The Helmfile at ``path`` (a file or a folder), parsed, rendered first if
    it is a template. ``helmfile_binary``: default, ``helmfile`` on the PATH."""
    root = posixpath.normpath(str(find_root(path)))
    files = OsFiles()
    try:
        return parse(root, files, environment=environment)
    except NeedsRender as need:
        environ = dict(os.environ if env is None else env)
        binary = helmfile_binary or shutil.which("helmfile", path=environ.get("PATH"))
        shown = os.path.relpath(need.path)
        if binary is None:
            raise TemplateError(
                f"{shown} {need.why}, so it is a Go template and devstack needs helmfile to "
                f"render it: {INSTALL_HINT}"
            ) from None
        output = render(root, binary, environment=environment, env=environ)
        return parse_rendered(root, output, files, environment=environment)


def render(root: str, binary: str, *, environment: str, env: Mapping[str, str]) -> str:
    """``helmfile build --embed-values`` of ``root``: the rendered state."""
    cmd = [
        binary, "--file", root, "--environment", environment, "--no-color", "--quiet",
        "build", "--embed-values",
    ]  # fmt: skip
    log.info("helmfile.render", file=root, environment=environment, helmfile=binary)
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT,
            env={**env, "HELMFILE_RENDER_YAML": "true"},
            cwd=posixpath.dirname(root),
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise TemplateError(
            f"helmfile build of {root} took longer than {RENDER_TIMEOUT:.0f}s"
        ) from e
    except OSError as e:
        raise TemplateError(f"cannot run {binary}: {e.strerror or e}") from e
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        detail = " | ".join(lines[-3:]) if lines else f"exit code {done.returncode}"
        raise TemplateError(f"helmfile could not render {root}: {detail}")
    return done.stdout
