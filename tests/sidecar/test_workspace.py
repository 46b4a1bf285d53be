"""The applier: staging, commit, conflicts and path safety, on a real
directory (no network)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from devstack.core.errors import ConfigError
from devstack.core.ignore import IgnoreRules
from devstack.core.manifest import Entry, Kind, SyncState, hash_bytes
from devstack.core.sync.model import OpKind
from devstack.sidecar import workspace
from devstack.sidecar.workspace import StagedOp, Workspace, WriteOptions


def fentry(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FILE, len(data), mode, hash_bytes(data))


def write_op(
    i: int, path: str, data: bytes, *, expected: Entry | None = None, **kw: object
) -> StagedOp:
    return StagedOp(
        index=i,
        kind=OpKind.WRITE,
        path=path,
        entry=fentry(path, data, **kw),  # type: ignore[arg-type]
        expected=expected,
        expected_absent=expected is None,
    )


def commit_writes(ws: Workspace, seq: int, files: dict[str, bytes], **kw: object) -> list:
    ops = [write_op(i, p, d, **kw) for i, (p, d) in enumerate(files.items())]  # type: ignore[arg-type]
    batch = ws.open_batch(seq, ops)
    for i, d in enumerate(files.values()):
        batch.inline(i, d)
    return batch.commit()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    w = Workspace(root)
    yield w  # type: ignore[misc]
    w.close()


def test_commit_writes_and_records_ancestors(ws: Workspace) -> None:
    out = commit_writes(ws, 1, {"a.txt": b"hello"})
    assert [o.applied for o in out] == [True]
    assert (ws.root / "a.txt").read_bytes() == b"hello"
    m = ws.manifest(IgnoreRules())
    assert m["a.txt"].state == SyncState.SYNCED
    (ws.root / "a.txt").write_bytes(b"the app wrote this")
    assert ws.manifest(IgnoreRules())["a.txt"].state == SyncState.DIRTY


def test_abort_leaves_nothing(ws: Workspace) -> None:
    batch = ws.open_batch(1, [write_op(0, "a.txt", b"hello")])
    batch.inline(0, b"hel")
    batch.abort()
    assert not (ws.root / "a.txt").exists()
    assert os.listdir(ws.root / ".devstack" / "staging") == []


def test_incomplete_or_corrupt_content_is_not_written(ws: Workspace) -> None:
    (ws.root / "keep").write_bytes(b"old")
    old = fentry("keep", b"old")
    op = write_op(0, "keep", b"new!", expected=old)
    batch = ws.open_batch(1, [op])
    batch.inline(0, b"ne")
    [o] = batch.commit()
    assert (o.applied, o.reason) == (False, "incomplete")
    op = write_op(0, "keep", b"new!", expected=old)
    batch = ws.open_batch(2, [op])
    batch.inline(0, b"evil")
    [o] = batch.commit()
    assert (o.applied, o.reason) == (False, "digest-mismatch")
    assert (ws.root / "keep").read_bytes() == b"old"


def test_app_change_is_a_conflict_not_an_overwrite(ws: Workspace) -> None:
    commit_writes(ws, 1, {"a": b"v1"})
    (ws.root / "a").write_bytes(b"app")
    # The laptop believes the workspace holds v1.
    op = write_op(0, "a", b"v2", expected=fentry("a", b"v1"))
    b = ws.open_batch(2, [op])
    b.inline(0, b"v2")
    [o] = b.commit()
    assert o.reason == "conflict" and o.actual is not None
    assert o.actual.digest == hash_bytes(b"app")
    assert (ws.root / "a").read_bytes() == b"app"
    # Even a client that claims to expect the app's content may not clobber
    # it: the ancestor says sync last wrote v1.
    op = write_op(0, "a", b"v2", expected=fentry("a", b"app"))
    b = ws.open_batch(3, [op])
    b.inline(0, b"v2")
    [o] = b.commit()
    assert o.reason == "conflict"
    assert "since the last sync" in o.message
    # The person forces it.
    op = write_op(0, "a", b"v2", expected=fentry("a", b"app"))._replace(force=True)
    b = ws.open_batch(4, [op])
    b.inline(0, b"v2")
    assert b.commit()[0].applied
    assert (ws.root / "a").read_bytes() == b"v2"


def test_replica_overwrites(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    ws = Workspace(tmp_path / "r", replica=True)
    commit_writes(ws, 1, {"a": b"v1"})
    (ws.root / "a").write_bytes(b"app")
    assert commit_writes(ws, 2, {"a": b"v2"})[0].applied
    assert (ws.root / "a").read_bytes() == b"v2"
    ws.close()


def test_no_write_through_a_symlinked_folder(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ws.root / "escape")
    [o] = commit_writes(ws, 1, {"escape/pwned": b"x"})
    assert (o.applied, o.reason) == (False, "unsafe-path")
    assert list(outside.iterdir()) == []


def test_a_final_symlink_is_replaced_not_followed(ws: Workspace, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    os.symlink(target, ws.root / "link")
    op = write_op(
        0, "link", b"new", expected=Entry("link", Kind.SYMLINK, 0, 0o777, b"", str(target))
    )
    b = ws.open_batch(1, [op])
    b.inline(0, b"new")
    assert b.commit()[0].applied
    assert target.read_bytes() == b"precious"
    assert not (ws.root / "link").is_symlink()


@pytest.mark.parametrize("path", ["../x", "/etc/x", ".devstack/ancestors.json", "a//b"])
def test_unsafe_paths_write_nothing(ws: Workspace, path: str) -> None:
    [o] = commit_writes(ws, 1, {path: b"x"})
    assert (o.applied, o.reason) == (False, "unsafe-path")
    assert not (ws.root.parent / "x").exists()


def test_symlink_leaving_workspace_rejected(ws: Workspace) -> None:
    op = StagedOp(
        0, OpKind.SYMLINK, "l", Entry("l", Kind.SYMLINK, 0, 0o777, b"", "../../etc"), None, True
    )
    [o] = ws.open_batch(1, [op]).commit()
    assert (o.applied, o.reason) == (False, "unsafe-path")
    assert not (ws.root / "l").is_symlink()


def test_special_files_are_never_touched(ws: Workspace) -> None:
    os.mkfifo(ws.root / "fifo")
    [o] = commit_writes(ws, 1, {"fifo": b"x"})
    assert not o.applied
    assert (ws.root / "fifo").exists() and not (ws.root / "fifo").is_file()


def test_modes_and_forced_modes(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    ws = Workspace(tmp_path / "w", options=WriteOptions(file_mode=0o664))
    commit_writes(ws, 1, {"run.sh": b"#!/bin/sh"}, mode=0o700)
    commit_writes(ws, 2, {"data": b"d"}, mode=0o600)
    assert (ws.root / "run.sh").stat().st_mode & 0o7777 == 0o775
    assert (ws.root / "data").stat().st_mode & 0o7777 == 0o664
    ws.close()


def test_exact_modes_by_default(ws: Workspace) -> None:
    commit_writes(ws, 1, {"x": b"#!"}, mode=0o751)
    assert (ws.root / "x").stat().st_mode & 0o7777 == 0o751


def test_delete_keeps_a_folder_with_pod_files(ws: Workspace) -> None:
    mk = StagedOp(0, OpKind.MKDIR, "d", Entry("d", Kind.DIRECTORY, 0, 0o755), None, True)
    ws.open_batch(1, [mk]).commit()
    (ws.root / "d" / "pods-own").write_text("x")
    rm = StagedOp(0, OpKind.DELETE, "d", None, Entry("d", Kind.DIRECTORY, 0, 0o755), False)
    [o] = ws.open_batch(2, [rm]).commit()
    assert (o.applied, o.reason) == (False, "not-empty")
    assert (ws.root / "d" / "pods-own").exists()


def test_state_survives_restart(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    ws = Workspace(tmp_path / "w")
    commit_writes(ws, 1, {"a": b"v1"})
    ws.close()
    (tmp_path / "w" / "a").write_bytes(b"app")
    ws = Workspace(tmp_path / "w")
    assert ws.manifest(IgnoreRules())["a"].state == SyncState.DIRTY
    ws.close()


def test_missing_workspace_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Workspace(tmp_path / "nope")


def test_owner_option_chowns_what_it_writes(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    if os.geteuid() != 0:  # without CAP_CHOWN the sidecar refuses to start (test_command.py)
        with pytest.raises(ConfigError, match="CAP_CHOWN"):
            Workspace(tmp_path / "w", options=WriteOptions(uid=1234, gid=2345))
        return
    ws = Workspace(tmp_path / "w", options=WriteOptions(uid=1234, gid=2345, dir_mode=0o775))
    mk = StagedOp(0, OpKind.MKDIR, "d", Entry("d", Kind.DIRECTORY, 0, 0o700), None, True)
    [made] = ws.open_batch(1, [mk]).commit()
    [wrote] = commit_writes(ws, 2, {"d/f": b"x"})
    assert made.applied and wrote.applied
    for p in (ws.root / "d", ws.root / "d" / "f"):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (1234, 2345)
    assert (ws.root / "d").stat().st_mode & 0o7777 == 0o775
    ws.close()


def test_owner_equal_to_our_own_ids_needs_no_chown(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    ws = Workspace(tmp_path / "w", options=WriteOptions(uid=os.geteuid(), gid=os.getegid()))
    assert (ws.options.uid, ws.options.gid) == (None, None)
    ws.close()


def open_in(root: Path) -> int:
    """Descriptors of this process open on ``root`` or below it (others, of
    threads other tests left running, come and go meanwhile)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(root):
                n += 1
    return n


