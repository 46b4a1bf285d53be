"""The Helmfile reader: services, their charts, values and ``needs``, read from
Helmfile's own ``helmfile.yaml`` (docs/helmfile.md).

Its own package under ``devstack.core`` because every side that plans or runs
services stands on it: the CLI's commands (``devstack up``, ``status``,
``doctor``, …) and the local stack both read the same Helmfile, and the
import contracts (.importlinter) let everything import ``devstack.core`` while
the core imports nothing above it (no Kubernetes client, no boto3). One
concept, one home: nothing else parses a Helmfile.

- :mod:`.parse`: the pure parser (files come through a ``Files`` the shell
  hands it), returning a frozen :class:`Helmfile` or raising
  :class:`HelmfileError` with every problem as ``file:line: field: message``;
- :mod:`.order`: deploy levels from ``needs``;
- :mod:`.values`: Helm's merging and ``--set`` semantics;
- :mod:`.yamlmarks`: YAML that keeps line numbers;
- :mod:`.render`: the thin shell (real files, rendering templates with helmfile).
"""

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
    TemplateError,
)
from devstack.core.helmfile.parse import Files, is_template, parse, parse_rendered
from devstack.core.helmfile.render import OsFiles, load

__all__ = [
    "Chart",
    "Environment",
    "Files",
    "HelmDefaults",
    "Helmfile",
    "HelmfileError",
    "NeedsRender",
    "OsFiles",
    "Release",
    "ReleaseId",
    "Repository",
    "SetValue",
    "TemplateError",
    "is_template",
    "load",
    "parse",
    "parse_rendered",
]
