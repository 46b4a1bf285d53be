"""``devstack sidecar`` refuses, at startup and in one line, options it
could not honour."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from tests.support.sync import devstack_cmd

PR_CAPBSET_DROP = 24
CAP_CHOWN = 0


def _without_cap_chown() -> None:
    """In the child before exec: root, but without the right to chown."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_CHOWN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_CHOWN)")


def test_owner_that_may_not_be_chowned_to_fails_at_startup(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "token").write_text("owner-token")
    # As root, drop CAP_CHOWN (what a non-root image has); otherwise we may
    # not give files to root anyway.
    root = os.geteuid() == 0
    owner = "1234:2345" if root else "0:0"
    cmd = devstack_cmd(
        "sidecar",
        "--listen",
        "127.0.0.1:0",
        "--workspace",
        str(ws),
        "--token-file",
        str(tmp_path / "token"),
        "--owner",
        owner,
    )
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
