"""``devstack up [SERVICE...]``: your personal copies of the named services
(all when none is named), in a cluster or, with ``--local``, on this machine.

``--local`` runs the project's Helmfile as processes on 127.0.0.1
(:mod:`devstack.cli.localstack`): an AWS endpoint with every release's
``devstack.aws`` provisioned for the baseline and for you, each release's
baseline in ``needs`` order, your copy of each named service under
``devstack sidecar`` (supervise mode, its own workspace), and real Traefik
routing by your routing key with the agent's own rules. In the foreground it
then syncs each copy's source folder to its sidecar (as ``devstack
connect`` does) until Ctrl-C, which stops it all; ``--detach`` leaves it
running for ``devstack down``; ``--smoke`` checks every part once from the
outside and exits 0 or 1.

Without ``--local`` the cluster deploy runs (``devstack.cli.cluster_up``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.cli import localstack
from devstack.cli.project import Project, add_output_argument, add_project_arguments, load_project
from devstack.cli.syncer import Stats, Syncer, Target
from devstack.core import logging as dlog
from devstack.core.errors import ConfigError
from devstack.core.plan import Plan
from devstack.sync.v1 import sync_pb2 as pb

#: The module of the cluster deploy, with ``add_cluster_arguments(parser)``
#: and ``run_cluster(args, project) -> int``.
CLUSTER_MODULE = "devstack.cli.cluster_up"
#: With no reload event this long after the initial sync, none is coming.
SETTLE_SECONDS = 2.0
#: How long the initial sync of every copy (and the restart it sets off) may take.
SYNC_TIMEOUT = 120.0

EXAMPLES = """\
examples:
  devstack up --local                 every service of ./helmfile.yaml on this machine
  devstack up --local stock           baselines of all, your copy of stock only
  devstack up --local -f examples/shop --smoke
  devstack up web                     your copy of web in the cluster (wakes it if the
                                      agent put it to sleep, renews an expired one)
  devstack up --baseline              the shared baselines of every service (platform team)
