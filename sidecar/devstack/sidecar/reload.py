"""Hot reload: what to do after synced files land (the pure planner), and
the reloader that does it (process I/O).

Strategies:

- ``none``: the app watches its own files;
- ``signal``: send a signal to a process found by pid file or name (the pod
  shares its process namespace);
- ``exec``: run a command, e.g. rebuild assets;
- ``supervise``: the sidecar runs the app itself and restarts that process,
  never the pod.

Rules match gitignore-style globs and chain steps: ``requirements.txt`` can
run the install step and then restart, while ``*.py`` only restarts. A burst
of changes is one reload; changes that arrive during a reload queue exactly
one more. A failing step stops the chain and is reported with its exit code
and the tail of its output; the synced files stay.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pathspec
import yaml

from devstack.core.errors import ConfigError
from devstack.core.exits import describe
from devstack.core.logging import get_logger

log = get_logger("sidecar.reload")

STRATEGIES = ("none", "signal", "exec", "supervise")
TAIL_LINES = 40
TAIL_BYTES = 4096


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class ReloadEvent:
    """Something a reload did, for the laptop and the log."""

    kind: str  # reload-started | reload-finished | reload-failed | process-exited
    message: str
    paths: tuple[str, ...] = ()
    exit_code: int = 0
    reason: str = ""
    output_tail: str = ""
    duration_ms: int = 0
    reload_id: int = 0


EventSink = Callable[[ReloadEvent], None]


@dataclass(frozen=True)
class Step:
    """``exec`` runs ``command``; ``restart`` restarts or signals the app."""

    kind: str
    command: tuple[str, ...] = ()


RESTART = Step("restart")


@dataclass(frozen=True)
class Rule:
    match: tuple[str, ...]
    steps: tuple[Step, ...]
    _spec: pathspec.GitIgnoreSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_spec", pathspec.GitIgnoreSpec.from_lines(self.match))

    def matches(self, path: str) -> bool:
        return bool(self._spec.match_file(path))


@dataclass(frozen=True)
class ReloadConfig:
    strategy: str = "none"
    command: tuple[str, ...] = ()
    signal: int = int(signal.SIGHUP)
    pid_file: str | None = None
    process_name: str | None = None
    rules: tuple[Rule, ...] = ()
    debounce_ms: int = 100
    grace_seconds: float = 5.0
    ready_url: str | None = None


@dataclass(frozen=True)
class ReloadPlan:
    """The steps one reload runs: exec commands in rule order without
    repeats, then at most one restart."""

    execs: tuple[tuple[str, ...], ...] = ()
    restart: bool = False
    paths: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.execs and not self.restart


def plan(config: ReloadConfig, paths: Sequence[str]) -> ReloadPlan:
    """Which steps run for these changed paths (pure)."""
    execs: list[tuple[str, ...]] = []
    restart = False
    hit: list[str] = []
    for path in paths:
        for rule in config.rules:
            if not rule.matches(path):
                continue
            hit.append(path)
            for step in rule.steps:
                if step.kind == "exec" and step.command not in execs:
                    execs.append(step.command)
                elif step.kind == "restart":
                    restart = True
    if config.strategy in ("none", "exec"):
        restart = False
    return ReloadPlan(tuple(execs), restart, tuple(dict.fromkeys(hit)))


# ---------------------------------------------------------------- config


def _env(name: str) -> str | None:
    return os.environ.get(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("hot reload")
    g.add_argument(
        "--reload",
        choices=STRATEGIES,
        default=_env("DEVSTACK_RELOAD"),
        help="none | signal | exec | supervise (env DEVSTACK_RELOAD; default none)",
    )
    g.add_argument(
        "--command",
        default=_env("DEVSTACK_COMMAND"),
        help="supervise: the app command the sidecar runs and restarts (env DEVSTACK_COMMAND)",
    )
    g.add_argument(
        "--exec",
        dest="exec_command",
        default=_env("DEVSTACK_EXEC"),
        help="exec: the command to run after a change (env DEVSTACK_EXEC)",
    )
    g.add_argument(
        "--signal",
        default=_env("DEVSTACK_SIGNAL"),
        help="signal: which signal to send (default HUP)",
    )
    g.add_argument(
        "--pid-file", default=_env("DEVSTACK_PID_FILE"), help="signal: the target's pid file"
    )
    g.add_argument(
        "--process-name",
        default=_env("DEVSTACK_PROCESS_NAME"),
        help="signal: the target's process name (needs shareProcessNamespace)",
    )
    g.add_argument(
        "--reload-on",
        action="append",
        default=None,
        metavar="GLOB",
        help="changed paths that trigger a reload, gitignore-style (repeatable; default all)",
    )
    g.add_argument(
        "--reload-config",
        default=_env("DEVSTACK_RELOAD_CONFIG"),
        metavar="FILE",
        help="YAML rules: globs -> chained steps (see docs/reload.md)",
    )
    g.add_argument(
        "--reload-debounce-ms",
        type=int,
        default=None,
        help="a burst of changes inside this window is one reload (default 100)",
    )
    g.add_argument(
        "--ready-url",
        default=_env("DEVSTACK_READY_URL"),
        help="after a restart, the reload finishes when this URL answers",
    )
    g.add_argument(
        "--grace-seconds",
        type=float,
        default=None,
        help="supervise: SIGTERM, then SIGKILL after this long (default 5)",
    )


def _signal(value: str | int | None, where: str) -> int:
    if value is None:
        return int(signal.SIGHUP)
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    name = str(value).upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError as e:
        raise ConfigError(f"{where}: unknown signal {value!r}") from e


def _command(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise ConfigError(f"{where}: expected a command string or a list of strings")
    if not parts:
        raise ConfigError(f"{where}: empty command")
    return tuple(parts)


def _rules(raw: Any, where: str) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of rules")
    rules: list[Rule] = []
    for i, r in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{here}: expected a mapping with match and steps")
        unknown = set(r) - {"match", "steps"}
        if unknown:
            raise ConfigError(f"{here}: unknown key {sorted(unknown)[0]!r}")
        match = r.get("match")
        if isinstance(match, str):
            match = [match]
        if not isinstance(match, list) or not match or not all(isinstance(m, str) for m in match):
            raise ConfigError(f"{here}.match: expected a glob or a list of globs")
        steps_raw = r.get("steps", ["restart"])
        if not isinstance(steps_raw, list) or not steps_raw:
            raise ConfigError(f"{here}.steps: expected a list of steps")
        steps: list[Step] = []
        for j, s in enumerate(steps_raw):
            if s == "restart":
                steps.append(RESTART)
            elif isinstance(s, dict) and set(s) == {"exec"}:
                steps.append(Step("exec", _command(s["exec"], f"{here}.steps[{j}].exec")))
            else:
                raise ConfigError(f"{here}.steps[{j}]: expected 'restart' or {{exec: COMMAND}}")
        try:
            rules.append(Rule(tuple(match), tuple(steps)))
        except Exception as e:  # pathspec raises several types for bad globs
            raise ConfigError(f"{here}.match: bad glob: {e}") from e
    return tuple(rules)


_FILE_KEYS = {
    "strategy",
    "command",
    "signal",
    "pidFile",
    "processName",
    "rules",
    "debounceMs",
    "readyUrl",
    "graceSeconds",
}


def load_config(path: Path) -> dict[str, Any]:
    """The reload config file, validated (keys are checked, values parsed by
    ``config_from_args``)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"--reload-config {path}: no such file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"--reload-config {path}: not valid YAML: {e}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"--reload-config {path}: expected a mapping at the top")
    unknown = set(raw) - _FILE_KEYS
    if unknown:
        raise ConfigError(f"--reload-config {path}: unknown key {sorted(unknown)[0]!r}")
    return raw


