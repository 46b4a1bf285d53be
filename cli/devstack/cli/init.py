"""``devstack init``: a starter ``helmfile.yaml`` and ``.devstackignore`` for
the repository you are in.

The pure part (:func:`plan_init`) turns the application charts found in the
tree into Helmfile releases, one per chart, with the ``devstack:`` values a
personal copy needs to sync and reload, and a commented ``needs`` to fill
in. The shell finds the charts and writes the files; it never overwrites
one (``--force`` does).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from devstack.core.errors import ConfigError
from devstack.core.ignore import DEFAULT_PATTERNS, IGNORE_FILE

HELMFILE = "helmfile.yaml"
#: Folders never searched for charts.
SKIP = frozenset({".git", ".hg", ".svn", "node_modules", ".venv", "venv", ".devstack", "charts"})


@dataclass(frozen=True, order=True)
class FoundChart:
    #: The chart's folder, relative to the repository root (posix).
    path: str
    name: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root", nargs="?", default=".", help="the repository's root (default: here)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    parser.epilog = (
        "examples:\n"
        "  devstack init            # helmfile.yaml and .devstackignore here\n"
        "  devstack init ../shop    # for another repository\n"
        "then edit helmfile.yaml: each release's needs, and devstack.local.command"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _release(chart: FoundChart) -> dict[str, object]:
    return {
        "name": chart.name,
        "chart": "./" + chart.path if chart.path != "." else ".",
        "values": [
            {
                "devstack": {
                    "service": chart.name,
                    "sidecar": {"reload": "supervise"},
                }
            }
        ],
    }


def plan_init(charts: Iterable[FoundChart], existing: Mapping[str, bool]) -> dict[str, str]:
    """The files to write, by name: ``helmfile.yaml`` (a release per chart)
    and ``.devstackignore``. ``existing``: which of them exist already and
    may be overwritten (True) or not (False: a :class:`ConfigError`)."""
    for name in (HELMFILE, IGNORE_FILE):
        if existing.get(name) is False:
            raise ConfigError(f"{name} exists already: edit it, or run `devstack init --force`")
    found = sorted(set(charts))
    names = [c.name for c in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two charts are named {twice[0]}: rename one (a release name is unique)")
    header = (
        "# devstack's services: Helmfile's own format (docs/helmfile.md).\n"
        "# Each release is a service; `devstack up SERVICE` deploys your copy of it.\n"
        "# Add `needs: [other]` to a release that calls another, so they deploy in order.\n"
    )
    if found:
        body = yaml.safe_dump({"releases": [_release(c) for c in found]}, sort_keys=False)
    else:
        body = (
            "# No Helm chart was found in this repository. Add one release per service:\n"
            "releases: []\n"
            "#  - name: shop\n"
            "#    chart: ./charts/shop\n"
            "#    needs: [db]\n"
        )
    ignore = (
        "# Paths `devstack connect` never syncs (gitignore syntax), on top of .gitignore.\n"
        "# Always ignored already: " + " ".join(DEFAULT_PATTERNS[:8]) + " ...\n"
        "build/\ndist/\n*.log\n"
    )
    return {HELMFILE: header + body, IGNORE_FILE: ignore}


def find_charts(root: Path) -> list[FoundChart]:
    """Application charts (``Chart.yaml`` whose ``type`` is not ``library``)
    below ``root``, skipping VCS folders, dependencies and subcharts."""
    out: list[FoundChart] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP)
        if "Chart.yaml" not in files:
            continue
        try:
            meta = yaml.safe_load((Path(folder) / "Chart.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(meta, dict) or meta.get("type") == "library" or not meta.get("name"):
            continue
        rel = Path(folder).relative_to(root).as_posix()
        out.append(FoundChart(path=rel, name=str(meta["name"])))
    return out


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise ConfigError(f"{args.root}: no such folder")
    existing = {n: bool(args.force) for n in (HELMFILE, IGNORE_FILE) if (root / n).exists()}
    files = plan_init(find_charts(root), existing)
    for name, text in files.items():
        (root / name).write_text(text)
        print(f"wrote {root / name}", file=sys.stderr)
    print("next: edit helmfile.yaml (needs, devstack.local.command), then `devstack up`")
    return 0