"""


def _cluster() -> Any | None:
    try:
        return importlib.import_module(CLUSTER_MODULE)
    except ModuleNotFoundError as e:
        if e.name != CLUSTER_MODULE:
            raise
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help="the releases to run your copies of (default: all of them)",
    )
    g = parser.add_argument_group("the local stack (--local)")
    g.add_argument(
        "--local",
        action="store_true",
        help="run the Helmfile as processes on 127.0.0.1, with no cluster",
    )
    g.add_argument(
        "--port",
        type=int,
        default=8088,
        help="the local Traefik's port on 127.0.0.1 (0: any free port; default 8088)",
    )
    g.add_argument(
        "--aws",
        default="moto",
        metavar=localstack.AWS_CHOICES,
        help="where provisioning creates the declared AWS resources: a moto server "
        "(default), this checkout's LocalStack (its first start installs it), or the URL "
        "of a running endpoint",
    )
    g.add_argument(
        "--detach",
        action="store_true",
        help="start the stack and return (no sync); `devstack down` stops it",
    )
    g.add_argument(
        "--smoke",
        action="store_true",
        help="check every part once (routing two hops deep, preview URL, sync, reload, "
        "provisioning) on copies of the sources, stop the stack and exit 0 or 1",
    )
    add_project_arguments(parser)
    add_output_argument(parser)
    cluster = _cluster()
    if cluster is not None:
        cluster.add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    dlog.configure(level="warning")
    project = load_project(args)
    if args.local:
        if getattr(args, "baseline", False):
            raise ConfigError(
                "--baseline deploys a cluster's shared baselines; the local stack always "
                "runs the baselines: `devstack up --local` without it"
            )
        return run_local(args, project)
    cluster = _cluster()
    if cluster is None:
        raise ConfigError(
            "deploying to a cluster is not available in this build: use `devstack up --local`"
        )
    code: int = cluster.run_cluster(args, project)
    return code


# --- the local stack ------------------------------------------------------------------------


def run_local(args: argparse.Namespace, project: Project) -> int:
    the_plan = localstack.plan(project.helmfile, project.root, project.owner, args.services)
    quiet = args.smoke or args.output != "table"
    say: Callable[..., None] = (lambda *_: None) if quiet else print
    sources: dict[str, Path] = {}
    if args.smoke:
        # Never edit the caller's tree: the smoke test edits copies.
        scratch = project.state_dir / "smoke-sources"
        shutil.rmtree(scratch, ignore_errors=True)
        for s in the_plan.copies:
            sources[s.name] = scratch / s.name
            shutil.copytree(s.source, sources[s.name], ignore=localstack._ignore)
    say(f"devstack up --local: {project.helmfile.path} for {project.owner}")
    state = localstack.start(
        project, the_plan, port=args.port, aws=args.aws, sources=sources, say=say
    )
    try:
        if args.output != "table":
            _print_state(state, args.output)
        if args.detach:
            if args.output == "table":
                print(_what_to_try(state, synced=False))
            return 0
        return asyncio.run(_sync_and_serve(args, project, state, say))
    finally:
        if not args.detach:
            localstack.down(project)
            if args.smoke:
                shutil.rmtree(project.state_dir / "smoke-sources", ignore_errors=True)
                with contextlib.suppress(OSError):
                    project.state_dir.rmdir()  # only if nothing else lives there


def _print_state(state: localstack.LocalState, output: str) -> None:
    doc = state.as_json()
    if output == "json":
        print(json.dumps(doc, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(doc, sort_keys=False), end="")


class _Printer:
    """Reporter for the embedded sync of one copy: one line per event."""

    def __init__(self, service: str, quiet: bool) -> None:
        self.service = service
        self.quiet = quiet
        self.stats = Stats()
        #: When the initial sync finished, and whether a reload it set off is still running.
        self.synced_at: float | None = None
        self.reloading = False
        self.reloaded = False

    def settled(self) -> bool:
        """The initial sync is done and the reload it may set off (the
        sidecar restarts the app when files are adopted) has finished."""
        if self.synced_at is None or self.reloading:
            return False
        return self.reloaded or time.monotonic() - self.synced_at > SETTLE_SECONDS

    def round_started(self, plan: Plan, *, initial: bool) -> None:
        if initial and not self.quiet and plan.changes:
            print(f"  {self.service}: initial sync of {len(plan.changes)} change(s)")

    def progress(self, files: int, nbytes: int) -> None:
        pass

    def round_finished(self, stats: Stats) -> None:
        self.stats = stats
        if self.synced_at is None:
            self.synced_at = time.monotonic()

    def event(self, event: pb.Event) -> None:
        if event.kind == "reload-started":
            self.reloading = True
        elif event.kind in ("reload-finished", "reload-failed", "process-exited"):
            self.reloading, self.reloaded = False, True
        if self.quiet or event.kind == "applied":
            return
        print(f"  {self.service}: {event.kind}: {event.message}")
        if event.output_tail and event.kind in ("reload-failed", "process-exited"):
            for line in event.output_tail.rstrip().splitlines()[-8:]:
                print(f"      {line}")

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"  {self.service}: {text}")


async def _sync_and_serve(
    args: argparse.Namespace, project: Project, state: localstack.LocalState, say: Any
) -> int:
    syncers: list[Syncer] = []
    printers: list[_Printer] = []
    for s in state.services:
        if s.copy is None:
            continue
        token = await asyncio.to_thread(Path(s.copy.token_file).read_text)
        printers.append(_Printer(s.service, quiet=args.smoke))
        syncers.append(
            Syncer(
                Path(s.copy.source),
                Target(s.copy.sidecar, token.strip()),
                reporter=printers[-1],
                cache_path=Path(state.dir) / f"sync-cache-{s.service}.json",
            )
        )
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for syncer in syncers:
            syncer.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(syncer.run(once=False)) for syncer in syncers]
    try:
        deadline = time.monotonic() + SYNC_TIMEOUT
        while not all(p.settled() for p in printers):
            if time.monotonic() > deadline or any(t.done() for t in tasks):
                late = [p.service for p in printers if not p.settled()]
                say(f"  sync: {', '.join(late)} not in sync yet; see the logs")
                break
            await asyncio.sleep(0.05)
        for s in state.services:
            if s.copy is not None:
                await asyncio.to_thread(localstack.wait_answering, s.copy.ready_url, SYNC_TIMEOUT)
        if args.smoke:
            return await asyncio.to_thread(_smoke, state)
        say(_what_to_try(state, synced=True))
        results = await asyncio.gather(*tasks)
        return max((int(r) for r in results), default=0)
    finally:
        stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)


def _what_to_try(state: localstack.LocalState, *, synced: bool) -> str:
    owner = state.owner
    router = state.router_url
    front = state.services[-1]
    deepest = state.services[0]
    copies = [s for s in state.services if s.copy is not None]
    lines = [
        "",
        f"Ready. Your routing key is {owner!r}; Traefik is on {router}.",
        "",
        f"  baseline:   curl -H 'Host: {front.host}' {router}/",
        f"  your copy:  curl -H 'Host: {front.host}' -H 'baggage: devstack-route={owner}' "
        f"{router}/",
        f"              (devstack curl {front.service}{_project_flag(state)} does the same)",
    ]
    if copies:
        mine = copies[-1]
        assert mine.copy is not None
        preview_host = mine.copy.preview_url.split("//", 1)[1].split(":", 1)[0]
        lines += [
            f"  preview:    {mine.copy.preview_url}",
            f"              curl -H 'Host: {preview_host}' {router}/",
        ]
    lines.append("")
    if copies and synced:
        edited = next((s for s in copies if s.service == deepest.service), copies[0])
        assert edited.copy is not None
        lines += [
            f"Edit MESSAGE in {Path(edited.copy.source) / 'app.py'} and save: the sidecar",
            f"syncs it and restarts your copy of {edited.service} (not the baseline); the next",
            f"tagged request to {front.service} shows it{_depth(state, edited.service)}.",
        ]
    elif copies:
        c = copies[0].copy
        assert c is not None
        lines += [
            "Sync a copy yourself, e.g.:",
            f"  devstack connect {c.source} --to {c.sidecar} --token-file {c.token_file}",
        ]
    lines += [
        f"Logs: {Path(state.dir) / 'logs'}. "
        + ("Ctrl-C stops everything." if synced else "`devstack down` stops everything."),
    ]
    return "\n".join(lines)


def _project_flag(state: localstack.LocalState) -> str:
    """`` -f <folder>`` for a command run from here, empty when here is the project."""
    folder = Path(state.helmfile).parent
    if folder == Path.cwd():
        return ""
    return f" -f {os.path.relpath(folder)}"


def _depth(state: localstack.LocalState, service: str) -> str:
    """How far behind the front service (the last in deploy order) ``service``
    is, as the shop's chain web -> api -> stock goes."""
    names = [s.service for s in state.services]
    hops = len(names) - 1 - names.index(service)
    return f", {hops} hop(s) deep" if hops > 0 else ""


