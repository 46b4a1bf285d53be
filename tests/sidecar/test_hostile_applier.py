"""A hostile client against the applier, over real gRPC to a real sidecar:
symlinks planted out of the workspace, safe mode's promises, mode bits.

Each case is the client's steps with nothing but the protocol; afterwards
nothing beside the workspace changed, no symlink in it leads out, and the
sidecar still answers ``Status``."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.core.manifest import Entry, Kind, SyncState
from devstack.core.protocol import entry_to_pb
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.rawclient import (
    RawSession,
    delete_op,
    mkdir_op,
    rename_op,
    status,
    symlink_op,
    write_op,
)
from tests.support.sync import WITHOUT_DAC, Sidecar, devstack_cmd, tree_state

TOKEN = "s3cret-token"


class Box:
    """A workspace ``box/ws`` with canaries beside it in ``box/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ws = root / "ws"
        self.ws.mkdir(parents=True)
        (root / "canary.txt").write_text("outside")
        (root / "c1").mkdir()
        (root / "c1" / "next").write_text("outside too")
        self.token = root.parent / "token"
        self.token.write_text(TOKEN + "\n")
        self.outside = self.snapshot()

    def snapshot(self) -> dict[str, tuple[str, int, bytes]]:
        return {k: v for k, v in tree_state(self.root).items() if not k.startswith("ws")}

    def links_leading_out(self, apps: frozenset[str] = frozenset()) -> list[str]:
        """Every symlink in the workspace whose resolution, by the kernel,
        ends outside it, but for the app's own ones (``apps``, which sync
        never made nor moved)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.ws):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.relative_to(self.ws).as_posix() in apps or not p.is_symlink():
                    continue
                if not Path(os.path.realpath(p)).is_relative_to(self.ws):
                    out.append(f"{p.relative_to(self.ws)} -> {os.readlink(p)}")
        return out


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path / "box")


def start(box: Box, *extra: str, prefix: tuple[str, ...] = ()) -> Sidecar:
    return Sidecar(box.ws, box.token, *extra, prefix=prefix).start()


@pytest.fixture
def sidecar(box: Box) -> Iterator[Sidecar]:
    sc = start(box)
    yield sc
    still_sound(box, sc)
    sc.stop()


def still_sound(box: Box, sc: Sidecar, apps: frozenset[str] = frozenset()) -> None:
    assert box.snapshot() == box.outside, "something outside the workspace changed"
    assert box.links_leading_out(apps) == []
    assert status(sc.address, TOKEN).workspace == "ws"


def apply(s: RawSession, seq: int, *ops: pb.Op) -> pb.Ack:
    s.batch(seq, *ops)
    return s.commit(seq)


def chmod_op(path: str, mode: int, kind: Kind = Kind.DIRECTORY) -> pb.Op:
    op = pb.Op(kind=pb.OP_CHMOD)
    op.entry.CopyFrom(entry_to_pb(Entry(path, kind, 0, mode)))
    return op


def now(sc: Sidecar) -> dict[str, pb.Entry]:
    """The workspace's manifest as a new session sees it now."""
    s = RawSession(sc.address, TOKEN)
    s.close()
    return s.manifest


def reasons(ack: pb.Ack) -> list[tuple[str, str]]:
    return [(p.path, p.reason) for p in ack.problems]


# ----------------------------------------------------------------- escapes


def test_a_link_checked_deep_in_the_tree_lands_where_it_was_checked(
    box: Box, sidecar: Sidecar
) -> None:
    """Descriptor reuse: the folder a link is checked for is looked into
    first by another op's resolution (a transient descriptor); the link's
    own resolution then opens more folders than that cache keeps, and the
    descriptor number comes back as ``top``'s. The link must still land in
    ``d/e/f``, where ``../../c1/next`` stays inside, never in ``top``,
    where it leads out."""
    s = RawSession(sidecar.address, TOKEN)
    folders = ["d", "d/e", "d/e/f", "top"] + [f"d/c{i}" for i in range(1, 8)]
    chain = [symlink_op(f"d/c{i}/next", f"../c{i + 1}/next") for i in range(6, 0, -1)]
    ack = apply(
        s,
        1,
        *(mkdir_op(p) for p in folders),
        symlink_op("d/c7/next", "../../top/x"),
        *chain,
    )
    assert ack.applied == len(folders) + 7, reasons(ack)
    ack = apply(s, 2, symlink_op("la", "d/e/f/z"), symlink_op("d/e/f/l0", "../../c1/next"))
    s.close()
    assert ack.applied == 2, reasons(ack)
    assert os.readlink(box.ws / "d/e/f/l0") == "../../c1/next"
    assert not (box.ws / "top" / "l0").is_symlink()


