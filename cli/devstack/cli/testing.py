"""``devstack test SERVICE [-- CMD ...]``: run the service's tests in your copy's
workspace (the files ``devstack connect`` synced there), through its sidecar's
``Exec`` call, streaming the output back as it comes and exiting with the
command's exit code.

- :func:`split_command` and :func:`plan` are pure: the options and the command
  of a command line, and what runs (argv, folder, environment, timeout) from
  the release's ``devstack.test`` values and the flags;
- :func:`run` is the shell: it finds your copy's sidecar as ``connect`` does
  (:func:`devstack.cli.workflow_connect.copy_sidecar`: the local stack's
  state file, or the cluster's sync route and token Secret through Traefik)
  and streams the call (:func:`devstack.cli.exec.stream_exec`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import posixpath
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devstack.cli.exec import stream_exec
from devstack.cli.project import add_mode_arguments, add_project_arguments, is_local, load_project
from devstack.cli.workflow_connect import add_sidecar_arguments, copy_sidecar, declared_release
from devstack.core.errors import ConfigError, UnsafePathError
from devstack.core.helmfile import Release
from devstack.core.logging import configure, get_logger
from devstack.core.paths import check_relpath
from devstack.sync.v1 import sync_pb2 as pb

log = get_logger("cli.test")

#: ``ExecRequest.timeout_seconds`` is a uint32.
MAX_TIMEOUT = 2**32 - 1

EXAMPLES = """examples:
  devstack test web                     run web's tests (its devstack.test.command) in your copy
  devstack test web -- pytest -x tests/unit
                                        run this command instead, in the same place
  devstack test web --timeout 600       stop it after 10 minutes (exit 124)
  devstack test web --cwd lib -- make check
                                        in the workspace's lib/ folder
  devstack test web --to 127.0.0.1:8080 reach the cluster through this Traefik entry point
  devstack test web --local             your copy on the local stack (`devstack up --local`)

The tests run on the files your copy has: sync them with `devstack connect web`
first. Output streams back as it comes; the exit code is the command's (128+N
when signal N killed it, 124 at the timeout), so `devstack test web && git push`
works. Ctrl-C stops the command in the copy (exit 130).

Declare the command once, in the release's values (docs/helmfile.md):
  devstack:
    test:
      command: python -m pytest -q      # or an argv list; no shell runs
      dir: ""                           # relative to the workspace
      env: {APP_ENV: test}
      timeoutSeconds: 900
`-- CMD` replaces only the command: dir, env and the timeout still apply.

