"""Entry point: parses the subcommand and turns devstack errors into one
clear line and an exit code. Output into a closed pipe (``devstack … |
head``) ends quietly with 141, as a tool killed by SIGPIPE does."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, Protocol, cast

from devstack.core.errors import DevstackError

#: subcommand -> (module, one-line help). Each module defines
#: ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "devstack.cli.up",
        "run your copies of services: in the cluster, or with --local on this machine",
    ),
    "connect": (
        "devstack.cli.workflow_connect",
        "sync a source tree to your copy of a service and keep it in sync",
    ),
    "sidecar": ("devstack.sidecar.command", "serve a workspace to `devstack connect`"),
    "conflicts": (
        "devstack.cli.conflicts",
        "list the conflicts between your tree and your copy: what differs, how to settle it",
    ),
    "resolve": (
        "devstack.cli.resolve",
        "settle conflicts: keep the laptop's version, or copy the pod's back",
    ),
    "exec": ("devstack.cli.exec", "run a command in the dev pod's workspace"),
    "status": ("devstack.cli.workflow_status", "show your copies: ready, sync, reload, URL"),
    "urls": ("devstack.cli.urls", "list the preview URLs of your copies"),
    "down": ("devstack.cli.down", "remove your copies (and nothing else)"),
    "test": ("devstack.cli.testing", "run a service's tests in your copy, through its sidecar"),
    "logs": ("devstack.cli.logs", "show (or follow) a service's output"),
    "curl": ("devstack.cli.curl", "send a request tagged with your routing key"),
    "build": ("devstack.cli.build", "build and push a service's image; `up` deploys that tag"),
    "doctor": ("devstack.cli.doctor", "check the setup, one line each, with the fix"),
    "usage": (
        "devstack.cli.usage",
        "show each owner's or team's usage and cost, with a chart of the biggest spenders",
    ),
    "agent": ("devstack.agent.command", "run the cluster agent that reconciles Traefik routes"),
    "provision": ("devstack.provision.command", "create declared AWS resources"),
    "init": ("devstack.cli.init", "write a starter helmfile.yaml and .devstackignore"),
    "completion": ("devstack.cli.completion", "print the shell completion script"),
}

#: The exit code of a process killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141
#: Set by a command whose work is all done and saved (``connect --once``):
#: the console script then ends without the interpreter's teardown, which
#: frees every object and module one by one (~0.15 s after a large sync).
skip_teardown = False


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> CommandModule:
    return cast(CommandModule, importlib.import_module(COMMANDS[name][0]))


def version() -> str:
    """``devstack X.Y.Z``, the installed distribution's version."""
    # Imported here: importlib.metadata costs ~30 ms, and only --version asks.
    import importlib.metadata

    try:
        return f"devstack {importlib.metadata.version('devstack')}"
    except importlib.metadata.PackageNotFoundError:
        return "devstack (not installed: version unknown)"


class _VersionAction(argparse._VersionAction):
    """argparse's ``--version``, with the version looked up (:func:`version`)
    only when the flag is given, not each time the parser is built."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        self.version = version()
        super().__call__(parser, namespace, values, option_string)


def build_parser(argv: Sequence[str], *, every: bool = False) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (all of
    them with ``every``, for the completion script)."""
    parser = argparse.ArgumentParser(
        prog="devstack",
        description="Work on a service in a shared Kubernetes cluster as if it ran on your laptop.",
        epilog="Run `devstack COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="devstack_command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if every or name == wanted:
            _load(name).add_arguments(p)
    return parser


def full_parser() -> argparse.ArgumentParser:
    return build_parser((), every=True)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    try:
        return _load(args.devstack_command).run(args)
    except KeyboardInterrupt:
        return 130
    except DevstackError as e:
        print(f"devstack {args.devstack_command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


def main_entry() -> None:
    """The console script."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): no traceback, nothing more to
        # write, and stdout must not be flushed again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    if skip_teardown:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (BrokenPipeError, ValueError):
                code = code or EXIT_BROKEN_PIPE
        os._exit(code)
    sys.exit(code)
