"""Stories of `devstack connect` against a real `devstack sidecar`, both as
processes on loopback."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.rawclient import status
from tests.support.sync import (
    Sidecar,
    connect_follow,
    connect_once,
    tree_state,
    wait_until,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Sidecar]]:
    src = tmp_path / "src"
    ws = tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    sc = Sidecar(ws, token).start()
    yield src, sc
    sc.stop()


def make_tree(src: Path) -> None:
    (src / "app" / "static").mkdir(parents=True)
    (src / "app" / "main.py").write_text("print('hi')\n")
    (src / "app" / "static" / "logo.bin").write_bytes(os.urandom(70_000))
    (src / "empty-dir").mkdir()
    (src / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(src / "run.sh", 0o755)
    (src / "ünïcödé naïve 名前.txt").write_text("unicode ✓\n")
    os.symlink("app/main.py", src / "main-link")
    (src / "large.dat").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: main\n")
    (src / "app" / "__pycache__").mkdir()
    (src / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")


def synced(src: Path, ws: Path) -> None:
    """The workspace equals the source tree, minus what is ignored."""
    expected = {
        k: v
        for k, v in tree_state(src).items()
        if not k.startswith(".git") and "__pycache__" not in k
    }
    assert tree_state(ws) == expected


def test_initial_sync_then_noop(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    synced(src, sc.workspace)
    assert not (sc.workspace / ".git").exists()
    written = status(sc.address, "tok-123").files_written
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert "initial sync: 0 change(s)" in r.stderr
    assert status(sc.address, "tok-123").files_written == written


def test_every_kind_of_change_while_watching(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    proc = connect_follow(src, sc)
    try:
        wait_until(lambda: (sc.workspace / "large.dat").exists(), 60, "initial sync")
        steps = [
            lambda: (src / "new.txt").write_text("created\n"),
            lambda: (src / "app" / "main.py").write_text("print('changed')\n"),
            lambda: os.remove(src / "app" / "static" / "logo.bin"),
            lambda: os.rename(src / "new.txt", src / "renamed.txt"),
            lambda: os.makedirs(src / "deep" / "er" / "est"),
            lambda: (src / "deep" / "er" / "est" / "leaf.py").write_text("x = 1\n"),
            lambda: os.chmod(src / "renamed.txt", 0o700),
            lambda: (os.remove(src / "main-link"), os.symlink("renamed.txt", src / "main-link")),
            lambda: (src / "emoji-🚀.bin").write_bytes(bytes(range(256)) * 10),
            lambda: os.rename(src / "app" / "static", src / "app" / "assets"),
            lambda: os.rmdir(src / "empty-dir"),
            lambda: (src / "large.dat").write_bytes(
                (src / "large.dat").read_bytes()[:-10] + b"0123456789"
            ),
        ]
        for step in steps:
            step()
            wait_same_filtered(src, sc.workspace)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def wait_same_filtered(src: Path, ws: Path) -> None:
    def ok() -> bool:
        try:
            synced(src, ws)
            return True
        except (AssertionError, FileNotFoundError):
            return False

    wait_until(ok, 30, "the workspace to match")


def test_wrong_token_is_one_clear_line(env: tuple[Path, Sidecar], tmp_path: Path) -> None:
    src, sc = env
    (src / "a").write_text("a")
    bad = tmp_path / "bad-token"
    bad.write_text("nope")
    r = connect_once(src, sc, bad)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("devstack connect: ")
    assert "refused the token" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (sc.workspace / "a").exists()


def test_unreachable_and_bad_path_are_one_clear_line(
    env: tuple[Path, Sidecar], tmp_path: Path
) -> None:
    src, sc = env
    dead = Sidecar(sc.workspace, sc.token_file)
    dead.port = 1  # nothing listens there
    r = connect_once(src, dead, timeout=60)
    assert r.returncode == 2 and "cannot reach the sidecar" in r.stderr
    assert "Traceback" not in r.stderr
    f = tmp_path / "file"
    f.write_text("x")
    r = connect_once(f, sc)
    assert r.returncode == 2 and "is not a directory" in r.stderr
    r = connect_once(tmp_path / "missing", sc)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_sidecar_restart_converges_without_resending(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    proc = connect_follow(src, sc)
    try:
        wait_same_filtered(src, sc.workspace)
        sc.restart()  # same port; the connection drops
        (src / "after-restart.txt").write_text("new\n")
        wait_same_filtered(src, sc.workspace)
        # Only the new file was written by the restarted sidecar.
        wait_until(lambda: status(sc.address, "tok-123").files_written == 1, 10, "status")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


def test_killed_client_mid_sync_leaves_no_half_file_and_converges(
    env: tuple[Path, Sidecar],
) -> None:
    src, sc = env
    for i in range(40):
        (src / f"f{i:02}.bin").write_bytes(os.urandom(512 * 1024))
    proc = connect_follow(src, sc)
    wait_until(lambda: any(p.name.startswith("f") for p in sc.workspace.iterdir()), 60, "progress")
    proc.kill()
    proc.wait()
    for p in sc.workspace.glob("f*.bin"):
        assert p.read_bytes() == (src / p.name).read_bytes(), f"{p.name} is half-written"
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    synced(src, sc.workspace)
    staging = sc.workspace / ".devstack" / "staging"
    wait_until(lambda: os.listdir(staging) == [], 10, "staging to be empty")


def test_app_change_is_reported_as_conflict_not_overwritten(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    (src / "config.yaml").write_text("v: 1\n")
    assert connect_once(src, sc).returncode == 0
    (sc.workspace / "config.yaml").write_text("v: app\n")  # the app writes it
    (src / "config.yaml").write_text("v: 2\n")
    r = connect_once(src, sc)
    assert r.returncode == 3
    assert "config.yaml" in r.stderr and "changed" in r.stderr
    assert (sc.workspace / "config.yaml").read_text() == "v: app\n"
    r = connect_once(src, sc, None, "--force")
    assert r.returncode == 0, r.stderr
    assert (sc.workspace / "config.yaml").read_text() == "v: 2\n"


def test_seeded_workspace_syncs_incrementally(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_tree(src)
    # The image already holds most of the tree, plus files of its own.
    for rel, (kind, _, data) in tree_state(src).items():
        if rel.startswith(".git") or "__pycache__" in rel or rel == "app/main.py":
            continue
        p = sc.workspace / rel
        if kind == "dir":
            p.mkdir(parents=True, exist_ok=True)
        elif kind == "file":
            p.write_bytes(data)
            os.chmod(p, os.stat(src / rel).st_mode & 0o7777)
        else:
            os.symlink(data.decode(), p)
    (sc.workspace / "installed-by-image.txt").write_text("keep me")
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert status(sc.address, "tok-123").files_written == 1  # only app/main.py
    assert (sc.workspace / "installed-by-image.txt").read_text() == "keep me"