def config_from_args(args: argparse.Namespace) -> ReloadConfig:
    """Options on the command line win over the config file."""
    f: dict[str, Any] = load_config(Path(args.reload_config)) if args.reload_config else {}
    where = "--reload-config" if args.reload_config else "options"
    strategy = args.reload or f.get("strategy") or "none"
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}: strategy must be one of {', '.join(STRATEGIES)}")
    command_raw = args.command or f.get("command")
    command = _command(command_raw, "--command") if command_raw else ()
    if strategy == "supervise" and not command:
        raise ConfigError("--reload supervise needs --command (the app to run)")
    pid_file = args.pid_file or f.get("pidFile")
    process_name = args.process_name or f.get("processName")
    if strategy == "signal" and not (pid_file or process_name):
        raise ConfigError("--reload signal needs --pid-file or --process-name")
    sig = _signal(args.signal or f.get("signal"), "--signal")
    if "rules" in f:
        rules = _rules(f["rules"], f"{where}: rules")
    else:
        globs = tuple(args.reload_on or ["*"])
        if strategy == "exec":
            exec_raw = args.exec_command
            if not exec_raw:
                raise ConfigError("--reload exec needs --exec (the command to run)")
            steps: tuple[Step, ...] = (Step("exec", _command(exec_raw, "--exec")),)
        elif strategy in ("signal", "supervise"):
            steps = (RESTART,)
        else:
            steps = ()
        try:
            rules = (Rule(globs, steps),) if steps else ()
        except Exception as e:
            raise ConfigError(f"--reload-on: bad glob: {e}") from e
    debounce = (
        args.reload_debounce_ms if args.reload_debounce_ms is not None else f.get("debounceMs", 100)
    )
    if not isinstance(debounce, int) or debounce < 0:
        raise ConfigError(f"{where}: debounceMs must be a whole number of milliseconds >= 0")
    grace = args.grace_seconds if args.grace_seconds is not None else f.get("graceSeconds", 5.0)
    if not isinstance(grace, int | float) or grace < 0:
        raise ConfigError(f"{where}: graceSeconds must be a number >= 0")
    return ReloadConfig(
        strategy=strategy,
        command=command,
        signal=sig,
        pid_file=pid_file,
        process_name=process_name,
        rules=rules,
        debounce_ms=debounce,
        grace_seconds=float(grace),
        ready_url=args.ready_url or f.get("readyUrl"),
    )


