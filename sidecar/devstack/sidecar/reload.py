"""Hot reload: what to do after a batch of synced files lands.

The top half is pure: the configuration (command-line options and the YAML
rules file, validated into a ``ReloadConfig``) and ``plan``, which says which
steps run for a set of changed paths. The bottom half, ``ProcessReloader``,
does process I/O (helpers in ``devstack.sidecar.process``).

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
import contextlib
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pathspec
import yaml

from devstack.core.errors import ConfigError
from devstack.core.exits import ExitInfo, describe
from devstack.core.logging import get_logger
from devstack.sidecar.process import (
    Readiness,
    ReadyLine,
    Tail,
    find_pid,
    kill_group,
    pump,
    spawn,
    stays_up,
    wait_ready,
)

log = get_logger("sidecar.reload")

STRATEGIES = ("none", "signal", "exec", "supervise")
DEFAULT_DEBOUNCE_MS = 100
DEFAULT_GRACE_SECONDS = 5.0
DEFAULT_READY_TIMEOUT_SECONDS = 60.0
#: supervise without probes: a restarted app that exits within this long
#: crashed on start, and the reload says so.
DEFAULT_MIN_READY_SECONDS = 1.0


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class ReloadEvent:
    """Something a reload did, for the laptop and the log.

    ``kind``: reload-started | reload-finished | reload-failed |
    process-exited. ``reason`` (stable): user-command-failed,
    command-not-found (127), not-executable (126), killed (137 / a signal),
    crashed, exited (the app exited 0 on its own), signal-target-missing,
    timeout."""

    kind: str
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
    """``exec`` runs ``command`` in the workspace; ``restart`` restarts the
    supervised app or signals the target."""

    kind: str
    command: tuple[str, ...] = ()


RESTART = Step("restart")


@dataclass(frozen=True)
class Rule:
    """Changed paths matching any of ``match`` (gitignore-style) run ``steps``."""

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
    debounce_ms: int = DEFAULT_DEBOUNCE_MS
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    ready_url: str | None = None
    ready_line: str | None = None
    ready_timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS
    #: How long a restarted app must stay up (after its probes passed) to
    #: count as ready. None: 1 s without probes, 0 with them.
    min_ready_seconds: float | None = None

    @property
    def probed(self) -> bool:
        return bool(self.ready_url or self.ready_line)

    @property
    def settle_seconds(self) -> float:
        """The resolved ``min_ready_seconds``."""
        if self.min_ready_seconds is not None:
            return self.min_ready_seconds
        return 0.0 if self.probed else DEFAULT_MIN_READY_SECONDS


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
    """Which steps run for these changed paths (pure). ``restart`` does
    nothing under the ``none`` and ``exec`` strategies."""
    execs: list[tuple[str, ...]] = []
    restart = False
    hit: list[str] = []
    for rule in config.rules:
        matched = [p for p in paths if rule.matches(p)]
        if not matched:
            continue
        hit.extend(matched)
        for step in rule.steps:
            if step.kind == "exec" and step.command not in execs:
                execs.append(step.command)
            elif step.kind == "restart":
                restart = True
    if config.strategy not in ("signal", "supervise"):
        restart = False
    ordered = tuple(p for p in dict.fromkeys(paths) if p in set(hit))
    return ReloadPlan(tuple(execs), restart, ordered)


# ---------------------------------------------------------------- config

#: Config file key -> (command-line flag, argparse attribute).
_OPTIONS: dict[str, tuple[str, str]] = {
    "strategy": ("--reload", "reload"),
    "command": ("--command", "command"),
    "exec": ("--exec", "exec_command"),
    "signal": ("--signal", "signal"),
    "pidFile": ("--pid-file", "pid_file"),
    "processName": ("--process-name", "process_name"),
    "reloadOn": ("--reload-on", "reload_on"),
    "debounceMs": ("--reload-debounce-ms", "reload_debounce_ms"),
    "graceSeconds": ("--grace-seconds", "grace_seconds"),
    "readyUrl": ("--ready-url", "ready_url"),
    "readyLine": ("--ready-line", "ready_line"),
    "readyTimeoutSeconds": ("--ready-timeout", "ready_timeout"),
    "minReadySeconds": ("--min-ready-seconds", "min_ready_seconds"),
}
_FILE_KEYS = (*_OPTIONS, "rules")


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The hot-reload options of ``devstack sidecar``."""
    g = parser.add_argument_group("hot reload (see docs/reload.md)")
    g.add_argument(
        "--reload",
        choices=STRATEGIES,
        default=_env("DEVSTACK_RELOAD"),
        help="none | signal | exec | supervise (env DEVSTACK_RELOAD; default none)",
    )
    g.add_argument(
        "--command",
        default=_env("DEVSTACK_COMMAND"),
        metavar="CMD",
        help="supervise: the app command the sidecar runs and restarts, in the workspace "
        "(env DEVSTACK_COMMAND)",
    )
    g.add_argument(
        "--exec",
        dest="exec_command",
        default=_env("DEVSTACK_EXEC"),
        metavar="CMD",
        help="a command run after a change, before any restart (env DEVSTACK_EXEC)",
    )
    g.add_argument(
        "--signal",
        default=_env("DEVSTACK_SIGNAL"),
        metavar="NAME",
        help="signal: which signal to send, e.g. HUP, USR1 (env DEVSTACK_SIGNAL; default HUP)",
    )
    g.add_argument(
        "--pid-file",
        default=_env("DEVSTACK_PID_FILE"),
        metavar="PATH",
        help="signal: the target's pid file (env DEVSTACK_PID_FILE)",
    )
    g.add_argument(
        "--process-name",
        default=_env("DEVSTACK_PROCESS_NAME"),
        metavar="NAME",
        help="signal: the target's process or script name; needs shareProcessNamespace "
        "(env DEVSTACK_PROCESS_NAME)",
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
        help="YAML file with the options above and chained rules "
        "(env DEVSTACK_RELOAD_CONFIG); command-line options win",
    )
    g.add_argument(
        "--reload-debounce-ms",
        type=int,
        default=None,
        metavar="N",
        help=f"a burst of changes inside this window is one reload (default {DEFAULT_DEBOUNCE_MS})",
    )
    g.add_argument(
        "--grace-seconds",
        type=float,
        default=None,
        metavar="S",
        help="supervise: SIGTERM the app's process group, SIGKILL after this long "
        f"(default {DEFAULT_GRACE_SECONDS:g})",
    )
    g.add_argument(
        "--ready-url",
        default=_env("DEVSTACK_READY_URL"),
        metavar="URL",
        help="supervise: a restart has finished once this http:// URL answers "
        "(env DEVSTACK_READY_URL)",
    )
    g.add_argument(
        "--ready-line",
        default=_env("DEVSTACK_READY_LINE"),
        metavar="REGEX",
        help="supervise: a restart has finished once the app prints a line matching this "
        "(env DEVSTACK_READY_LINE)",
    )
    g.add_argument(
        "--ready-timeout",
        type=float,
        default=None,
        metavar="S",
        help=f"supervise: how long a restart may take to become ready "
        f"(default {DEFAULT_READY_TIMEOUT_SECONDS:g})",
    )
    g.add_argument(
        "--min-ready-seconds",
        type=float,
        default=None,
        metavar="S",
        help=f"supervise: how long a restarted app must stay up, once its probes "
        f"pass, to count as ready (default {DEFAULT_MIN_READY_SECONDS:g} without "
        "probes, 0 with them)",
    )


