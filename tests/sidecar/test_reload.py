"""Reload strategies with real child processes: small Python apps written
by each test into a temporary workspace."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from devstack.sidecar import reload as rl
from devstack.sidecar.reload import RESTART, ReloadConfig, ReloadEvent, Rule, Step
from tests.support.net import free_port

PY = sys.executable


def cfg(**kw: object) -> ReloadConfig:
    return ReloadConfig(**kw)  # type: ignore[arg-type]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    rl.add_arguments(p)
    return p.parse_args(argv)


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


async def test_reload_finished_carries_the_tail_of_the_output(ws: Path) -> None:
    rec = Recorder()
    steps = (
        Step("exec", (PY, "-c", "print('compiling assets')")),
        Step("exec", (PY, "-c", "import sys; print('2 warnings', file=sys.stderr)")),
    )
    r = rl.build_reloader(
        cfg(strategy="exec", rules=(Rule(("*",), steps),), debounce_ms=10),
        workspace=ws,
        on_event=rec,
    )
    await r.start()
    r.notify(["style.css"])
    ev = await rec.wait_for("reload-finished")
    assert ev.output_tail.splitlines() == ["compiling assets", "2 warnings"]
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


async def test_none_strategy_does_nothing(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVSTACK_RELOAD", raising=False)
    rec = Recorder()
    r = rl.build_reloader(
        rl.config_from_args(parse(["--reload-debounce-ms", "0"])), workspace=ws, on_event=rec
    )
    await r.start()
    r.notify(["app.py"])
    await asyncio.sleep(0.3)
    assert rec.events == []
    assert not (ws / "pid").exists()  # nothing was started
    await r.close()


async def test_exec_step_that_is_not_a_program_or_is_killed(ws: Path) -> None:
    script = ws / "no-shebang.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    rec = Recorder()
    steps = (
        Rule(("a",), (Step("exec", ("./no-shebang.sh",)),)),
        Rule(("b",), (Step("exec", (PY, "-c", "import os; os.kill(os.getpid(), 9)")),)),
    )
    r = rl.build_reloader(
        cfg(strategy="exec", rules=steps, debounce_ms=0), workspace=ws, on_event=rec
    )
    await r.start()
    r.notify(["a"])
    ev = await rec.wait_for("reload-failed")
    assert (ev.exit_code, ev.reason) == (126, "not-executable")
    r.notify(["b"])
    ev = await rec.wait_for("reload-failed", 2)
    assert (ev.exit_code, ev.reason) == (137, "killed")
    assert "SIGKILL" in ev.message
    await r.close()


async def test_a_broken_event_sink_does_not_stop_reloads(ws: Path) -> None:
    seen: list[ReloadEvent] = []

    def sink(ev: ReloadEvent) -> None:
        seen.append(ev)
        raise RuntimeError("the laptop went away")

    r = rl.build_reloader(
        cfg(strategy="exec", rules=(Rule(("*",), (Step("exec", (PY, "-c", "pass")),)),)),
        workspace=ws,
        on_event=sink,
    )
    await r.start()
    for n in (2, 4):
        r.notify(["x"])
        deadline = time.monotonic() + 20
        while len(seen) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert [e.kind for e in seen] == ["reload-started", "reload-finished"] * 2
    await r.close()


async def test_app_output_passes_through_and_is_kept(
    ws: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / "talk.py").write_text(
        "import sys\n"
        "print('to stdout', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "sys.exit(4)\n"
    )
    rec = Recorder()
    r = rl.build_reloader(
        cfg(strategy="supervise", command=(PY, "talk.py"), rules=(Rule(("*",), (RESTART,)),)),
        workspace=ws,
        on_event=rec,
    )
    await r.start()
    ev = await rec.wait_for("process-exited")
    assert (ev.reason, ev.exit_code) == ("crashed", 4)
    assert "to stdout" in ev.output_tail and "to stderr" in ev.output_tail
    out, err = capfd.readouterr()
    assert "to stdout" in out and "to stderr" not in out
    assert "to stderr" in err
    await r.close()


async def test_restart_kills_an_app_that_ignores_sigterm(ws: Path) -> None:
    (ws / "stubborn.py").write_text(
        "import os, signal, time, pathlib\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pathlib.Path('pid').write_text(str(os.getpid()))\n"
        "while True: time.sleep(0.1)\n"
    )
    rec = Recorder()
    r = rl.build_reloader(
        cfg(
            strategy="supervise",
            command=(PY, "stubborn.py"),
            rules=(Rule(("*.py",), (RESTART,)),),
            debounce_ms=0,
            grace_seconds=0.3,
        ),
        workspace=ws,
        on_event=rec,
    )
    await r.start()
    first = int(await wait_file(ws / "pid"))
    r.notify(["stubborn.py"])
    await rec.wait_for("reload-finished")
    assert not alive(first)
    assert "process-exited" not in rec.kinds()  # our own restart is not a crash
    second = int(await wait_file(ws / "pid"))
    await r.close()
    assert not alive(second)


# ------------------------------------------------------------- readiness

SERVER = """
import http.server, os, pathlib, sys, time
time.sleep(float(os.environ.get("APP_DELAY", "0.3")))
if os.environ.get("APP_MODE") == "crash":
    print("cannot bind: address in use", flush=True)
    sys.exit(1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = pathlib.Path("message.txt").read_bytes()
        status = pathlib.Path("status.txt")
        self.send_response(int(status.read_text()) if status.exists() else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("Listening on", s.server_port, flush=True)
s.serve_forever()
"""


def get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@pytest.fixture
def server_ws(ws: Path) -> Path:
    (ws / "server.py").write_text(SERVER)
    (ws / "message.txt").write_text("v1")
    return ws


@pytest.mark.parametrize("probe", ["url", "line"])
async def test_reload_finishes_once_the_new_app_is_ready(server_ws: Path, probe: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    ready = ["--ready-url", url] if probe == "url" else ["--ready-line", r"^Listening on \d+"]
    c = rl.config_from_args(
        parse(
            [
                "--reload",
                "supervise",
                "--command",
                f"{PY} server.py {port}",
                "--reload-on",
                "*.txt",
                "--reload-debounce-ms",
                "10",
                *ready,
            ]
        )
    )
    rec = Recorder()
    r = rl.build_reloader(c, workspace=server_ws, on_event=rec)
    await r.start()  # returns once the first process is ready
    assert await asyncio.to_thread(get, url) == "v1"
    for version in ("v2", "v3"):
        (server_ws / "message.txt").write_text(version)
        r.notify(["message.txt"])
        ev = await rec.wait_for("reload-finished", int(version[1]) - 1)
        assert "ready" in ev.message
        if probe == "line":  # the finished event shows what the new app printed
            assert f"Listening on {port}" in ev.output_tail
        # The old process is gone and the new one has not bound yet for
        # ~0.3 s after it starts: an answer now proves we waited for it.
        assert await asyncio.to_thread(get, url) == version
    await r.close()


async def test_app_dying_before_it_is_ready_fails_the_reload_once(
    server_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    rec = Recorder()
    r = rl.build_reloader(
        cfg(
            strategy="supervise",
            command=(PY, "server.py", str(port)),
            rules=(Rule(("*",), (RESTART,)),),
            debounce_ms=0,
            ready_url=f"http://127.0.0.1:{port}/",
        ),
        workspace=server_ws,
        on_event=rec,
    )
    await r.start()
    monkeypatch.setenv("APP_MODE", "crash")
    r.notify(["server.py"])
    ev = await rec.wait_for("reload-failed")
    assert (ev.reason, ev.exit_code) == ("crashed", 1)
    assert "cannot bind" in ev.output_tail
    await asyncio.sleep(0.3)
    assert rec.kinds() == ["reload-started", "reload-failed"]
    monkeypatch.setenv("APP_MODE", "")
    r.notify(["server.py"])  # the next change starts it again
    await rec.wait_for("reload-finished")
    await r.close()


async def test_app_that_never_becomes_ready_times_out(server_ws: Path) -> None:
    port = free_port()
    rec = Recorder()
    r = rl.build_reloader(
        cfg(
            strategy="supervise",
            command=(PY, "server.py", str(port)),
            rules=(Rule(("*",), (RESTART,)),),
            debounce_ms=0,
            ready_line="this line never comes",
            ready_timeout_seconds=1.0,
        ),
        workspace=server_ws,
        on_event=rec,
    )
    await r.start()
    ev = await rec.wait_for("reload-failed")
    assert ev.reason == "timeout"
    assert "Listening on" in ev.output_tail
    await r.close()


async def test_a_crash_right_after_a_restart_fails_that_reload(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No probes: the restarted app must stay up ``minReadySeconds`` (1 s by
    default). One that exits at once is this reload's failure, reported as
    crashed, never as a restart that finished in a few milliseconds."""
    rec = Recorder()
    r = supervise(ws, rec)
    await r.start()
    await wait_file(ws / "pid")
    monkeypatch.setenv("APP_MODE", "crash")
    r.notify(["app.py"])
    ev = await rec.wait_for("reload-failed")
    assert (ev.reason, ev.exit_code) == ("crashed", 3)
    assert "right after it started" in ev.message
    assert "boom: something broke" in ev.output_tail
    await asyncio.sleep(0.3)
    assert rec.kinds() == ["reload-started", "reload-failed"]
    # one that stays up finishes, and says how long it was watched
    monkeypatch.setenv("APP_MODE", "")
    r.notify(["app.py"])
    ok = await rec.wait_for("reload-finished")
    assert "stayed up 1 s" in ok.message
    await r.close()


@pytest.mark.parametrize(("status", "ready"), [(503, False), (500, False), (404, False),
                                               (302, True), (204, True)])  # fmt: skip
async def test_the_ready_url_counts_only_200_to_399(
    server_ws: Path, status: int, ready: bool
) -> None:
    """As the kubelet's httpGet probe: 200-399 is ready; any other answer is
    not, and the probe keeps asking until the timeout, whose message says
    what the URL last answered."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    (server_ws / "status.txt").write_text(str(status))
    rec = Recorder()
    r = rl.build_reloader(
        cfg(
            strategy="supervise",
            command=(PY, "server.py", str(port)),
            rules=(Rule(("*.txt",), (RESTART,)),),
            debounce_ms=0,
            ready_url=url,
            ready_timeout_seconds=2.0,
        ),
        workspace=server_ws,
        on_event=rec,
    )
    await r.start()
    (server_ws / "message.txt").write_text("v2")
    r.notify(["message.txt"])
    if ready:
        ev = await rec.wait_for("reload-finished")
        assert "ready" in ev.message
    else:
        ev = await rec.wait_for("reload-failed", 2)  # the first start timed out too
        assert ev.reason == "timeout"
        assert f"{url} last answered {status}" in ev.message
        assert "reload-finished" not in rec.kinds()
        # the app is put right: the next change is ready
        (server_ws / "status.txt").write_text("200")
        r.notify(["status.txt"])
        assert "ready" in (await rec.wait_for("reload-finished")).message
    await r.close()


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
        (b"HTTP/1.1 302\r\n", 302),
        (b"HTTP/2 204\r\n", 204),
        (b"SSH-2.0-OpenSSH\r\n", None),
        (b"HTTP/1.1 20 OK\r\n", None),
        (b"HTTP/1.1 2000 OK\r\n", None),
        (b"", None),
    ],
)
def test_status_lines(line: bytes, status: int | None) -> None:
    from devstack.sidecar.process import parse_status_line

    assert parse_status_line(line) == status