def test_a_folder_move_with_a_folder_the_sidecar_cannot_read_is_refused(box: Box) -> None:
    """The sidecar runs without the root capabilities that bypass file
    permissions, as in a pod; the client makes a folder mode 000 that holds
    a link which would lead out once its folder moves up two levels."""
    sc = start(box, prefix=WITHOUT_DAC)
    try:
        s = RawSession(sc.address, TOKEN)
        ack = apply(
            s,
            1,
            *(mkdir_op(p) for p in ("a", "a/b", "a/b/lk2", "a/b/lk2/g")),
            symlink_op("a/b/lk2/g/l", "../../../x"),
        )
        assert ack.applied == 5, reasons(ack)
        assert apply(s, 2, chmod_op("a/b/lk2/g", 0o000)).applied == 1
        source = now(sc)["a/b/lk2"]
        ack = apply(s, 3, rename_op("a/b/lk2", "lk2", source))
        s.close()
        assert reasons(ack) == [("lk2", "unsafe-path")]
        assert "cannot read 'a/b/lk2/g'" in ack.problems[0].message
        assert (box.ws / "a/b/lk2/g").is_dir() and not (box.ws / "lk2").exists()
        still_sound(box, sc)
    finally:
        sc.stop()
        os.chmod(box.ws / "a/b/lk2/g", 0o755)


@pytest.mark.parametrize("mode", ["safe", "replica"])
def test_moving_an_absolute_link_is_refused(box: Box, mode: str) -> None:
    """The app's own link (absolute, as in a virtualenv), moved alone or
    inside a folder sync made: refused in both modes, whatever the rules of
    ownership say."""
    sc = start(box, "--mode", mode)
    try:
        s = RawSession(sc.address, TOKEN)
        assert apply(s, 1, mkdir_op("tools"), mkdir_op("tools/bin")).applied == 2
        os.symlink("/usr/bin/python3", box.ws / "tools/bin/python")
        os.symlink("/etc", box.ws / "etc-link")
        m = now(sc)
        ack = apply(
            s,
            2,
            rename_op("tools/bin/python", "py", m["tools/bin/python"]),
            rename_op("tools", "env2", m["tools"]),
            rename_op("etc-link", "e", m["etc-link"]),
        )
        s.close()
        if mode == "replica":
            assert {r for _, r in reasons(ack)} == {"unsafe-path"}, reasons(ack)
            assert "absolute" in ack.problems[0].message
        else:  # the app's links are not sync's to move; tools is, its link is not
            assert reasons(ack) == [("py", "conflict"), ("env2", "unsafe-path"), ("e", "conflict")]
        assert ack.applied == 0
        assert os.readlink(box.ws / "tools/bin/python") == "/usr/bin/python3"
        still_sound(box, sc, frozenset({"tools/bin/python", "etc-link"}))
    finally:
        sc.stop()


def test_a_link_moved_up_past_its_dots_is_refused(box: Box, sidecar: Sidecar) -> None:
    s = RawSession(sidecar.address, TOKEN)
    ack = apply(s, 1, mkdir_op("a"), mkdir_op("a/b"), symlink_op("a/b/l", "../../canary.txt"))
    assert ack.applied == 3, reasons(ack)
    ack = apply(s, 2, rename_op("a/b/l", "l", now(sidecar)["a/b/l"]))
    s.close()
    assert reasons(ack) == [("l", "unsafe-path")]


# ----------------------------------------------------------------- safe mode


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_files_sync_never_wrote_are_never_deleted(box: Box, sidecar: Sidecar, force: bool) -> None:
    (box.ws / "seeded.txt").write_text("from the image")
    (box.ws / "cache").mkdir()
    s = RawSession(sidecar.address, TOKEN)
    m = now(sidecar)
    ops = [delete_op("seeded.txt", m["seeded.txt"]), delete_op("seeded.txt"), delete_op("cache")]
    for op in ops:
        op.force = force
    ack = apply(s, 1, *ops)
    s.close()
    assert ack.applied == 0
    assert {r for _, r in reasons(ack)} == {"conflict"}
    assert "sync did not create it" in ack.problems[0].message
    assert (box.ws / "seeded.txt").read_text() == "from the image"
    assert (box.ws / "cache").is_dir()


def test_a_replica_deletes_what_sync_never_wrote(box: Box) -> None:
    (box.ws / "seeded.txt").write_text("from the image")
    sc = start(box, "--mode", "replica")
    try:
        s = RawSession(sc.address, TOKEN)
        ack = apply(s, 1, delete_op("seeded.txt"))
        s.close()
        assert ack.applied == 1 and not (box.ws / "seeded.txt").exists()
    finally:
        sc.stop()