def _signal(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a signal name such as HUP or USR1")
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        try:
            return int(signal.Signals(int(value)))
        except ValueError as e:
            raise ConfigError(f"{where}: unknown signal {value!r}") from e
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a signal name such as HUP or USR1")
    name = value.strip().upper()
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
    if not parts or not parts[0]:
        raise ConfigError(f"{where}: empty command")
    return tuple(parts)


def _globs(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise ConfigError(f"{where}: expected a glob or a list of globs")
    return tuple(value)


def _rule(match: tuple[str, ...], steps: tuple[Step, ...], where: str) -> Rule:
    try:
        return Rule(match, steps)
    except Exception as e:  # pathspec raises several types for bad globs
        raise ConfigError(f"{where}: bad glob: {e}") from e


def _rules(raw: Any, where: str) -> tuple[Rule, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a list of rules")
    rules: list[Rule] = []
    for i, r in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{here}: expected a mapping with match and steps")
        unknown = set(r) - {"match", "steps"}
        if unknown:
            raise ConfigError(f"{here}: unknown key {sorted(unknown)[0]!r}")
        match = _globs(r.get("match"), f"{here}.match")
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
        rules.append(_rule(match, tuple(steps), f"{here}.match"))
    return tuple(rules)


def _number(value: Any, where: str, *, integer: bool, minimum: float) -> float:
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value < minimum:
        what = "a whole number" if integer else "a number"
        raise ConfigError(f"{where}: expected {what} >= {minimum:g}, got {value!r}")
    return float(value)


def _optional_str(values: Mapping[str, Any], key: str, where: str) -> str | None:
    v = values.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: expected a non-empty string")
    return v


def _build(values: Mapping[str, Any], where: Mapping[str, str]) -> ReloadConfig:
    """Validate merged option values (config-file keys) into a config.
    ``where`` names each value's origin for error messages."""

    def w(key: str) -> str:
        return where.get(key, key)

    strategy = values.get("strategy") or "none"
    if strategy not in STRATEGIES:
        raise ConfigError(f"{w('strategy')}: expected one of {', '.join(STRATEGIES)}")
    command = _command(values["command"], w("command")) if values.get("command") else ()
    exec_cmd = _command(values["exec"], w("exec")) if values.get("exec") else ()
    pid_file = _optional_str(values, "pidFile", w("pidFile"))
    process_name = _optional_str(values, "processName", w("processName"))
    sig = _signal(values["signal"], w("signal")) if values.get("signal") else int(signal.SIGHUP)
    if strategy == "supervise" and not command:
        raise ConfigError("--reload supervise needs --command (the app to run)")
    if strategy == "signal" and not (pid_file or process_name):
        raise ConfigError("--reload signal needs --pid-file or --process-name")
    if pid_file and process_name:
        raise ConfigError("--pid-file and --process-name: give one of them, not both")

    if "rules" in values:
        if values.get("reloadOn"):
            raise ConfigError(f"{w('reloadOn')}: give either --reload-on or rules, not both")
        if exec_cmd:
            raise ConfigError(f"{w('exec')}: with rules, put exec steps in the rules")
        rules = _rules(values["rules"], w("rules"))
    else:
        globs = _globs(values.get("reloadOn") or ["*"], w("reloadOn"))
        steps: list[Step] = []
        if exec_cmd:
            steps.append(Step("exec", exec_cmd))
        if strategy in ("signal", "supervise"):
            steps.append(RESTART)
        if strategy == "exec" and not exec_cmd:
            raise ConfigError("--reload exec needs --exec (the command to run)")
        rules = (_rule(globs, tuple(steps), w("reloadOn")),) if steps else ()

    debounce = _number(
        values.get("debounceMs", DEFAULT_DEBOUNCE_MS), w("debounceMs"), integer=True, minimum=0
    )
    grace = _number(
        values.get("graceSeconds", DEFAULT_GRACE_SECONDS),
        w("graceSeconds"),
        integer=False,
        minimum=0,
    )
    ready_timeout = _number(
        values.get("readyTimeoutSeconds", DEFAULT_READY_TIMEOUT_SECONDS),
        w("readyTimeoutSeconds"),
        integer=False,
        minimum=0.1,
    )
    ready_url = _optional_str(values, "readyUrl", w("readyUrl"))
    if ready_url is not None and not re.match(r"^http://[^/\s]+", ready_url):
        raise ConfigError(
            f"{w('readyUrl')}: expected an http:// URL such as http://127.0.0.1:8000/"
        )
    ready_line = _optional_str(values, "readyLine", w("readyLine"))
    if ready_line is not None:
        try:
            re.compile(ready_line)
        except re.error as e:
            raise ConfigError(f"{w('readyLine')}: not a regular expression: {e}") from e
    min_ready: float | None = None
    if values.get("minReadySeconds") is not None:
        min_ready = _number(
            values["minReadySeconds"], w("minReadySeconds"), integer=False, minimum=0
        )
        if strategy != "supervise":
            raise ConfigError(f"{w('minReadySeconds')}: only applies to --reload supervise")
    if (ready_url or ready_line) and strategy != "supervise":
        key = "readyUrl" if ready_url else "readyLine"
        raise ConfigError(f"{w(key)}: readiness probes only apply to --reload supervise")
    return ReloadConfig(
        strategy=strategy,
        command=command,
        signal=sig,
        pid_file=pid_file,
        process_name=process_name,
        rules=rules,
        debounce_ms=int(debounce),
        grace_seconds=grace,
        ready_url=ready_url,
        ready_line=ready_line,
        ready_timeout_seconds=ready_timeout,
        min_ready_seconds=min_ready,
    )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such reload config file") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the reload config: {e.strerror}") from e
    except yaml.YAMLError as e:
        first = str(e).replace("\n", " ")
        raise ConfigError(f"{path}: not valid YAML: {first}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top")
    unknown = sorted(str(k) for k in set(raw) - set(_FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_FILE_KEYS))})"
        )
    return dict(raw)