# --- --smoke ------------------------------------------------------------------------------


def _get(state: localstack.LocalState, host: str, headers: dict[str, str] | None = None) -> Any:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(  # noqa: S310 (our router on 127.0.0.1)
        state.router_url + "/", headers={"Host": host, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def _chain(doc: Any) -> list[dict[str, Any]]:
    """The hops of a response: web's, then api's inside it, then stock's, ..."""
    out: list[dict[str, Any]] = []
    while isinstance(doc, dict) and doc.get("service"):
        out.append(doc)
        nested = [v for k, v in doc.items() if isinstance(v, dict) and v.get("service")]
        doc = nested[0] if nested else None
    return out


def _owners(doc: Any) -> list[str]:
    return [str(hop.get("owner")) for hop in _chain(doc)]


def _wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _smoke(state: localstack.LocalState) -> int:
    """Check routing (two hops deep), the preview URL, provisioning, sync and
    reload once, from the outside; print one line per check."""
    owner = state.owner
    front = state.services[-1]
    copies = {s.service for s in state.services if s.copy is not None}
    depth = len(state.services)
    expected = [owner if s.service in copies else "baseline" for s in reversed(state.services)]
    checks: list[tuple[str, bool]] = []
    base = _get(state, front.host)
    checks.append(
        (
            f"an untagged request reaches every baseline ({depth} services)",
            _owners(base) == ["baseline"] * depth,
        )
    )
    mine = _get(state, front.host, {"x-devstack-route": owner})
    checks.append(
        (
            f"x-devstack-route reaches your copies, {depth - 1} hop(s) deep",
            _owners(mine) == expected,
        )
    )
    got = _get(state, front.host, {"baggage": f"foo=1,devstack-route={owner};p=1"})
    checks.append(("baggage among other members reaches your copies", _owners(got) == expected))
    got = _get(state, front.host, {"x-devstack-route": owner + "2"})
    checks.append((f"{owner}2 does not reach {owner}", _owners(got) == ["baseline"] * depth))
    if front.copy is not None:
        host = front.copy.preview_url.split("//", 1)[1].split(":", 1)[0]
        got = _get(state, host)
        checks.append(
            ("the preview URL reaches your copies with your routing key", _owners(got) == expected)
        )
    aws = [s for s in state.services if s.provisioned]
    if aws:
        mine_q = [hop.get("queue") for hop in _chain(mine) if "queue" in hop]
        base_q = [hop.get("queue") for hop in _chain(base) if "queue" in hop]
        checks.append(
            (
                "provisioned resources: your copy uses its own queue, the baseline its own",
                bool(mine_q)
                and bool(base_q)
                and all(q and q != b for q, b in zip(mine_q, base_q, strict=True))
                and any(owner in str(q) for q in mine_q),
            )
        )
    deepest = state.services[0]
    if deepest.copy is not None:
        app = Path(deepest.copy.source) / "app.py"
        marker = f"edited at {time.time():.0f}"
        text = app.read_text()
        app.write_text(re.sub(r"^MESSAGE = .*$", f'MESSAGE = "{marker}"', text, flags=re.M))
        saved = time.monotonic()
        tagged = {"x-devstack-route": owner}

        def reloaded() -> bool:
            return (_chain(_get(state, front.host, tagged)) or [{}])[-1].get("message") == marker

        ok = _wait_until(reloaded, 90)
        took = f" ({(time.monotonic() - saved) * 1000:.0f} ms)" if ok else ""
        checks.append(
            (f"a save reaches your copy of {deepest.service} through sync and reload{took}", ok)
        )
        untouched = (_chain(_get(state, front.host)) or [{}])[-1].get("message") != marker
        checks.append(("the baseline is untouched", untouched))
    for name, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(ok for _, ok in checks) else 1
