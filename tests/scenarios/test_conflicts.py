"""Stories of `devstack conflicts` and `devstack resolve` against a real
`devstack sidecar`, all as processes on loopback: the app in the pod changes
files the laptop changed too, and a person settles them each way."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack.core.manifest import Entry, Kind, hash_bytes
from devstack.core.protocol import bearer, entry_to_pb
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc
from tests.support.sync import (
    ConnectProcess,
    Sidecar,
    connect_once,
    devstack_cmd,
    tree_state,
    wait_until,
)

TOKEN = "tok-conflicts"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Sidecar]]:
    src = tmp_path / "src"
    ws = tmp_path / "ws"
    src.mkdir()
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    sc = Sidecar(ws, token).start()
    yield src, sc
    sc.stop()


def devstack(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        devstack_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def by_hand(sc: Sidecar, src: Path) -> list[str]:
    """The explicit form's options: this sidecar, this tree."""
    return ["--to", sc.address, "--token-file", str(sc.token_file), "--tree", str(src)]


def listed(sc: Sidecar, src: Path) -> dict[str, dict[str, object]]:
    r = devstack("conflicts", *by_hand(sc, src), "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["count"] == len(data["conflicts"]) and data["complete"] is True
    return {c["path"]: c for c in data["conflicts"]}


def make_conflicts(src: Path, sc: Sidecar) -> bytes:
    """Sync a tree, then the app changes config.yaml (which the laptop changes
    too) and data.bin (which it does not), and writes app.log of its own.
    Returns the pod's new data.bin (3 MiB: several ReadFile pieces)."""
    (src / "config.yaml").write_text("v: 1\n")
    (src / "lib").mkdir()
    (src / "lib" / "data.bin").write_bytes(b"old data\n")
    (src / "keep.txt").write_text("untouched\n")
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    ws = sc.workspace
    (ws / "config.yaml").write_text("v: from the app\n")
    pod_data = os.urandom(3 * 1024 * 1024)
    (ws / "lib" / "data.bin").write_bytes(pod_data)
    (ws / "app.log").write_text("the app's own file\n")
    (src / "config.yaml").write_text("v: 2\n")
    r = connect_once(src, sc)
    assert r.returncode == 3, r.stderr  # conflicts remain
    return pod_data


def test_conflicts_lists_what_differs_and_resolve_settles_each_way(
    env: tuple[Path, Sidecar],
) -> None:
    src, sc = env
    ws = sc.workspace
    pod_data = make_conflicts(src, sc)

    found = listed(sc, src)
    assert sorted(found) == ["config.yaml", "lib/data.bin"]  # not app.log, not keep.txt
    conf = found["config.yaml"]
    assert conf["changed_by"] == "both"
    assert conf["reason"] == "changed on the laptop and in the pod"
    assert conf["laptop"] == {
        "kind": "file",
        "size": 5,
        "mode": "0644",
        "mtime": conf["laptop"]["mtime"],  # type: ignore[index]
        "digest": hash_bytes(b"v: 2\n").hex(),
        "target": "",
    }
    assert conf["pod"]["size"] == len("v: from the app\n")  # type: ignore[index]
    assert conf["pod"]["digest"] == hash_bytes(b"v: from the app\n").hex()  # type: ignore[index]
    assert conf["last_synced"] == {
        "kind": "file",
        "digest": hash_bytes(b"v: 1\n").hex(),
        "target": "",
    }
    assert conf["takes"] == ["laptop", "pod"]
    data = found["lib/data.bin"]
    assert data["changed_by"] == "pod" and data["reason"] == "changed in the pod"
    assert data["pod"]["size"] == len(pod_data)  # type: ignore[index]
    assert data["pod"]["digest"] == hash_bytes(pod_data).hex()  # type: ignore[index]
    assert data["laptop"]["digest"] == hash_bytes(b"old data\n").hex()  # type: ignore[index]

    table = devstack("conflicts", *by_hand(sc, src))
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["PATH", "CHANGED", "BY"]
    assert [r.split()[:2] for r in rows[:2]] == [["config.yaml", "both"], ["lib/data.bin", "pod"]]
    assert any("--take pod" in r for r in rows)

    # The laptop's config.yaml wins: nothing in the pod changes until a sync.
    r = devstack("resolve", "config.yaml", "--take", "laptop", *by_hand(sc, src))
    assert r.returncode == 0, r.stderr
    assert "config.yaml: the laptop's version replaces the pod's (at the next sync)" in r.stdout
    assert (ws / "config.yaml").read_text() == "v: from the app\n"
    assert sorted(listed(sc, src)) == ["lib/data.bin"]

    # The pod's data.bin wins: copied to the laptop, from a folder inside the tree.
    r = devstack(
        "resolve", "data.bin", "--take", "pod", "-o", "json", *by_hand(sc, src), cwd=src / "lib"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "take": "pod",
        "paths": [
            {
                "path": "lib/data.bin",
                "result": "resolved",
                "message": "the pod's version is on the laptop now (3.0 MiB)",
            }
        ],
    }
    assert (src / "lib" / "data.bin").read_bytes() == pod_data
    assert not [p for p in (src / "lib").iterdir() if p.name.startswith(".#")]  # no temp left
    assert listed(sc, src) == {}
    r = devstack("conflicts", *by_hand(sc, src))
    assert (r.returncode, r.stdout) == (0, "no conflicts\n")

    # The next sync: the trees match, the app's own file stays.
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert (ws / "config.yaml").read_text() == "v: 2\n"
    assert (ws / "lib" / "data.bin").read_bytes() == pod_data
    state = tree_state(ws)
    assert state.pop("app.log")[2] == b"the app's own file\n"
    assert state == tree_state(src)

    # Nothing left to settle: said so, exit 0.
    r = devstack("resolve", "keep.txt", "--take", "pod", *by_hand(sc, src))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "keep.txt: no conflict there: nothing to do\n"


def test_resolve_all_takes_the_laptops_side(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    make_conflicts(src, sc)
    r = devstack("resolve", "--all", "--take", "laptop", *by_hand(sc, src))
    assert r.returncode == 0, r.stderr
    assert sorted(line.split(":")[0] for line in r.stdout.splitlines()) == [
        "config.yaml",
        "lib/data.bin",
    ]
    r = connect_once(src, sc)
    assert r.returncode == 0, r.stderr
    assert (sc.workspace / "config.yaml").read_text() == "v: 2\n"
    assert (sc.workspace / "lib" / "data.bin").read_bytes() == b"old data\n"


def test_resolve_refuses_paths_outside_the_tree(env: tuple[Path, Sidecar], tmp_path: Path) -> None:
    src, sc = env
    make_conflicts(src, sc)
    outside = tmp_path / "outside.txt"
    for given in ("../outside.txt", str(outside), "lib/../../outside.txt"):
        r = devstack("resolve", given, "--take", "pod", *by_hand(sc, src))
        assert r.returncode == 2, r.stderr
        assert "outside the tree" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not outside.exists()
    r = devstack("resolve", ".devstack/ancestors.json", "--take", "laptop", *by_hand(sc, src))
    assert r.returncode == 2 and "reserved" in r.stderr, r.stderr
    assert sorted(listed(sc, src)) == ["config.yaml", "lib/data.bin"]  # nothing settled


def test_take_pod_never_writes_through_a_symlinked_folder(
    env: tuple[Path, Sidecar], tmp_path: Path
) -> None:
    src, sc = env
    make_conflicts(src, sc)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_bytes(b"not in the tree\n")
    os.rename(src / "lib", tmp_path / "lib-moved")
    os.symlink(elsewhere, src / "lib")  # lib/ now leads out of the tree
    r = devstack("resolve", "lib/data.bin", "--take", "pod", *by_hand(sc, src))
    assert r.returncode == 2, r.stderr
    assert "symlink" in r.stderr
    assert (elsewhere / "data.bin").read_bytes() == b"not in the tree\n"


def test_a_wrong_token_is_refused(env: tuple[Path, Sidecar], tmp_path: Path) -> None:
    src, sc = env
    make_conflicts(src, sc)
    bad = tmp_path / "bad-token"
    bad.write_text("nope\n")
    for argv in (
        ["conflicts"],
        ["resolve", "config.yaml", "--take", "laptop"],
        ["resolve", "config.yaml", "--take", "pod"],
    ):
        r = devstack(*argv, "--to", sc.address, "--token-file", str(bad), "--tree", str(src))
        assert r.returncode == 2, (argv, r.stderr)
        assert "refused the token" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    with grpc.insecure_channel(sc.address) as ch:
        stub = sync_pb2_grpc.SyncStub(ch)
        calls: list[Callable[[Any], object]] = [
            lambda md: stub.Conflicts(pb.ConflictsRequest(), metadata=md, timeout=30),
            lambda md: stub.Resolve(
                pb.ResolveRequest(take=pb.SIDE_LAPTOP, items=[pb.ResolveItem(path="config.yaml")]),
                metadata=md,
                timeout=30,
            ),
            lambda md: list(
                stub.ReadFile(pb.ReadFileRequest(path="config.yaml"), metadata=md, timeout=30)
            ),
        ]
        for call in calls:
            for md in ((), bearer("nope")):
                with pytest.raises(grpc.RpcError) as e:
                    call(md)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (sc.workspace / "config.yaml").read_text() == "v: from the app\n"
    assert sorted(listed(sc, src)) == ["config.yaml", "lib/data.bin"]


def test_the_sidecar_refuses_paths_outside_the_workspace(
    env: tuple[Path, Sidecar], tmp_path: Path
) -> None:
    src, sc = env
    make_conflicts(src, sc)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("do not read\n")
    os.symlink(secret, sc.workspace / "linked")
    md = bearer(TOKEN)
    with grpc.insecure_channel(sc.address) as ch:
        stub = sync_pb2_grpc.SyncStub(ch)
        for path in ("../secret/key", "/etc/passwd", "linked/key", ".devstack/ancestors.json"):
            with pytest.raises(grpc.RpcError) as e:
                list(stub.ReadFile(pb.ReadFileRequest(path=path), metadata=md, timeout=30))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
            with pytest.raises(grpc.RpcError) as e:
                stub.Conflicts(pb.ConflictsRequest(paths=[path]), metadata=md, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
            resp = stub.Resolve(
                pb.ResolveRequest(take=pb.SIDE_LAPTOP, items=[pb.ResolveItem(path=path)]),
                metadata=md,
                timeout=30,
            )
            (res,) = resp.results
            assert (res.resolved, res.reason) == (False, "unsafe-path"), path
        with pytest.raises(grpc.RpcError) as e:
            list(stub.ReadFile(pb.ReadFileRequest(path="lib"), metadata=md, timeout=30))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as e:
            list(stub.ReadFile(pb.ReadFileRequest(path="nope.txt"), metadata=md, timeout=30))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

        # A path the pod changed again since it was listed is not settled.
        listed_then = Entry("config.yaml", Kind.FILE, 5, 0o644, hash_bytes(b"stale\n"))
        item = pb.ResolveItem(path="config.yaml")
        item.expected.CopyFrom(entry_to_pb(listed_then))
        resp = stub.Resolve(
            pb.ResolveRequest(take=pb.SIDE_LAPTOP, items=[item]), metadata=md, timeout=30
        )
        assert [(r.resolved, r.reason) for r in resp.results] == [(False, "changed")]
    assert sorted(listed(sc, src)) == ["config.yaml", "lib/data.bin"]


def test_a_running_connect_applies_the_resolution(env: tuple[Path, Sidecar]) -> None:
    src, sc = env
    ws = sc.workspace
    (src / "a.txt").write_text("a v1\n")
    (src / "b.txt").write_text("b v1\n")
    proc = ConnectProcess(src, sc.address, sc.token_file, "--rescan-interval", "100000")
    try:
        wait_until(lambda: (ws / "b.txt").exists(), 60, "the first sync")
        # The app and the laptop change both files while connect runs.
        (ws / "a.txt").write_text("a from the app\n")
        (ws / "b.txt").write_text("b from the app\n")
        (src / "a.txt").write_text("a v2\n")
        (src / "b.txt").write_text("b v2\n")
        wait_until(lambda: sorted(listed(sc, src)) == ["a.txt", "b.txt"], 60, "two conflicts")
        assert (ws / "a.txt").read_text() == "a from the app\n"

        r = devstack("resolve", "a.txt", "--take", "laptop", *by_hand(sc, src))
        assert r.returncode == 0, r.stderr
        assert "(the running connect does it now)" in r.stdout
        wait_until(lambda: (ws / "a.txt").read_text() == "a v2\n", 60, "the laptop's a.txt")

        r = devstack("resolve", "b.txt", "--take", "pod", *by_hand(sc, src))
        assert r.returncode == 0, r.stderr
        assert (src / "b.txt").read_text() == "b from the app\n"
        wait_until(lambda: listed(sc, src) == {}, 60, "no conflicts left")
        assert (ws / "b.txt").read_text() == "b from the app\n"
        assert any(line.startswith("resolved: ") for line in proc.lines), proc.stderr
    finally:
        assert proc.stop() == 0, proc.stderr