def load_config(path: Path) -> ReloadConfig:
    """The reload config file on its own, validated; errors name the field."""
    raw = _read_file(path)
    return _build(raw, {k: f"{path}: {k}" for k in _FILE_KEYS})


def config_from_args(args: argparse.Namespace) -> ReloadConfig:
    """The reload options, from the command line (or its env vars) over the
    config file given by ``--reload-config``."""
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    file = getattr(args, "reload_config", None)
    if file:
        values = _read_file(Path(file))
        where = {k: f"{file}: {k}" for k in _FILE_KEYS}
    for key, (flag, attr) in _OPTIONS.items():
        v = getattr(args, attr, None)
        if v is not None:
            values[key] = list(v) if isinstance(v, list) else v
            where[key] = flag
    return _build(values, where)


# ---------------------------------------------------------------- runtime


class Reloader(Protocol):
    async def start(self) -> None: ...

    def notify(self, paths: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


def _stream(name: str) -> BinaryIO | None:
    s = getattr(sys, name, None)
    b = getattr(s, "buffer", None)
    return b if b is not None else None


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


_LOG_NAMES = {
    "reload-started": "reload.started",
    "reload-finished": "reload.finished",
    "reload-failed": "reload.failed",
    "process-exited": "process.exited",
}


class ProcessReloader:
    """Runs reload plans one at a time, coalescing bursts of changes, and
    (supervise) owns the app process."""

    def __init__(self, config: ReloadConfig, *, workspace: Path, on_event: EventSink) -> None:
        self.config = config
        self.workspace = workspace
        self.on_event = on_event
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._child_tail = Tail()
        self._child_tasks: list[asyncio.Task[None]] = []
        self._ready_line: ReadyLine | None = None
        self._quiet: set[int] = set()  # pids whose exit is ours or already reported
        self._readying: int | None = None  # pid whose readiness a restart awaits
        self._reload_id = 0
        self._closing = False

    # --------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the worker and, under supervise, the app."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="devstack-reload")
        if self.config.strategy == "supervise" and self._child is None:
            problem = await self._spawn()
            if problem is not None:
                reason, message, code, tail = problem
                self._emit(ReloadEvent("reload-failed", message, (), code, reason, tail))

    def notify(self, paths: Sequence[str]) -> None:
        """Changed workspace-relative paths; returns at once."""
        if self._closing or not self.config.rules:
            return
        for p in paths:
            self._pending[p] = None
        self._wake.set()

    async def close(self) -> None:
        """Stop reloading; SIGTERM the app's process group, SIGKILL after the
        grace period. Leaves no child behind."""
        self._closing = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._stop_child()

    # --------------------------------------------------------- events

    def _emit(self, ev: ReloadEvent) -> None:
        fields: dict[str, Any] = {"reload_id": ev.reload_id, "paths": len(ev.paths)}
        if ev.kind in ("reload-failed", "process-exited"):
            log.warning(
                _LOG_NAMES[ev.kind],
                message=ev.message,
                reason=ev.reason,
                exit_code=ev.exit_code,
                **fields,
            )
        else:
            log.info(_LOG_NAMES[ev.kind], message=ev.message, duration_ms=ev.duration_ms, **fields)
        try:
            self.on_event(ev)
        except Exception:
            log.exception("reload.sink_failed", kind=ev.kind)

    # --------------------------------------------------------- the worker

    async def _work(self) -> None:
        debounce = self.config.debounce_ms / 1000
        while True:
            await self._wake.wait()
            self._wake.clear()
            while debounce > 0:  # wait until the burst has been quiet for `debounce`
                try:
                    await asyncio.wait_for(self._wake.wait(), debounce)
                except TimeoutError:
                    break
                self._wake.clear()
            paths = list(self._pending)
            self._pending.clear()
            p = plan(self.config, paths)
            if p.empty:
                continue
            self._reload_id += 1
            try:
                await self._run(p, self._reload_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the sidecar's own failure: report, keep serving
                log.exception("reload.crashed", reload_id=self._reload_id)
                self._emit(
                    ReloadEvent(
                        "reload-failed",
                        f"the sidecar failed during reload {self._reload_id}: {e}",
                        p.paths[:20],
                        reason="crashed",
                        reload_id=self._reload_id,
                    )
                )

    async def _run(self, p: ReloadPlan, rid: int) -> None:
        started = time.monotonic()
        shown = p.paths[:20]
        self._emit(
            ReloadEvent(
                "reload-started",
                f"reload {rid}: {len(p.paths)} changed path(s)",
                shown,
                reload_id=rid,
            )
        )
        output = Tail()  # what this reload's steps printed, for its events
        for cmd in p.execs:
            info = await self._exec(cmd, output)
            if info.code != 0:
                reason = "user-command-failed" if info.reason in ("exit", "") else info.reason
                self._emit(
                    ReloadEvent(
                        "reload-failed",
                        f"{shlex.join(cmd)}: {info.message}; the synced files are kept",
                        shown,
                        exit_code=info.code,
                        reason=reason,
                        output_tail=output.text(),
                        duration_ms=_ms(started),
                        reload_id=rid,
                    )
                )
                return
        if p.restart:
            problem = await self._restart()
            if problem is not None:
                reason, message, code, tail = problem
                output.feed(tail.encode())
                self._emit(
                    ReloadEvent(
                        "reload-failed",
                        message,
                        shown,
                        exit_code=code,
                        reason=reason,
                        output_tail=output.text(),
                        duration_ms=_ms(started),
                        reload_id=rid,
                    )
                )
                return
        if p.restart and self.config.strategy == "supervise":
            what = "restarted the app"
            if self.config.probed:
                what += " and it is ready"
            elif self.config.settle_seconds > 0:
                what += f" and it stayed up {self.config.settle_seconds:g} s"
            # What the new app printed so far (up to readiness, if probed).
            output.feed(self._child_tail.text().encode())
        elif p.restart:
            what = f"sent {signal.Signals(self.config.signal).name}"
        else:
            what = "ran the steps"
        self._emit(
            ReloadEvent(
                "reload-finished",
                f"reload {rid}: {what} in {_ms(started)} ms",
                shown,
                output_tail=output.text(),
                duration_ms=_ms(started),
                reload_id=rid,
            )
        )

    async def _exec(self, cmd: tuple[str, ...], output: Tail) -> ExitInfo:
        """Run one exec step in its own process group, feeding its output to
        ``output``; how it ended."""
        proc = await spawn(cmd, cwd=self.workspace)
        if isinstance(proc, ExitInfo):
            output.feed(f"{cmd[0]}: {proc.message}\n".encode())
            return proc
        try:
            await asyncio.gather(
                pump(proc.stdout, output, _stream("stdout")),
                pump(proc.stderr, output, _stream("stderr")),
            )
            code = await proc.wait()
        finally:
            # Nothing a one-shot step started outlives it (and cancelling
            # the reload kills the step).
            kill_group(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
        return describe(code)

    # --------------------------------------------------------- restart

    async def _restart(self) -> tuple[str, str, int, str] | None:
        """Restart (supervise) or signal the app: None, or (reason, message,
        exit code, output tail)."""
        if self.config.strategy == "signal":
            pid = find_pid(pid_file=self.config.pid_file, process_name=self.config.process_name)
            target = (
                f"pid file {self.config.pid_file}"
                if self.config.pid_file
                else f"process name {self.config.process_name!r}"
            )
            if pid is None:
                return ("signal-target-missing", f"no running process found by {target}", 0, "")
            try:
                os.kill(pid, self.config.signal)
            except OSError as e:
                return (
                    "signal-target-missing",
                    f"cannot signal pid {pid} ({target}): {e.strerror}",
                    0,
                    "",
                )
            return None
        await self._stop_child()
        return await self._spawn(restart=True)

    async def _spawn(self, *, restart: bool = False) -> tuple[str, str, int, str] | None:
        """Start the app and wait for its probes. After a restart, the app
        must also stay up ``settle_seconds``: one that exits at once crashed,
        and that is this reload's failure (the first start is not held up:
        a crash there is a ``process-exited`` event)."""
        self._child_tail = Tail()
        cfg = self.config
        self._ready_line = ReadyLine(re.compile(cfg.ready_line)) if cfg.ready_line else None
        child = await spawn(cfg.command, cwd=self.workspace)
        if isinstance(child, ExitInfo):
            return (child.reason, f"{cfg.command[0]}: {child.message}", child.code, "")
        self._child = child
        log.info("process.started", pid=child.pid, command=cfg.command[0])
        pumps = [
            asyncio.create_task(
                pump(child.stdout, self._child_tail, _stream("stdout"), on_line=self._ready_line)
            ),
            asyncio.create_task(
                pump(child.stderr, self._child_tail, _stream("stderr"), on_line=self._ready_line)
            ),
        ]
        self._child_tasks = [*pumps, asyncio.create_task(self._watch_child(child, pumps))]
        settle = cfg.settle_seconds if restart else 0.0
        if not cfg.probed and settle <= 0:
            return None
        self._readying = child.pid  # its exit is this reload's failure, not an event
        seen = Readiness()
        try:
            outcome = "ready"
            if cfg.probed:
                outcome = await wait_ready(
                    child,
                    url=cfg.ready_url,
                    line=self._ready_line,
                    timeout=cfg.ready_timeout_seconds,
                    seen=seen,
                )
            if outcome == "ready" and not await stays_up(child, settle):
                outcome = "exited"
            if outcome == "timeout" and child.returncode is not None:
                outcome = "exited"
            if outcome == "exited":
                self._quiet.add(child.pid)
        finally:
            self._readying = None
        if outcome == "ready":
            return None
        if outcome == "timeout":
            probes = []
            if cfg.ready_url:
                probes.append(seen.describe(cfg.ready_url))
            if self._ready_line is not None and not self._ready_line.seen.is_set():
                probes.append(f"no line matched {cfg.ready_line!r}")
            return (
                "timeout",
                f"the app did not become ready within {cfg.ready_timeout_seconds:g} s "
                f"({'; '.join(probes)}); it is still running",
                0,
                self._child_tail.text(),
            )
        # It exited before it was ready: report it once, as this reload's failure.
        await _drain(self._child_tasks[:2])
        info = describe(child.returncode or 0)
        return (
            _exit_reason(info.reason, info.code),
            f"the app exited {'before it was ready' if cfg.probed else 'right after it started'}"
            f" ({info.message}); "
            "it starts again on the next change",
            info.code,
            self._child_tail.text(),
        )

    async def _watch_child(
        self, child: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]
    ) -> None:
        code = await child.wait()
        await _drain(pumps)
        if (
            self._closing
            or child.pid in self._quiet
            or child.pid == self._readying
            or child is not self._child
        ):
            return
        info = describe(code)
        self._emit(
            ReloadEvent(
                "process-exited",
                f"the app exited on its own ({info.message}); it starts again on the next change",
                exit_code=info.code,
                reason=_exit_reason(info.reason, info.code),
                output_tail=self._child_tail.text(),
                reload_id=self._reload_id,
            )
        )
        # The process group may still hold children of the app.
        kill_group(child.pid, signal.SIGKILL)

    async def _stop_child(self) -> None:
        child = self._child
        if child is None:
            return
        self._quiet.add(child.pid)
        if child.returncode is None:
            kill_group(child.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), self.config.grace_seconds)
            except TimeoutError:
                kill_group(child.pid, signal.SIGKILL)
                await child.wait()
        # Reap anything the app left in its process group.
        kill_group(child.pid, signal.SIGKILL)
        for t in self._child_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 2)
        self._child_tasks = []
        self._child = None


async def _drain(pumps: Sequence[asyncio.Task[None]]) -> None:
    """Let the output pumps of an exited child catch its last lines."""
    if pumps:
        await asyncio.wait(pumps, timeout=1)


def _exit_reason(reason: str, code: int) -> str:
    if reason in ("killed", "command-not-found", "not-executable"):
        return reason
    return "exited" if code == 0 else "crashed"


def build_reloader(config: ReloadConfig, *, workspace: Path, on_event: EventSink) -> Reloader:
    """The reloader for this config (supervise starts the app in ``start``)."""
    return ProcessReloader(config, workspace=workspace, on_event=on_event)