def test_a_folder_move_keeps_the_apps_edit_a_conflict(box: Box, sidecar: Sidecar) -> None:
    s = RawSession(sidecar.address, TOKEN)
    assert apply(s, 1, mkdir_op("dir"), write_op("dir/f", b"synced")).applied == 2
    (box.ws / "dir" / "f").write_text("the app's edit")
    ack = apply(s, 2, rename_op("dir", "dir2", now(sidecar)["dir"]))
    assert ack.applied == 1, reasons(ack)
    moved = now(sidecar)["dir2/f"]
    assert moved.state == SyncState.DIRTY
    ack = apply(s, 3, delete_op("dir2/f", moved))
    s.close()
    assert reasons(ack) == [("dir2/f", "conflict")]
    assert (box.ws / "dir2" / "f").read_text() == "the app's edit"
    # And so after a restart: the move was journaled.
    sidecar.restart()
    s = RawSession(sidecar.address, TOKEN)
    assert s.manifest["dir2/f"].state == SyncState.DIRTY
    assert "dir/f" not in s.manifest
    s.close()


def test_only_what_sync_wrote_is_moved(box: Box, sidecar: Sidecar) -> None:
    (box.ws / "app.db").write_text("the app's")
    s = RawSession(sidecar.address, TOKEN)
    ack = apply(s, 1, rename_op("app.db", "elsewhere.db", s.manifest["app.db"]))
    s.close()
    assert reasons(ack) == [("elsewhere.db", "conflict")]
    assert (box.ws / "app.db").read_text() == "the app's"


# ----------------------------------------------------------------- modes


def test_setuid_setgid_and_sticky_bits_are_never_set(box: Box, sidecar: Sidecar) -> None:
    s = RawSession(sidecar.address, TOKEN)
    ack = apply(
        s,
        1,
        write_op("suid", b"#!/bin/sh\n", mode=0o4755),
        write_op("sgid", b"#!/bin/sh\n", mode=0o2755),
        mkdir_op("all", mode=0o7777),
    )
    assert ack.applied == 3, reasons(ack)
    (box.ws / "plain").write_text("x")
    ack = apply(
        s, 2, chmod_op("plain", 0o6755, Kind.FILE), chmod_op("all", 0o3775), mkdir_op("x", 0o1777)
    )
    s.close()
    assert ack.applied == 3, reasons(ack)
    modes = {
        n: stat.S_IMODE((box.ws / n).stat().st_mode) for n in ("suid", "sgid", "all", "plain", "x")
    }
    assert modes == {"suid": 0o755, "sgid": 0o755, "all": 0o775, "plain": 0o755, "x": 0o777}


def test_a_forced_mode_with_special_bits_is_refused_at_start(box: Box) -> None:
    cmd = devstack_cmd("sidecar", "--workspace", str(box.ws), "--token-file", str(box.token))
    done = subprocess.run([*cmd, "--file-mode", "4755"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "only permission bits" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_folder_that_can_be_listed_but_not_entered_leaves_sessions_working(box: Box) -> None:
    """The client makes a folder mode 0600 (read, no search) and an edit of
    the app's hides in a folder the app makes unreadable for a while: every
    later session still gets a manifest, and once the folder opens up again
    the app's edit is still a conflict (what sync wrote there is not
    forgotten while the scan could not look)."""
    sc = start(box, prefix=WITHOUT_DAC)
    try:
        s = RawSession(sc.address, TOKEN)
        ops = [mkdir_op("d"), mkdir_op("d/e"), mkdir_op("k"), write_op("k/f", b"synced")]
        assert apply(s, 1, *ops).applied == 4
        assert apply(s, 2, chmod_op("d", 0o600)).applied == 1
        s.close()
        (box.ws / "k" / "f").write_text("the app's edit")
        os.chmod(box.ws / "k", 0o000)
        hidden = now(sc)
        assert {"d", "k"} <= hidden.keys() and "d/e" not in hidden and "k/f" not in hidden
        os.chmod(box.ws / "k", 0o755)
        s = RawSession(sc.address, TOKEN)
        edited = s.manifest["k/f"]
        assert edited.state == SyncState.DIRTY
        ack = apply(s, 1, delete_op("k/f", edited))
        s.close()
        assert reasons(ack) == [("k/f", "conflict")]
        still_sound(box, sc)
    finally:
        sc.stop()
        os.chmod(box.ws / "d", 0o755)
