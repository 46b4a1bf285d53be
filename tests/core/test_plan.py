"""The pure planner, as a table of named cases."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from devstack.core.manifest import Entry, Kind, Manifest, SyncState, hash_bytes
from devstack.core.plan import Action, apply_to, plan

S, D, U = SyncState.SYNCED, SyncState.DIRTY, SyncState.UNTRACKED


def f(path: str, content: bytes = b"x", mode: int = 0o644, state: SyncState = S) -> Entry:
    return Entry(path, Kind.FILE, len(content), mode, hash_bytes(content), "", state)


def d(path: str, mode: int = 0o755, state: SyncState = S) -> Entry:
    return Entry(path, Kind.DIRECTORY, 0, mode, b"", "", state)


def ln(path: str, target: str, state: SyncState = S) -> Entry:
    return Entry(path, Kind.SYMLINK, 0, 0o777, b"", target, state)


def m(*entries: Entry) -> Manifest:
    return {e.path: e for e in entries}


@dataclass
class Case:
    local: Manifest
    remote: Manifest
    steps: list[tuple[str, str]]
    conflicts: list[str] = field(default_factory=list)
    kw: dict[str, object] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "identical trees move nothing": Case(m(f("a"), d("b")), m(f("a"), d("b")), []),
    "a new file is written": Case(m(f("a")), m(), [("write", "a")]),
    "a synced file the laptop changed is rewritten": Case(
        m(f("a", b"new")), m(f("a", b"old")), [("write", "a")]
    ),
    "a file the app changed is a conflict": Case(
        m(f("a", b"new")), m(f("a", b"app", state=D)), [], ["a"]
    ),
    "force overwrites what the app changed": Case(
        m(f("a", b"new")), m(f("a", b"app", state=D)), [("write", "a")], [], {"force": True}
    ),
    "a replica overwrites what the app changed": Case(
        m(f("a", b"new")), m(f("a", b"app", state=D)), [("write", "a")], [], {"replica": True}
    ),
    "a seeded file that differs is overwritten": Case(
        m(f("a", b"new")), m(f("a", b"image", state=U)), [("write", "a")]
    ),
    "a seeded file that matches is adopted": Case(
        m(f("a"), d("b")), m(f("a", state=U), d("b", state=U)), [("adopt", "a"), ("adopt", "b")]
    ),
    "a file deleted on the laptop is deleted": Case(m(), m(f("a")), [("delete", "a")]),
    "the pod's own files are left alone": Case(m(), m(f("cache.db", state=U)), []),
    "a replica deletes the pod's own files": Case(
        m(), m(f("cache.db", state=U)), [("delete", "cache.db")], [], {"replica": True}
    ),
    "deleted on the laptop but changed by the app": Case(m(), m(f("a", state=D)), [], ["a"]),
    "a mode change is a chmod": Case(m(f("a", mode=0o755)), m(f("a")), [("chmod", "a")]),
    "mode changes are ignored when the sidecar forces modes": Case(
        m(f("a", mode=0o755)), m(f("a")), [], [], {"modes": False}
    ),
    "a move is a rename": Case(
        m(d("dst"), f("dst/a", b"content")),
        m(f("a", b"content")),
        [("mkdir", "dst"), ("rename", "dst/a")],
    ),
    "empty files are never renamed": Case(
        m(f("b", b"")), m(f("a", b"")), [("write", "b"), ("delete", "a")]
    ),
    "new folders are made parents first": Case(
        m(d("a"), d("a/b"), d("a/b/c"), f("a/b/c/x")),
        m(),
        [("mkdir", "a"), ("mkdir", "a/b"), ("mkdir", "a/b/c"), ("write", "a/b/c/x")],
    ),
    "a new folder goes right before its content, depth first": Case(
        m(d("a"), d("a/c"), f("a/c/y"), f("a/x"), f("a-b"), d("b"), f("b/z"), f("c")),
        m(f("c", b"old")),
        [
            ("mkdir", "a"),
            ("mkdir", "a/c"),
            ("write", "a/c/y"),
            ("write", "a/x"),
            ("write", "a-b"),
            ("mkdir", "b"),
            ("write", "b/z"),
            ("write", "c"),
        ],
    ),
    "a new folder something is renamed into goes before the renames": Case(
        m(d("dst"), d("dst/sub"), f("dst/sub/a", b"content"), f("dst/new"), d("n"), f("n/x")),
        m(f("a", b"content")),
        [
            ("mkdir", "dst"),
            ("mkdir", "dst/sub"),
            ("rename", "dst/sub/a"),
            ("write", "dst/new"),
            ("mkdir", "n"),
            ("write", "n/x"),
        ],
    ),
    "folders are deleted children first": Case(
        m(),
        m(d("a"), d("a/b"), f("a/b/x")),
        [("delete", "a/b/x"), ("delete", "a/b"), ("delete", "a")],
    ),
    "a folder holding the pod's files is kept": Case(
        m(), m(d("a"), f("a/mine"), f("a/pods", state=U)), [("delete", "a/mine")]
    ),
    "a folder that became a file": Case(
        m(f("a")), m(d("a"), f("a/x")), [("delete", "a/x"), ("delete", "a"), ("write", "a")]
    ),
    "a file that became a folder is replaced in one op": Case(
        m(d("a"), f("a/x")), m(f("a")), [("mkdir", "a"), ("write", "a/x")]
    ),
    "a seeded file that became a symlink is replaced, never deleted first": Case(
        m(ln("a", "b")), m(f("a", state=U)), [("symlink", "a")]
    ),
    "a file the app changed that became a folder is a conflict": Case(
        m(d("a")), m(f("a", state=D)), [], ["a"]
    ),
    "a folder that became a file keeps it when it holds the pod's files": Case(
        m(f("a")), m(d("a"), f("a/x"), f("a/pods", state=U)), [("delete", "a/x")], ["a"]
    ),
    "a folder that became a file keeps it when the app changed a file in it": Case(
        m(f("a")), m(d("a"), f("a/x", state=D)), [], ["a", "a/x"]
    ),
    "force replaces a folder holding what the app changed": Case(
        m(f("a")),
        m(d("a"), f("a/x", state=D)),
        [("delete", "a/x"), ("delete", "a"), ("write", "a")],
        [],
        {"force": True},
    ),
    "a replica replaces a folder holding the pod's files": Case(
        m(f("a")),
        m(d("a"), f("a/pods", state=U)),
        [("delete", "a/pods"), ("delete", "a"), ("write", "a")],
        [],
        {"replica": True},
    ),
    "a changed symlink": Case(m(ln("l", "b")), m(ln("l", "a")), [("symlink", "l")]),
    "a symlink mode never matters": Case(
        m(ln("l", "a")), m(Entry("l", Kind.SYMLINK, 0, 0o755, b"", "a", S)), []
    ),
    "an untracked folder in the way is a conflict": Case(m(f("a")), m(d("a", state=U)), [], ["a"]),
}


@pytest.mark.parametrize("name", CASES)
def test_plan(name: str) -> None:
    case = CASES[name]
    p = plan(case.local, case.remote, **case.kw)  # type: ignore[arg-type]
    assert [(c.action.value, c.path) for c in p.changes] == case.steps
    assert [c.path for c in p.conflicts] == case.conflicts


def test_expected_states_are_what_the_remote_holds() -> None:
    p = plan(m(f("a", b"new"), f("b")), m(f("a", b"old")))
    by = {c.path: c for c in p.changes}
    assert by["a"].expected == f("a", b"old")
    assert by["b"].expected is None


def test_a_replacing_op_expects_what_is_there() -> None:
    p = plan(m(d("a")), m(f("a", b"app", state=D)), force=True)
    [c] = p.changes
    assert (c.action, c.expected, c.force) == (Action.MKDIR, f("a", b"app", state=D), True)


def test_held_conflicts_stay_put_until_a_side_changes() -> None:
    local, remote = m(f("a", b"mine")), m(f("a", b"app", state=D))
    held = {"a": (local["a"], remote["a"])}
    p = plan(local, remote, held=held, force=True)
    assert p.changes == [] and [c.reason for c in p.conflicts] == ["unresolved conflict"]
    p = plan(m(f("a", b"mine again")), remote, held=held, force=True)
    assert [(c.action, c.path) for c in p.changes] == [(Action.WRITE, "a")]


def test_scope_limits_planning() -> None:
    p = plan(m(f("a"), f("b")), m(), scope=frozenset({"b"}))
    assert [c.path for c in p.changes] == ["b"]


def test_applying_the_plan_to_the_remote_converges() -> None:
    local = m(d("x"), f("x/1", b"1"), ln("l", "x/1"), f("moved", b"long content"))
    remote = m(f("old", b"long content"), d("gone"), f("gone/f"))
    p = plan(local, remote)
    for c in p.changes:
        apply_to(remote, c)
    assert plan(local, remote).empty
    assert {k: (v.kind, v.digest, v.target) for k, v in remote.items()} == {
        k: (v.kind, v.digest, v.target) for k, v in local.items()
    }


def test_hidden_workspace_entries_are_never_touched() -> None:
    # The laptop ignores dist/ (a nested .gitignore the workspace lacks): the
    # pod's dist/ stays, and so does the folder that holds it.
    local = m(d("web"), f("web/app.js", b"new"))
    remote = m(d("web"), f("web/app.js", b"old"), d("web/dist"), f("web/dist/b.js"))
    asked: list[str] = []

    def hidden(path: str, entry: Entry) -> bool:
        asked.append(path)
        return path == "web/dist" or path.startswith("web/dist/")

    p = plan(local, remote, hidden=hidden)
    assert [(c.action.value, c.path) for c in p.changes] == [("write", "web/app.js")]
    # Only asked about what the laptop lacks: what it scanned is not hidden.
    assert sorted(asked) == ["web/dist", "web/dist/b.js"]
    p = plan(local, remote, hidden=hidden, scope=frozenset({"web/dist/b.js", "web/app.js"}))
    assert [c.path for c in p.changes] == ["web/app.js"]


def test_hidden_is_asked_when_folder_and_file_trade_places() -> None:
    asked: list[str] = []

    def hidden(path: str, entry: Entry) -> bool:
        asked.append(path)
        return True

    p = plan(m(f("build")), m(d("build")), hidden=hidden)
    assert asked == ["build"] and p.empty
    asked.clear()
    # A file that became a symlink is still not a folder: not asked.
    p = plan(m(ln("x", "y")), m(f("x")), hidden=hidden)
    assert asked == [] and [c.action for c in p.changes] == [Action.SYMLINK]


def test_an_identical_tree_is_settled_without_asking_anything() -> None:
    local = {f"p{i}": f(f"p{i}", str(i).encode()) for i in range(100)}
    remote = dict(local)
    calls: list[str] = []

    def hidden(path: str, entry: Entry) -> bool:
        calls.append(path)
        return False

    p = plan(local, remote, hidden=hidden)
    assert p.empty and p.conflicts == [] and calls == []