def test_a_huge_batch_keeps_few_descriptors_open(ws: Workspace) -> None:
    folders = [f"d{i}" for i in range(200)]
    mk = [
        StagedOp(i, OpKind.MKDIR, d, Entry(d, Kind.DIRECTORY, 0, 0o755), None, True)
        for i, d in enumerate(folders)
    ]
    ws.open_batch(1, mk).commit()
    files = {f"{d}/f": d.encode() for d in folders}
    before = open_in(ws.root)
    ops = [write_op(i, p, d) for i, (p, d) in enumerate(files.items())]
    batch = ws.open_batch(2, ops)
    for i, d in enumerate(files.values()):
        batch.inline(i, d[:1])  # every file partly staged, none complete
    assert open_in(ws.root) - before <= 2
    for i, d in enumerate(files.values()):
        batch.inline(i, d[1:])
    assert all(o.applied for o in batch.commit())
    assert open_in(ws.root) == before
    assert os.listdir(ws.root / ".devstack" / "staging") == []


def stage_all(ws: Workspace, seq: int, files: dict[str, tuple[bytes, int]]) -> list:
    """Stage like the server does (``inline_many``), then commit."""
    ops = [write_op(i, p, d, mode=m) for i, (p, (d, m)) in enumerate(files.items())]
    batch = ws.open_batch(seq, ops)
    batch.inline_many([(i, d) for i, (d, _) in enumerate(files.values())], lambda _op, d: d)
    return batch.commit()


