"""``devstack logs SERVICE [-f]``: the app's output.

On the local stack (``devstack up --local``) it is your copy's app output
(stdout and stderr of the process the sidecar supervises, kept apart from the
sidecar's own log), or the baseline's with ``--baseline``, read from the log
file the state names. ``-f`` keeps printing what is appended, as ``tail -f``.
"""

from __future__ import annotations

import argparse
import sys
import time

from devstack.cli import localstack
from devstack.cli.project import add_project_arguments, load_project
from devstack.core.errors import ConfigError

EXAMPLES = """\
examples:
  devstack logs stock            your copy of stock's output so far
  devstack logs stock -f         ... and what follows, until Ctrl-C
  devstack logs web --baseline   the baseline's output
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("service", metavar="SERVICE", help="the release whose output to show")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    parser.add_argument(
        "--baseline", action="store_true", help="the baseline's output, not your copy's"
    )
    parser.add_argument(
        "--tail", type=int, default=None, metavar="N", help="only the last N lines first"
    )
    add_project_arguments(parser, kube=False, file_short=False)


def _last(data: bytes, tail: int | None) -> bytes:
    if tail is None:
        return data
    return b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""


def run(args: argparse.Namespace) -> int:
    project = load_project(args)
    state = localstack.require_state(
        project, hint=" (in a cluster, read a pod's logs with kubectl logs)"
    )
    path = localstack.log_file(state, args.service, baseline=args.baseline)
    out = sys.stdout.buffer
    try:
        with path.open("rb") as f:
            # One open file: what is written between showing and following is not lost.
            out.write(_last(f.read(), args.tail))
            out.flush()
            while args.follow:
                chunk = f.read(65536)
                if chunk:
                    out.write(chunk)
                    out.flush()
                else:
                    time.sleep(0.1)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such log (did the local stack stop?)") from e
    except KeyboardInterrupt:
        return 0
    return 0
