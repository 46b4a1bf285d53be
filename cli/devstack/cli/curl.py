"""``devstack curl SERVICE [PATH]``: a request to a service through the
router, tagged with your routing key, so it reaches your copy (and, through
the propagating services, your copies of what it calls).

On the local stack (``devstack up --local``) the router is its Traefik on
127.0.0.1 and the host is ``<service>.localtest.me``; ``--untagged`` sends
the same request without the key (the baseline answers). Prints the body,
and exits 0 for a 2xx or 3xx answer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from devstack.cli import localstack
from devstack.cli.project import add_project_arguments, load_project

EXAMPLES = """\
examples:
  devstack curl web               GET / of web, tagged: your copies answer
  devstack curl web /healthz
  devstack curl web --untagged    the baseline answers
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("service", metavar="SERVICE", help="the release to call")
    parser.add_argument("path", nargs="?", default="/", help="the path (default /)")
    parser.add_argument("--untagged", action="store_true", help="send it without your routing key")
    parser.add_argument("-i", "--include", action="store_true", help="print the status line first")
    add_project_arguments(parser, kube=False)


def run(args: argparse.Namespace) -> int:
    project = load_project(args)
    state = localstack.require_state(project)
    status, body = localstack.curl(state, args.service, args.path, tagged=not args.untagged)
    if args.include:
        print(f"HTTP {status}", flush=True)
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0 if 200 <= status < 400 else 1