With a local stack running, SERVICE is your copy there (a first word python or
python3 is devstack's own Python, as in devstack.local.command); --cluster asks
the cluster anyway.
"""


def _timeout(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 0 <= value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and {MAX_TIMEOUT}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [options] SERVICE [-- CMD ...]"
    parser.description = (
        "Run a service's tests in your copy of it, through its sidecar: the command\n"
        "the release declares (devstack.test.command), or the one after --, on the\n"
        "files synced to your copy. Exits with the command's exit code."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "service", metavar="SERVICE", help="the service (a release of the Helmfile)"
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD",
        help="the command to run instead of the declared one (no shell runs)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=None,
        metavar="SECONDS",
        help="kill the command after this long, exit 124 (default: devstack.test.timeoutSeconds; "
        "0: never)",
    )
    parser.add_argument(
        "--cwd",
        default=None,
        metavar="DIR",
        help="the folder to run in, relative to the workspace (default: devstack.test.dir)",
    )
    add_sidecar_arguments(parser)
    add_mode_arguments(parser)
    add_project_arguments(parser)


# --- the command line and the plan (pure) ----------------------------------------------------


def split_command(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """What argparse left after SERVICE, as options and the command. Words
    that start with a non-option are all the command: argparse (3.11) drops a
    ``--`` right after SERVICE itself, so it cannot be told from a later one,
    which is the command's own. Else the options come before the first
    ``--``, and the command after it."""
    words = list(words)
    if words and not words[0].startswith("-"):
        return [], words
    if "--" in words:
        i = words.index("--")
        return words[:i], words[i + 1 :]
    return words, []


@dataclass(frozen=True)
class Invocation:
    """What ``devstack test`` runs in the copy's workspace."""

    service: str
    argv: tuple[str, ...]
    #: Relative to the workspace; ``""``: its root.
    cwd: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    #: Seconds; 0: no limit.
    timeout: int = 0

    def request(self) -> pb.ExecRequest:
        return pb.ExecRequest(
            argv=list(self.argv), env=dict(self.env), cwd=self.cwd, timeout_seconds=self.timeout
        )


def _text(value: Any) -> str:
    """An env value as YAML wrote it: ``true``/``false``, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _folder(path: str, what: str) -> str:
    """``path`` as the sidecar takes it: relative, normalised, ``""`` for the root."""
    norm = posixpath.normpath(path.strip()) if path.strip() else "."
    if norm == ".":
        return ""
    try:
        return check_relpath(norm)
    except UnsafePathError as e:
        raise ConfigError(f"{what}: must be a folder inside the workspace ({e})") from None


def plan(
    release: Release,
    command: Sequence[str] = (),
    *,
    cwd: str | None = None,
    timeout: int | None = None,
    local: bool = False,
) -> Invocation:
    """What runs for ``release``: ``command`` if given, else its declared
    ``devstack.test.command`` (an argv list, or a string split as a shell
    would); in ``--cwd``, else ``devstack.test.dir``; with
    ``devstack.test.env``; ``--timeout``, else ``timeoutSeconds``. On the
    local stack a first word ``python``/``python3`` is devstack's own Python.
    Raises :class:`ConfigError` (one line, naming the release and the key)."""
    block: Mapping[str, Any] = release.devstack.get("test") or {}
    where = f"{release.source}:{release.line}" if release.source else "the Helmfile"
    if command:
        argv = list(command)
    else:
        declared = block.get("command") or []
        if isinstance(declared, str):
            try:
                argv = shlex.split(declared)
            except ValueError as e:
                raise ConfigError(
                    f"release {release.name} ({where}): devstack.test.command: {e}"
                ) from None
        else:
            argv = [str(a) for a in declared]
        if not argv:
            raise ConfigError(
                f"release {release.name} declares no test command: set devstack.test.command "
                f"in its values ({where}), or give one: devstack test {release.name} -- CMD"
            )
    if local and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    if cwd is not None:
        folder = _folder(cwd, f"--cwd {cwd!r}")
    else:
        folder = _folder(str(block.get("dir") or ""), f"release {release.name}: devstack.test.dir")
    env = {str(k): _text(v) for k, v in (block.get("env") or {}).items()}
    seconds = timeout if timeout is not None else int(block.get("timeoutSeconds") or 0)
    return Invocation(release.name, tuple(argv), folder, env, seconds)


# --- the shell -------------------------------------------------------------------------------


def _parse_options(args: argparse.Namespace) -> list[str]:
    """argparse puts everything after SERVICE into ``command``, options too
    (``devstack test web --timeout 60 -- pytest``): the options before ``--``
    are parsed here, into ``args``, and the command after it is returned."""
    service = args.service
    options, command = split_command(args.command)
    if options:
        again = argparse.ArgumentParser(prog="devstack test")
        add_arguments(again)
        again.parse_args([*options, service], namespace=args)
        if args.service != service or args.command:
            raise ConfigError(
                f"the command goes after the options and --: devstack test {service} "
                "[options] -- CMD ..."
            )
    args.command = command
    return command


def run(args: argparse.Namespace) -> int:
    configure(level=os.environ.get("DEVSTACK_LOG_LEVEL", "warning"))
    command = _parse_options(args)
    project = load_project(args)
    release = declared_release(project, args.service)
    local = is_local(args, project)
    invocation = plan(release, command, cwd=args.cwd, timeout=args.timeout, local=local)
    sidecar = copy_sidecar(args, project, args.service, local=local)
    log.info(
        "test.start",
        service=invocation.service,
        program=invocation.argv[0],
        cwd=invocation.cwd or ".",
        local=local,
        sidecar=sidecar.address,
    )
    return asyncio.run(
        stream_exec(
            sidecar,
            invocation.request(),
            label="devstack test",
            timeout_hint=" (give it longer with --timeout or devstack.test.timeoutSeconds)",
        )
    )