#: The last ones carry setuid, setgid and sticky bits, which sync drops.
MODES = [0o644, 0o664, 0o666, 0o755, 0o600, 0o444, 0o700, 0o4755, 0o2750, 0o7777]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000], ids=oct)
def test_new_files_get_their_exact_mode_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    (tmp_path / "w").mkdir()
    old = os.umask(umask)
    try:
        ws = Workspace(tmp_path / "w")
        files = {f"m{m:o}": (f"mode {m:o}".encode(), m) for m in MODES}
        files |= {f"empty{m:o}": (b"", m) for m in MODES}
        assert all(o.applied for o in stage_all(ws, 1, files))
        # Content that arrives in pieces (the chunked path) too.
        ops = [write_op(i, f"c{m:o}", b"two parts", mode=m) for i, m in enumerate(MODES)]
        batch = ws.open_batch(2, ops)
        for i in range(len(MODES)):
            batch.inline(i, b"two ")
        for i in range(len(MODES)):
            batch.inline(i, b"parts")
        assert all(o.applied for o in batch.commit())
        ws.close()
    finally:
        os.umask(old)
    for m in MODES:
        for name in (f"m{m:o}", f"empty{m:o}", f"c{m:o}"):
            assert (tmp_path / "w" / name).stat().st_mode & 0o7777 == m & 0o777, name
    assert (tmp_path / "w" / "m444").read_bytes() == b"mode 444"
    assert (tmp_path / "w" / "c444").read_bytes() == b"two parts"