# ---------------------------------------------------------------- runtime


class Reloader(Protocol):
    async def start(self) -> None: ...

    def notify(self, paths: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


class _Tail:
    """The last lines of an output stream."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def feed(self, data: bytes) -> None:
        self.lines.extend(data.decode(errors="replace").splitlines())

    def text(self) -> str:
        return "\n".join(self.lines)[-TAIL_BYTES:]


async def _pump(stream: asyncio.StreamReader | None, tail: _Tail, sink: Any) -> None:
    """Copy a child's output to our own stdout (kubectl logs) and keep a tail."""
    if stream is None:
        return
    while line := await stream.readline():
        tail.feed(line)
        with contextlib.suppress(Exception):
            sink.write(line)
            sink.flush()


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def find_pid(*, pid_file: str | None, process_name: str | None) -> int | None:
    """The signal target, by pid file or by process name in /proc."""
    if pid_file:
        try:
            pid = int(Path(pid_file).read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None
    if process_name:
        me = os.getpid()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                comm = Path(entry.path, "comm").read_text().strip()
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            names = {comm, *(os.path.basename(a.decode(errors="replace")) for a in argv[:2] if a)}
            if process_name in names:
                return int(entry.name)
    return None


class ProcessReloader:
    """Runs reload plans one at a time, coalescing bursts of changes."""

    def __init__(self, config: ReloadConfig, *, workspace: Path, on_event: EventSink) -> None:
        self.config = config
        self.workspace = workspace
        self.on_event = on_event
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._child_tail = _Tail()
        self._child_tasks: list[asyncio.Task[None]] = []
        self._expected_exit = False
        self._reload_id = 0
        self._closing = False

    # --------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work())
        if self.config.strategy == "supervise":
            await self._spawn()

    def notify(self, paths: Sequence[str]) -> None:
        if self._closing or not self.config.rules:
            return
        for p in paths:
            self._pending[p] = None
        self._wake.set()

    async def close(self) -> None:
        self._closing = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._stop_child()

    # --------------------------------------------------------- events

    def _emit(self, ev: ReloadEvent) -> None:
        fields = {"reload_id": ev.reload_id, "reason": ev.reason, "exit_code": ev.exit_code}
        name = ev.kind.replace("-", ".").replace("reload.", "reload.", 1)
        if ev.kind in ("reload-failed", "process-exited"):
            log.warning(name, message=ev.message, **fields)
        else:
            log.info(name, message=ev.message, duration_ms=ev.duration_ms, **fields)
        self.on_event(ev)

    # --------------------------------------------------------- the worker

    async def _work(self) -> None:
        debounce = self.config.debounce_ms / 1000
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:  # quiet for `debounce` seconds
                try:
                    await asyncio.wait_for(self._wake.wait(), debounce)
                    self._wake.clear()
                except TimeoutError:
                    break
            paths = list(self._pending)
            self._pending.clear()
            p = plan(self.config, paths)
            if not p.empty:
                await self._run(p)

    async def _run(self, p: ReloadPlan) -> None:
        self._reload_id += 1
        rid = self._reload_id
        started = time.monotonic()
        shown = p.paths[:20]
        self._emit(
            ReloadEvent(
                "reload-started",
                f"reload {rid}: {len(p.paths)} path(s) changed",
                shown,
                reload_id=rid,
            )
        )
        for cmd in p.execs:
            code, tail = await self._exec(cmd)
            if code != 0:
                info = describe(code)
                reason = "user-command-failed" if info.reason in ("exit", "") else info.reason
                self._emit(
                    ReloadEvent(
                        "reload-failed",
                        f"{shlex.join(cmd)}: {info.message}; the synced files are kept",
                        shown,
                        exit_code=info.code,
                        reason=reason,
                        output_tail=tail,
                        duration_ms=int((time.monotonic() - started) * 1000),
                        reload_id=rid,
                    )
                )
                return
        if p.restart:
            problem = await self._restart()
            if problem is not None:
                reason, message, tail = problem
                self._emit(
                    ReloadEvent(
                        "reload-failed",
                        message,
                        shown,
                        reason=reason,
                        output_tail=tail,
                        reload_id=rid,
                        duration_ms=int((time.monotonic() - started) * 1000),
                    )
                )
                return
        what = (
            "restarted"
            if p.restart and self.config.strategy == "supervise"
            else ("signalled" if p.restart else "ran")
        )
        self._emit(
            ReloadEvent(
                "reload-finished",
                f"reload {rid}: {what} in {int((time.monotonic() - started) * 1000)} ms",
                shown,
                duration_ms=int((time.monotonic() - started) * 1000),
                reload_id=rid,
            )
        )

    async def _exec(self, cmd: tuple[str, ...]) -> tuple[int, str]:
        tail = _Tail()
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=self.workspace,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            return 127, f"{cmd[0]}: command not found"
        except PermissionError:
            return 126, f"{cmd[0]}: permission denied"
        try:
            await _pump(proc.stdout, tail, sys.stdout.buffer)
            code = await proc.wait()
        except asyncio.CancelledError:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        return code, tail.text()

    # --------------------------------------------------------- restart

    async def _restart(self) -> tuple[str, str, str] | None:
        """Restart (supervise) or signal the app; a problem or None."""
        if self.config.strategy == "signal":
            pid = find_pid(pid_file=self.config.pid_file, process_name=self.config.process_name)
            target = self.config.pid_file or self.config.process_name
            if pid is None:
                return ("signal-target-missing", f"no process found for {target}", "")
            try:
                os.kill(pid, self.config.signal)
            except OSError as e:
                return ("signal-target-missing", f"cannot signal {target} (pid {pid}): {e}", "")
            return None
        await self._stop_child()
        return await self._spawn()

    async def _spawn(self) -> tuple[str, str, str] | None:
        self._child_tail = _Tail()
        self._expected_exit = False
        env = {k: v for k, v in os.environ.items() if k != "DEVSTACK_TOKEN"}
        try:
            child = await asyncio.create_subprocess_exec(
                *self.config.command,
                cwd=self.workspace,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as e:
            code = 127 if isinstance(e, FileNotFoundError) else 126
            info = describe(code)
            return (info.reason, f"{self.config.command[0]}: {info.message}", "")
        self._child = child
        log.info("process.started", pid=child.pid)
        self._child_tasks = [
            asyncio.create_task(_pump(child.stdout, self._child_tail, sys.stdout.buffer)),
            asyncio.create_task(self._watch_child(child)),
        ]
        if self.config.ready_url:
            return await self._wait_ready(child)
        return None

    async def _wait_ready(self, child: asyncio.subprocess.Process) -> tuple[str, str, str] | None:
        from urllib.parse import urlsplit

        url = urlsplit(self.config.ready_url or "")
        host, port = url.hostname or "127.0.0.1", url.port or 80
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if child.returncode is not None:
                info = describe(child.returncode)
                return (
                    "crashed",
                    f"the app exited before it was ready ({info.message})",
                    self._child_tail.text(),
                )
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
                writer.write(f"GET {url.path or '/'} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                await writer.drain()
                first = await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                if first.startswith(b"HTTP/"):
                    return None
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.01)
        return (
            "not-ready",
            f"{self.config.ready_url} did not answer within 60 s",
            self._child_tail.text(),
        )

    async def _watch_child(self, child: asyncio.subprocess.Process) -> None:
        code = await child.wait()
        if self._expected_exit or self._closing or child is not self._child:
            return
        await asyncio.sleep(0.05)  # let the output pump catch the last lines
        info = describe(code)
        reason = (
            info.reason
            if info.reason in ("killed", "command-not-found", "not-executable")
            else "crashed"
        )
        self._emit(
            ReloadEvent(
                "process-exited",
                f"the app exited on its own ({info.message}); it starts again on the next change",
                exit_code=info.code,
                reason=reason,
                output_tail=self._child_tail.text(),
                reload_id=self._reload_id,
            )
        )
        self._child = None

    async def _stop_child(self) -> None:
        child = self._child
        if child is None:
            return
        self._expected_exit = True
        if child.returncode is None:
            _kill_group(child.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), self.config.grace_seconds)
            except TimeoutError:
                _kill_group(child.pid, signal.SIGKILL)
                await child.wait()
        # Reap anything the app left in its process group.
        _kill_group(child.pid, signal.SIGKILL)
        for t in self._child_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 1)
        self._child = None


def build_reloader(config: ReloadConfig, *, workspace: Path, on_event: EventSink) -> Reloader:
    return ProcessReloader(config, workspace=workspace, on_event=on_event)
