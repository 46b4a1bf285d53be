"""The sidecar hashes a seeded workspace at start-up, on a thread of its
own, so that the first session's manifest finds every digest cached; the
first manifest stops it and keeps what it hashed (``Workspace.start_warming``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.core import manifest as manifest_mod
from devstack.core.ignore import IgnoreRules
from devstack.core.manifest import DigestCache, hash_bytes
from devstack.sidecar import workspace as workspace_mod
from devstack.sidecar.workspace import Workspace
from tests.support.net import wait_until
from tests.support.rawclient import RawSession
from tests.support.sync import Sidecar

TOKEN = "warm-token"


def seed(root: Path, files: int = 300) -> dict[str, bytes]:
    """A tree as the image's copy leaves it: files in a few folders."""
    out: dict[str, bytes] = {}
    for i in range(files):
        rel = f"d{i % 7}/sub{i % 3}/f{i}.py"
        data = f"print({i})\n".encode() * (1 + i % 5)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = data
    return out


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the scanner hashes from now on."""
    hashed: list[str] = []
    real = manifest_mod.hash_file

    def counting(name: str, *, dir_fd: int | None = None) -> bytes | None:
        hashed.append(name)
        return real(name, dir_fd=dir_fd)

    monkeypatch.setattr(manifest_mod, "hash_file", counting)
    return hashed


def test_a_seeded_workspace_is_hashed_before_the_first_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = seed(tmp_path)
    ws = Workspace(tmp_path)
    try:
        ws.start_warming()
        assert ws._warming is not None
        ws._warming.join(60)
        assert not ws._warming.is_alive()
        hashed = count_hashing(monkeypatch)
        got = ws.manifest(IgnoreRules())
        assert hashed == []  # every digest came from the cache
        assert {p: e.digest for p, e in got.items() if p in files} == {
            p: hash_bytes(d) for p, d in files.items()
        }
        saved = DigestCache.load(tmp_path / ".devstack" / "digests.json")
        assert set(files) <= set(saved)  # a restart does not hash again
    finally:
        ws.close()


def test_the_first_manifest_stops_the_warming_and_keeps_what_it_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = seed(tmp_path, files=400)
    started = threading.Event()
    real_scan = workspace_mod.scan
    ws = Workspace(tmp_path)

    def gated_scan(*args: Any, emit: Callable[[list[Any]], None], **kwargs: Any) -> Any:
        """The warm-up's scan: it waits at its first look whether to stop
        until a session asks for the manifest."""

        def gate(entries: list[Any]) -> None:
            if not started.is_set():
                started.set()
                assert ws._warm_stop.wait(30), "the manifest never asked the warm-up to stop"
            emit(entries)

        return real_scan(*args, emit=gate, **kwargs)

    monkeypatch.setattr(workspace_mod, "scan", gated_scan)
    try:
        ws.start_warming()
        assert started.wait(30)
        monkeypatch.setattr(workspace_mod, "scan", real_scan)  # the manifest's own scan
        before = len(ws.cache)
        hashed = count_hashing(monkeypatch)
        got = ws.manifest(IgnoreRules())
        assert ws._warming is not None and not ws._warming.is_alive()
        # Some files were hashed by the warm-up (its first segment), the
        # manifest hashed the rest, and every digest is right.
        assert 0 < len(hashed) < len(files)
        assert before == 0
        assert {p: e.digest for p, e in got.items() if p in files} == {
            p: hash_bytes(d) for p, d in files.items()
        }
    finally:
        ws.close()


def test_a_sidecar_process_warms_its_workspace_and_its_first_session_hashes_nothing(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    files = seed(ws)
    (tmp_path / "token").write_text(TOKEN)
    sc = Sidecar(ws, tmp_path / "token").start()
    try:
        wait_until(lambda: bool(sc.events("workspace.warmed")), timeout=60)
        (ev,) = sc.events("workspace.warmed")
        assert ev["hashed"] == len(files) and ev["stopped"] is False, ev
        s = RawSession(sc.address, TOKEN)
        assert {p: bytes(e.digest) for p, e in s.manifest.items() if p in files} == {
            p: hash_bytes(d) for p, d in files.items()
        }
        s.close()
    finally:
        sc.stop()
    # A restart finds them cached: nothing to hash.
    sc.start()
    try:
        wait_until(lambda: len(sc.events("workspace.warmed")) >= 2, timeout=60)
        assert sc.events("workspace.warmed")[-1]["hashed"] == 0
    finally:
        sc.stop()