def test_what_appears_before_the_commit_is_a_conflict_not_replaced(ws: Workspace) -> None:
    mk = StagedOp(0, OpKind.MKDIR, "d", Entry("d", Kind.DIRECTORY, 0, 0o755), None, True)
    ops = [write_op(0, "a", b"laptop"), write_op(1, "emptydir", b"laptop")]
    batch = ws.open_batch(1, ops)
    batch.inline_many([(0, b"laptop"), (1, b"laptop")], lambda _op, d: d)
    mkdir_batch = ws.open_batch(2, [mk])
    # The app writes while the batches are staged.
    (ws.root / "a").write_bytes(b"the app")
    (ws.root / "emptydir").mkdir()
    (ws.root / "d").write_bytes(b"a file where the folder goes")
    wrote = batch.commit()
    [made] = mkdir_batch.commit()
    assert [o.reason for o in wrote] == ["conflict", "conflict"]
    assert wrote[0].actual is not None and wrote[0].actual.digest == hash_bytes(b"the app")
    assert made.reason == "conflict"
    assert (ws.root / "a").read_bytes() == b"the app"
    assert (ws.root / "emptydir").is_dir()
    assert (ws.root / "d").read_bytes() == b"a file where the folder goes"
    assert os.listdir(ws.root / ".devstack" / "staging") == []


def test_without_an_atomic_no_replace_rename_the_rules_still_hold(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workspace, "rename_noreplace", lambda *_args: False)
    assert [o.applied for o in stage_all(ws, 1, {"a": (b"v1", 0o644)})] == [True]
    assert not ws.noreplace  # it stops trying
    (ws.root / "b").write_bytes(b"the app")
    [o] = stage_all(ws, 2, {"b": (b"laptop", 0o644)})
    assert o.reason == "conflict"
    assert (ws.root / "a").read_bytes() == b"v1"
    assert (ws.root / "b").read_bytes() == b"the app"


def test_a_descriptor_handed_out_stays_that_folders_until_trim(tmp_path: Path) -> None:
    """What an op holds is never closed under it: neither the lookups of
    resolving a link (transient, in a small cache) nor forgetting a folder
    close it before the op ends; only ``trim``, between ops, does."""
    for name in ["held", *(f"other{i}" for i in range(3 * workspace.SCRATCH_LIMIT))]:
        (tmp_path / name).mkdir()
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dirs = workspace._DirCache(root_fd)
    try:
        assert dirs.readlink("held/x") is None  # "held" is looked into first
        held = dirs.get("held")
        for i in range(3 * workspace.SCRATCH_LIMIT):
            assert dirs.readlink(f"other{i}/x") is None
        dirs.forget("held")
        assert os.path.samestat(os.fstat(held), (tmp_path / "held").stat())
        dirs.trim()
        assert dirs.get("held") != -1 and "held" in dirs.fds
    finally:
        dirs.close()
        os.close(root_fd)


def test_chmod_never_follows_a_symlink_or_blocks_on_a_fifo(tmp_path: Path) -> None:
    """The app swaps a symlink or a fifo in where sync made a file, between
    sync's look and its chmod: neither is changed, nor what a link points to."""
    (tmp_path / "w").mkdir()
    outside = tmp_path / "outside"
    outside.write_text("x")
    outside.chmod(0o600)
    ws = Workspace(tmp_path / "w")
    try:
        os.symlink(outside, tmp_path / "w" / "swapped")
        os.mkfifo(tmp_path / "w" / "fifo")
        batch = ws.open_batch(1, [])
        for name in ("swapped", "fifo"):
            for directory in (False, True):
                with pytest.raises(workspace.UnsafePathError, match="no longer what sync made"):
                    batch._chmod_chown(ws.root_fd, name, 0o777, directory=directory)
        batch.abort()
    finally:
        ws.close()
    assert outside.stat().st_mode & 0o777 == 0o600


def test_modes_with_special_bits_are_refused_as_options() -> None:
    for kw in ({"file_mode": 0o4755}, {"dir_mode": 0o2775}, {"file_mode": 0o1000}):
        with pytest.raises(ConfigError, match="only permission bits"):
            WriteOptions(**kw)  # type: ignore[arg-type]
    assert WriteOptions(file_mode=0o664).file_perm(0o4755) == 0o775
    assert WriteOptions().dir_perm(0o7777) == 0o777
