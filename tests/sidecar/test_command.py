"""``devstack sidecar`` refuses, at startup and in one line, options it
could not honour."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.sync import devstack_cmd

PR_CAPBSET_DROP = 24
CAP_CHOWN = 0


def _without_cap_chown() -> None:
    """In the child before exec: root, but without the right to chown."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_CHOWN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_CHOWN)")


def _sidecar_cmd(tmp_path: Path, *args: str) -> list[str]:
    """``devstack sidecar`` on ``tmp_path``'s ``ws`` and ``token``, with ``args``."""
    return devstack_cmd(
        "sidecar",
        "--listen",
        "127.0.0.1:0",
        "--workspace",
        str(tmp_path / "ws"),
        "--token-file",
        str(tmp_path / "token"),
        *args,
    )


def test_owner_that_may_not_be_chowned_to_fails_at_startup(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "token").write_text("owner-token")
    # As root, drop CAP_CHOWN (what a non-root image has); otherwise we may
    # not give files to root anyway.
    root = os.geteuid() == 0
    owner = "1234:2345" if root else "0:0"
    cmd = _sidecar_cmd(tmp_path, "--owner", owner)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_without_cap_chown if root else None,
    )
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the sidecar started although it cannot chown to {owner}") from None
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"--owner {owner}" in lines[0] and "CAP_CHOWN" in lines[0]
    assert [p.name for p in ws.iterdir()] in ([], [".devstack"])
    assert os.listdir(ws / ".devstack" / "staging") == []


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        (("--max-streams", "-1"), {}, "--max-streams '-1'"),
        (("--max-streams", "four"), {}, "--max-streams 'four'"),
        ((), {"DEVSTACK_MAX_STREAMS": "2.5"}, "--max-streams '2.5'"),
    ],
)
def test_a_bad_max_streams_fails_at_startup_in_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], shown: str
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "token").write_text("streams-token")
    cmd = _sidecar_cmd(tmp_path, *args)
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert shown in lines[0] and "whole number" in lines[0]
    assert "Traceback" not in done.stderr
