"""What `devstack connect` says when the sidecar refuses a path: the
sidecar's own reason and its fix, once per path, never "unresolved
conflict" (a real sidecar: it refuses a symlink whose target leads out of
the workspace, correctly)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sync import ConnectProcess, Sidecar, connect_once, wait_until


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Sidecar]]:
    src, ws = tmp_path / "src", tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    (src / "app.py").write_text("print('hi')\n")
    os.symlink("../../../etc/passwd", src / "escape")
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    sc = Sidecar(ws, token).start()
    yield src, sc
    sc.stop()


def refusal_lines(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("not synced: escape: ")]


def test_once_reports_the_sidecars_reason_and_fix_once(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    for _ in range(2):  # the second run finds the path held by nobody: the same words
        r = connect_once(src, sc)
        assert r.returncode == 3, r.stderr
        assert "unresolved conflict" not in r.stderr
        [line] = refusal_lines(r.stderr.splitlines())
        assert "symlink target leaves the workspace" in line, line
        assert "fix: point the link inside the synced folder" in line, line
        assert "refused: 1" in r.stderr and "conflicts: 0" in r.stderr
    assert (sc.workspace / "app.py").read_text() == "print('hi')\n"
    assert not os.path.lexists(sc.workspace / "escape")
    # Fixed on the laptop, it syncs.
    os.remove(src / "escape")
    os.symlink("app.py", src / "escape")
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert os.readlink(sc.workspace / "escape") == "app.py"


def test_watching_reports_a_refusal_once_not_every_round(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    proc = ConnectProcess(src, sc.address, sc.token_file, "--rescan-interval", "0.2")
    try:
        wait_until(lambda: (sc.workspace / "app.py").exists(), 60, "the initial sync")

        def rounds() -> int:
            return sum(1 for ln in proc.lines if ln.startswith("connected ·"))

        wait_until(lambda: rounds() >= 6, 60, "six rounds")
        [line] = refusal_lines(proc.lines)
        assert "symlink target leaves the workspace" in line and "fix: " in line
        assert "unresolved conflict" not in proc.stderr
        status = [ln for ln in proc.lines if ln.startswith("connected ·")][-1]
        assert status.endswith("conflicts: 0 · refused: 1"), status
        # Another bad target is another refusal: told once more.
        os.remove(src / "escape")
        os.symlink("/etc/hosts", src / "escape")
        wait_until(lambda: len(refusal_lines(proc.lines)) == 2, 30, "the new refusal")
        assert "absolute" in refusal_lines(proc.lines)[-1]
        n = rounds()
        wait_until(lambda: rounds() >= n + 4, 60, "four more rounds")
        assert len(refusal_lines(proc.lines)) == 2
    finally:
        assert proc.stop(signal.SIGINT) == 0, proc.stderr
    assert "Traceback" not in proc.stderr
