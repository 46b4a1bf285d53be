"""``devstack urls``: the preview URLs of your copies (and the baselines'
hosts), as the cluster's agent routes them. Reads only which releases exist:
no sidecar is asked."""

from __future__ import annotations

import argparse

from devstack.cli.cluster_up import dump, table
from devstack.cli.project import (
    add_mode_arguments,
    add_output_argument,
    add_project_arguments,
    is_local,
    load_project,
)
from devstack.cli.workflow_status import (
    add_settings_arguments,
    preview_url,
    settings_of,
    targets_of,
)

EXAMPLES = """examples:
  devstack urls                 SERVICE  OWNER  URL, one line each
  devstack urls -o json         for scripts
  devstack urls --preview-domain preview.dev.example.com
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "List the preview URLs of your copies (each reaches your copy with no header to set) "
        "and the baselines' URLs."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_settings_arguments(parser)
    add_mode_arguments(parser)
    add_project_arguments(parser)
    add_output_argument(parser)


def run(args: argparse.Namespace) -> int:
    project = load_project(args)
    if is_local(args, project):
        from devstack.cli import localstack

        entries = [
            {"service": r.service, "owner": r.owner, "release": r.service, "url": r.preview_url}
            for r in localstack.status_rows(project)
        ]
        return _print(args, project.owner, entries)
    settings = settings_of(args)
    targets = targets_of(project)
    entries = [
        {
            "service": t.service,
            "owner": t.owner,
            "release": t.release,
            "url": preview_url(t, settings),
        }
        for t in targets
    ]
    return _print(args, project.owner, entries)


def _print(args: argparse.Namespace, owner: str, entries: list[dict[str, str]]) -> int:
    if args.output != "table":
        print(dump({"owner": owner, "urls": entries}, args.output))
    elif entries:
        rows = [["SERVICE", "OWNER", "URL"]]
        rows += [[e["service"], e["owner"] or "(baseline)", e["url"]] for e in entries]
        print(table(rows))
    else:
        print(f"nothing deployed: run `devstack up` (owner {owner})")
    return 0
