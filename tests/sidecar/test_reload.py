"""Reload strategies with real child processes."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devstack.core.errors import ConfigError
from devstack.sidecar import reload as rl
from devstack.sidecar.reload import RESTART, ReloadConfig, ReloadEvent, Rule, Step, plan

PY = sys.executable


def cfg(**kw: object) -> ReloadConfig:
    return ReloadConfig(**kw)  # type: ignore[arg-type]


CHAIN = (
    Rule(
        ("requirements.txt",), (Step("exec", ("pip", "install", "-r", "requirements.txt")), RESTART)
    ),
    Rule(("*.py",), (RESTART,)),
    Rule(("assets/**",), (Step("exec", ("npm", "run", "build")),)),
)

PLAN_CASES = {
    "requirements.txt installs then restarts": (
        ["requirements.txt"],
        ((("pip", "install", "-r", "requirements.txt"),), True),
    ),
    "a .py change only restarts": (["app/views.py"], ((), True)),
    "assets rebuild without restart": (["assets/site.css"], ((("npm", "run", "build"),), False)),
    "steps are not repeated within one reload": (
        ["assets/a.css", "assets/b.css", "x.py"],
        ((("npm", "run", "build"),), True),
    ),
    "unmatched paths do nothing": (["README.md"], ((), False)),
}


@pytest.mark.parametrize("name", PLAN_CASES)
def test_plan(name: str) -> None:
    paths, (execs, restart) = PLAN_CASES[name]
    p = plan(cfg(strategy="supervise", command=("x",), rules=CHAIN), paths)
    assert (p.execs, p.restart) == (execs, restart)


def test_plan_never_restarts_for_none_or_exec() -> None:
    assert plan(cfg(strategy="exec", rules=CHAIN), ["a.py"]).restart is False
    assert plan(cfg(strategy="none", rules=CHAIN), ["a.py"]).restart is False


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    rl.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reload", "supervise"], "needs --command"),
        (["--reload", "signal"], "needs --pid-file or --process-name"),
        (["--reload", "exec"], "needs --exec"),
        (["--reload", "signal", "--pid-file", "p", "--signal", "NOPE"], "unknown signal"),
    ],
)
def test_bad_options_are_one_clear_error(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rl.config_from_args(parse(argv))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("rules: {}", "rules: expected a list"),
        ("rules: [{match: 3}]", r"rules\[0\]\.match"),
        ("rules: [{match: '*.py', steps: [reboot]}]", r"rules\[0\]\.steps\[0\]"),
        ("rules: [{match: '*.py', steps: [{exec: ''}]}]", r"rules\[0\]\.steps\[0\]\.exec: empty"),
        ("strategy: supervise\ncommand: app\nbogus: 1", "unknown key 'bogus'"),
        ("{{{", "not valid YAML"),
    ],
)
def test_bad_config_file_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "reload.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=field):
        rl.config_from_args(parse(["--reload", "none", "--reload-config", str(f)]))


def test_config_file_rules_and_cli_precedence(tmp_path: Path) -> None:
    f = tmp_path / "reload.yaml"
    f.write_text(
        textwrap.dedent(
            """
            strategy: supervise
            command: python app.py
            debounceMs: 20
            rules:
              - match: ["requirements.txt"]
                steps: [{exec: "pip install -r requirements.txt"}, restart]
              - match: ["**/*.py"]
                steps: [restart]
            """
        )
    )
    c = rl.config_from_args(parse(["--reload-config", str(f), "--command", "python other.py"]))
    assert c.strategy == "supervise"
    assert c.command == ("python", "other.py")
    assert c.debounce_ms == 20
    p = plan(c, ["requirements.txt"])
    assert p.execs == (("pip", "install", "-r", "requirements.txt"),) and p.restart


# ------------------------------------------------------------- runtime


class Recorder:
    def __init__(self) -> None:
        self.events: list[ReloadEvent] = []

    def __call__(self, ev: ReloadEvent) -> None:
        self.events.append(ev)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 30) -> ReloadEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if e.kind == kind]
            if len(found) >= count:
                return found[count - 1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {count}x {kind} in {self.kinds()}")


APP = """
import os, signal, sys, time, pathlib
ws = pathlib.Path(".")
n = int((ws / "starts").read_text()) if (ws / "starts").exists() else 0
(ws / "starts").write_text(str(n + 1))
(ws / "pid").write_text(str(os.getpid()))
print("app started", n + 1, flush=True)
mode = os.environ.get("APP_MODE", "")
if mode == "crash":
    print("boom: something broke", flush=True)
    sys.exit(3)
