"""A person edits code with `devstack connect` running against a real
`devstack sidecar --reload supervise`: each save restarts the app (not the
pod), and what the reload did comes back to the laptop: started and
finished, a failing build step with its exit code and output, an app that
crashes. `devstack status` shows the last reload."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sync import ConnectProcess, Sidecar, devstack_cmd, wait_until

NO_RESCAN = ("--rescan-interval", "100000")

APP = """import os, time
VERSION = {version!r}
with open({out!r}, "a") as f:
    f.write(f"{{VERSION}} {{os.getpid()}}\\n")
print("app", VERSION, "up", flush=True)
time.sleep(3600)
"""

CRASHING_APP = """print("about to crash: bad config", flush=True)
raise SystemExit(3)
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, Sidecar, ConnectProcess, Path]]:
    src, ws = tmp_path / "src", tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    out = tmp_path / "app.out"
    token = tmp_path / "token"
    token.write_text("tok-r\n")
    config = tmp_path / "reload.yaml"
    config.write_text(
        f"""strategy: supervise
command: [{json.dumps(sys.executable)}, app.py]
debounceMs: 20
rules:
  - match: ["build.sh"]
    steps: [{{exec: "sh build.sh"}}, restart]
  - match: ["*.py"]
    steps: [restart]
"""
    )
    (src / "app.py").write_text(APP.format(version="v1", out=str(out)))
    (src / "build.sh").write_text("echo building\n")
    sc = Sidecar(ws, token, "--reload", "supervise", "--reload-config", str(config)).start()
    proc = ConnectProcess(src, sc.address, token, *NO_RESCAN)
    try:
        yield src, sc, proc, out
    finally:
        if proc.proc.poll() is None:
            proc.stop()
        sc.stop()


def started_for(proc: ConnectProcess, path: str, after: int) -> dict[str, object]:
    """The first reload-started event after ``after`` whose paths include ``path``."""
    found: list[dict[str, object]] = []

    def seen() -> bool:
        evs = proc.events("connect.event", kind="reload-started")[after:]
        found[:] = [e for e in evs if path in e.get("paths", [])]  # type: ignore[operator]
        return bool(found)

    wait_until(seen, 60, f"a reload of {path} to reach connect")
    return found[0]


def outcome(proc: ConnectProcess, reload_id: object, *kinds: str) -> dict[str, object]:
    """The event of one of ``kinds`` for reload ``reload_id``."""
    got: list[dict[str, object]] = []

    def seen() -> bool:
        got[:] = [
            e for e in proc.events("connect.event", reload_id=reload_id) if e.get("kind") in kinds
        ]
        return bool(got)

    wait_until(seen, 60, f"reload {reload_id} to end ({'/'.join(kinds)})")
    return got[0]


def status_json(sc: Sidecar) -> dict[str, object]:
    r = subprocess.run(
        devstack_cmd("status", "--to", sc.address, "--token-file", str(sc.token_file), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def test_a_save_restarts_the_app_and_connect_hears_about_it(
    stack: tuple[Path, Sidecar, ConnectProcess, Path],
) -> None:
    src, sc, proc, out = stack
    wait_until(lambda: out.exists() and "v1" in out.read_text(), 60, "the app to start")

    # A save: the app restarts as a new process, and connect is told.
    before = len(proc.events("connect.event", kind="reload-started"))
    (src / "app.py").write_text(APP.format(version="v2", out=str(out)))
    rid = started_for(proc, "app.py", before)["reload_id"]
    done = outcome(proc, rid, "reload-finished", "reload-failed")
    assert done["kind"] == "reload-finished", done
    wait_until(lambda: "v2" in out.read_text(), 60, "the new app to run")
    pids = [line.split()[1] for line in out.read_text().splitlines()]
    assert pids[-1] != pids[0]  # another process, same sidecar
    assert sc.proc is not None and sc.proc.poll() is None
    assert any(line.startswith("reload-finished: ") for line in proc.lines)
    last = status_json(sc)["last_reload"]
    assert isinstance(last, dict)
    assert last["kind"] == "reload-finished" and last["reload_id"] == rid

    # A failing build step: its exit code and output come back; no restart.
    before = len(proc.events("connect.event", kind="reload-started"))
    (src / "build.sh").write_text("echo compiling\necho 'error: missing ;' >&2\nexit 5\n")
    rid = started_for(proc, "build.sh", before)["reload_id"]
    failed = outcome(proc, rid, "reload-failed", "reload-finished")
    assert failed["kind"] == "reload-failed", failed
    assert failed["exit_code"] == 5 and failed["reason"] == "user-command-failed"
    assert "error: missing ;" in str(failed["output_tail"])
    wait_until(lambda: any("error: missing ;" in line for line in proc.lines), 30, "the tail")
    assert status_json(sc)["last_reload"]["kind"] == "reload-failed"  # type: ignore[index]

    # An app that crashes right after the restart: that reload failed, as
    # crashed, with its output (not a restart that finished in milliseconds).
    before = len(proc.events("connect.event", kind="reload-started"))
    (src / "app.py").write_text(CRASHING_APP)
    rid = started_for(proc, "app.py", before)["reload_id"]
    exited = outcome(proc, rid, "reload-failed", "reload-finished")
    assert exited["kind"] == "reload-failed" and exited["exit_code"] == 3, exited
    assert exited["reason"] == "crashed", exited
    assert "about to crash: bad config" in str(exited["output_tail"])
    wait_until(lambda: any("right after it started" in line for line in proc.lines), 30, "")
    assert proc.proc.poll() is None  # connect keeps going


def test_a_first_sync_that_only_adopts_identical_files_restarts_nothing(tmp_path: Path) -> None:
    """A workspace seeded with the laptop's own files (as the local stack
    seeds a copy's): the first sync only adopts them, which changes nothing
    on disk, so the app is not restarted. A real edit still is."""
    src, ws = tmp_path / "src", tmp_path / "ws"
    src.mkdir()
    out = tmp_path / "app.out"
    token = tmp_path / "token"
    token.write_text("tok-a\n")
    (src / "app.py").write_text(APP.format(version="v1", out=str(out)))
    (src / "lib").mkdir()
    (src / "lib" / "util.py").write_text("X = 1\n")
    subprocess.run(["cp", "-a", str(src), str(ws)], check=True)
    sc = Sidecar(
        ws, token, "--reload", "supervise", "--command", f"{sys.executable} app.py",
        "--reload-on", "*.py", "--reload-debounce-ms", "20",
    ).start()  # fmt: skip
    proc = ConnectProcess(src, sc.address, token, *NO_RESCAN)
    try:
        wait_until(lambda: out.exists() and out.read_text().count("v1") == 1, 60, "the app")
        wait_until(lambda: bool(sc.events("batch.applied")), 60, "the first sync")
        (applied,) = sc.events("batch.applied")
        assert applied["applied"] >= 2  # app.py and lib/util.py, adopted
        # a restart would have been debounced for 20 ms: give it far longer
        wait_until(lambda: proc.proc.poll() is None and len(proc.lines) > 0, 30, "connect")
        subprocess.run(["sleep", "1.5"], check=True)
        assert sc.events("reload.started") == []
        assert out.read_text().count("v1") == 1  # started once, never again

        (src / "app.py").write_text(APP.format(version="v2", out=str(out)))
        wait_until(lambda: "v2" in out.read_text(), 60, "a real edit to restart the app")
    finally:
        if proc.proc.poll() is None:
            proc.stop()
        sc.stop()