if mode == "selfkill":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "grandchild":
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (ws / "grandchild").write_text(str(child.pid))
while True:
    time.sleep(0.1)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def wait_file(p: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.exists() and p.read_text():
            return p.read_text()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{p} never appeared")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    w.mkdir()
    (w / "app.py").write_text(APP)
    return w


def supervise(ws: Path, rec: Recorder, **kw: object) -> rl.Reloader:
    c = cfg(
        strategy="supervise",
        command=(PY, "app.py"),
        rules=(Rule(("*.py",), (RESTART,)), *kw.pop("rules", ())),  # type: ignore[misc]
        debounce_ms=50,
        grace_seconds=2.0,
        **kw,
    )
    return rl.build_reloader(c, workspace=ws, on_event=rec)


async def test_supervise_restarts_the_process_not_the_pod(ws: Path) -> None:
    rec = Recorder()
    r = supervise(ws, rec)
    await r.start()
    first = int(await wait_file(ws / "pid"))
    r.notify(["app.py"])
    ev = await rec.wait_for("reload-finished")
    assert "restarted" in ev.message
    second = int(await wait_file(ws / "pid"))
    while second == first:
        await asyncio.sleep(0.02)
        second = int((ws / "pid").read_text())
    assert not alive(first)
    assert alive(second)
    await r.close()
    assert not alive(second)


async def test_a_burst_is_one_reload_and_changes_during_a_reload_queue_one_more(ws: Path) -> None:
    rec = Recorder()
    slow = Rule(("slow.txt",), (Step("exec", (PY, "-c", "import time; time.sleep(0.6)")), RESTART))
    r = supervise(ws, rec, rules=(slow,))
    await r.start()
    await wait_file(ws / "starts")
    for i in range(30):
        r.notify([f"m{i}.py"])
    await rec.wait_for("reload-finished")
    await asyncio.sleep(0.3)
    assert rec.kinds().count("reload-started") == 1
    assert (ws / "starts").read_text() == "2"
    r.notify(["slow.txt"])
    await rec.wait_for("reload-started", 2)
    r.notify(["x.py"])  # arrives while the slow step runs
    r.notify(["y.py"])
    await rec.wait_for("reload-finished", 3)
    await asyncio.sleep(0.4)
    assert rec.kinds().count("reload-started") == 3
    third = [e for e in rec.events if e.kind == "reload-started"][2]
    assert set(third.paths) == {"x.py", "y.py"}
    await r.close()


async def test_failing_step_is_reported_and_stops_the_chain(ws: Path) -> None:
    rec = Recorder()
    failing = Rule(
        ("requirements.txt",),
        (
            Step(
                "exec",
                (PY, "-c", "print('installing...'); print('ERROR: no such package'); exit(3)"),
            ),
            RESTART,
        ),
    )
    r = supervise(ws, rec, rules=(failing,))
    await r.start()
    pid = await wait_file(ws / "pid")
    r.notify(["requirements.txt"])
    ev = await rec.wait_for("reload-failed")
    assert (ev.reason, ev.exit_code) == ("user-command-failed", 3)
    assert "ERROR: no such package" in ev.output_tail
    assert "kept" in ev.message
    assert (ws / "pid").read_text() == pid  # no restart after a failed step
    await r.close()


@pytest.mark.parametrize(
    ("argv", "code", "reason"),
    [
        (("no-such-command-devstack",), 127, "command-not-found"),
        (("./not-executable.sh",), 126, "not-executable"),
    ],
)
async def test_unrunnable_commands_have_readable_reasons(
    ws: Path, argv: tuple[str, ...], code: int, reason: str
) -> None:
    (ws / "not-executable.sh").write_text("#!/bin/sh\necho hi\n")
    rec = Recorder()
    r = rl.build_reloader(
        cfg(strategy="exec", rules=(Rule(("*",), (Step("exec", argv),)),), debounce_ms=10),
        workspace=ws,
        on_event=rec,
    )
    await r.start()
    r.notify(["a"])
    ev = await rec.wait_for("reload-failed")
    assert (ev.exit_code, ev.reason) == (code, reason)
    await r.close()


async def test_exec_strategy_runs_the_command_in_the_workspace(ws: Path) -> None:
    rec = Recorder()
    r = rl.build_reloader(
        rl.config_from_args(
            parse(
                [
                    "--reload",
                    "exec",
                    "--exec",
                    f"{PY} -c \"open('built','w').write('ok')\"",
                    "--reload-debounce-ms",
                    "10",
                ]
            )
        ),
        workspace=ws,
        on_event=rec,
    )
    await r.start()
    r.notify(["style.css"])
    await rec.wait_for("reload-finished")
    assert (ws / "built").read_text() == "ok"
    await r.close()


async def test_crash_is_reported_then_restarted_on_next_change(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_MODE", "crash")
    rec = Recorder()
    r = supervise(ws, rec)
    await r.start()
    ev = await rec.wait_for("process-exited")
    assert (ev.reason, ev.exit_code) == ("crashed", 3)
    assert "boom: something broke" in ev.output_tail
    monkeypatch.setenv("APP_MODE", "")
    r.notify(["app.py"])
    await rec.wait_for("reload-finished")
    deadline = time.monotonic() + 20
    while (ws / "starts").read_text() != "2" and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    pid = int((ws / "pid").read_text())
    await asyncio.sleep(0.2)
    assert alive(pid)
    assert "process-exited" not in rec.kinds()[1:]
    await r.close()


async def test_sigkill_is_reported_as_killed(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_MODE", "selfkill")
    rec = Recorder()
    r = supervise(ws, rec)
    await r.start()
    ev = await rec.wait_for("process-exited")
    assert (ev.reason, ev.exit_code) == ("killed", 137)
    assert "SIGKILL" in ev.message
    await r.close()


async def test_close_leaves_no_process_behind(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_MODE", "grandchild")
    rec = Recorder()
    r = supervise(ws, rec)
    await r.start()
    app = int(await wait_file(ws / "pid"))
    grandchild = int(await wait_file(ws / "grandchild"))
    await r.close()
    deadline = time.monotonic() + 10
    while (alive(app) or alive(grandchild)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not alive(app) and not alive(grandchild)


TARGET = """
import os, signal, time, pathlib, sys
out = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *a: out.write_text(out.read_text() + "HUP\\n"))
signal.signal(signal.SIGUSR1, lambda *a: out.write_text(out.read_text() + "USR1\\n"))
out.write_text("")
pathlib.Path(sys.argv[2]).write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("by", ["pid-file", "process-name"])
async def test_signal_strategy(tmp_path: Path, ws: Path, by: str) -> None:
    name = f"devstack_target_{os.getpid()}_{by.replace('-', '_')}.py"
    script = tmp_path / name
    script.write_text(TARGET)
    out, pidfile = tmp_path / "signals", tmp_path / "target.pid"
    import subprocess

    proc = subprocess.Popen([PY, str(script), str(out), str(pidfile)])
    try:
        await wait_file(pidfile)
        target = ["--pid-file", str(pidfile)] if by == "pid-file" else ["--process-name", name]
        c = rl.config_from_args(
            parse(["--reload", "signal", *target, "--signal", "USR1", "--reload-debounce-ms", "10"])
        )
        rec = Recorder()
        r = rl.build_reloader(c, workspace=ws, on_event=rec)
        await r.start()
        r.notify(["app.py"])
        await rec.wait_for("reload-finished")
        deadline = time.monotonic() + 10
        while "USR1" not in out.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert out.read_text() == "USR1\n"
        await r.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


async def test_signal_target_missing(ws: Path, tmp_path: Path) -> None:
    c = cfg(
        strategy="signal",
        pid_file=str(tmp_path / "nope.pid"),
        rules=(Rule(("*",), (RESTART,)),),
        debounce_ms=10,
    )
    rec = Recorder()
    r = rl.build_reloader(c, workspace=ws, on_event=rec)
    await r.start()
    r.notify(["a.py"])
    ev = await rec.wait_for("reload-failed")
    assert ev.reason == "signal-target-missing"
    await r.close()
