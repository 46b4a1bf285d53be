"""The pure parts of `devstack conflicts` and `devstack resolve`: comparing the
two sides, what is printed, the hint `connect` prints, and paths given on the
command line; and `status -o json`'s message conversion."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.cli.conflicts import (
    Conflict,
    LaptopSide,
    PodSide,
    as_json,
    compare,
    format_table,
    human_size,
    resolve_hint,
    tree_path,
)
from devstack.cli.resolve import split_words
from devstack.cli.status import message_json
from devstack.core.errors import ConfigError
from devstack.core.manifest import Entry, Kind, SyncState, hash_bytes
from devstack.sync.v1 import sync_pb2 as pb

A, B, C = hash_bytes(b"a"), hash_bytes(b"b"), hash_bytes(b"c")
DIRTY, SYNCED, UNTRACKED = SyncState.DIRTY, SyncState.SYNCED, SyncState.UNTRACKED


def f(digest: bytes, state: SyncState = UNTRACKED, size: int = 1) -> Entry:
    return Entry("x", Kind.FILE, size, 0o644, digest, "", state)


def d(state: SyncState = UNTRACKED) -> Entry:
    return Entry("x", Kind.DIRECTORY, 0, 0o755, b"", "", state)


def link(target: str, state: SyncState = UNTRACKED) -> Entry:
    return Entry("x", Kind.SYMLINK, 0, 0o777, b"", target, state)


# (pod entry, ancestor, pod's report, laptop entry) -> (changed by, reason, takes), or None
CASES = [
    # the app changed what sync wrote; the laptop changed it too
    (f(B, DIRTY), f(A), "", f(C), ("both", "changed on the laptop and in the pod", "laptop|pod")),
    # the app changed it; the laptop still holds what sync wrote
    (f(B, DIRTY), f(A), "", f(A), ("pod", "changed in the pod", "laptop|pod")),
    # the laptop deleted it
    (
        f(B, DIRTY),
        f(A),
        "",
        None,
        ("both", "deleted on the laptop, changed in the pod", "laptop|pod"),
    ),
    # the app replaced a file sync wrote by a folder: it cannot be copied back
    (d(DIRTY), f(A), "", f(A), ("pod", "a file on the laptop, a folder in the pod", "laptop")),
    # a laptop folder where the pod holds a file: the pod's cannot go there
    (f(B, DIRTY), f(A), "", d(), ("both", "a folder on the laptop, a file in the pod", "laptop")),
    # a symlink out of the tree is never copied to the laptop
    (
        link("/etc", DIRTY),
        f(A),
        "",
        f(A),
        ("pod", "a file on the laptop, a symlink in the pod", "laptop"),
    ),
    (
        link("y", DIRTY),
        f(A),
        "",
        f(A),
        ("pod", "a file on the laptop, a symlink in the pod", "laptop|pod"),
    ),
    # both created it at once: a batch reported it, sync never wrote it
    (f(B), None, "exists", f(C), ("both", "created on the laptop and in the pod", "laptop|pod")),
    # no conflict: the same content (sync adopts it)
    (f(B, DIRTY), f(A), "", f(B), None),
    # no conflict: nothing in the pod (the laptop's goes in)
    (None, f(A), "conflict once", f(C), None),
    # no conflict: the pod holds what sync wrote (the laptop's replaces it)
    (f(A, SYNCED), f(A), "old report", f(C), None),
    # no conflict: an untracked file nobody reported (the laptop's overwrites it)
    (f(B), None, "", f(C), None),
]


@pytest.mark.parametrize(("pod", "anc", "message", "laptop", "want"), CASES)
def test_compare(
    pod: Entry | None,
    anc: Entry | None,
    message: str,
    laptop: Entry | None,
    want: tuple[str, str, str] | None,
) -> None:
    got = compare(PodSide("x", pod, 1, anc, message), LaptopSide(laptop, 2))
    if want is None:
        assert got is None
    else:
        assert got is not None
        assert (got.changed_by, got.reason, "|".join(got.takes)) == want


def _conflict() -> Conflict:
    pod = PodSide("conf/app.yaml", f(B, DIRTY, size=2048), 1_700_000_000 * 10**9, f(A), "")
    c = compare(pod, LaptopSide(f(C, size=5), 1_700_000_100 * 10**9))
    assert c is not None
    return c


def test_json_has_every_field_in_snake_case_zeros_too() -> None:
    c = _conflict()
    gone = compare(PodSide("gone.txt", f(B, DIRTY, size=0), 0, f(A)), LaptopSide(None))
    assert gone is not None
    data = as_json([c, gone], where="web")
    assert data["count"] == 2
    first, second = data["conflicts"]
    assert first == {
        "path": "conf/app.yaml",
        "changed_by": "both",
        "reason": "changed on the laptop and in the pod",
        "laptop": {
            "kind": "file",
            "size": 5,
            "mode": "0644",
            "mtime": "2023-11-14T22:15:00Z",
            "digest": C.hex(),
            "target": "",
        },
        "pod": {
            "kind": "file",
            "size": 2048,
            "mode": "0644",
            "mtime": "2023-11-14T22:13:20Z",
            "digest": B.hex(),
            "target": "",
        },
        "last_synced": {"kind": "file", "digest": A.hex(), "target": ""},
        "sidecar_message": "",
        "takes": ["laptop", "pod"],
        "hint": "devstack resolve web conf/app.yaml --take laptop|pod",
    }
    assert second["laptop"] is None and second["pod"]["size"] == 0
    assert second["pod"]["mtime"] == ""


def test_table_lists_both_sides_and_how_to_settle() -> None:
    text = format_table([_conflict()], where="web")
    header, row, *rest = text.splitlines()
    assert header.split() == ["PATH", "CHANGED", "BY", "LAPTOP", "POD", "TAKE"]
    assert row.split()[:2] == ["conf/app.yaml", "both"]
    assert "5 B" in row and "2.0 KiB" in row and C.hex()[:8] in row and B.hex()[:8] in row
    assert row.endswith("laptop|pod")
    assert "  devstack resolve web PATH... --take laptop" in rest
    assert "  devstack resolve web PATH... --take pod" in rest
    assert format_table([], where="web") == "no conflicts"


def test_resolve_hint_for_connect() -> None:
    assert resolve_hint({}) == ""
    hint = resolve_hint({"b.txt": "changed", "a b.txt": "changed"}, where="web")
    assert hint.splitlines() == [
        "see what differs: devstack conflicts web",
        "2 conflict(s). Keep the laptop's version (the next sync replaces the pod's):",
        "  devstack resolve web 'a b.txt' b.txt --take laptop",
        "or the pod's (copied to the laptop):",
        "  devstack resolve web 'a b.txt' b.txt --take pod",
    ]
    many = resolve_hint([f"f{i}" for i in range(5)])
    assert "devstack resolve SERVICE f0 f1 f2 ... --take laptop" in many
    assert many.splitlines()[1].startswith("5 conflict(s).")


@pytest.mark.parametrize(
    ("given", "cwd", "want"),
    [
        ("a.txt", "/t", "a.txt"),
        ("a.txt", "/t/sub", "sub/a.txt"),  # inside the tree: relative to here, as git
        ("../a.txt", "/t/sub", "a.txt"),
        ("sub/a.txt", "/elsewhere", "sub/a.txt"),  # outside it: relative to the tree
        ("/t/sub/a.txt", "/elsewhere", "sub/a.txt"),
        ("./sub//a.txt", "/t", "sub/a.txt"),
    ],
)
def test_tree_path(given: str, cwd: str, want: str) -> None:
    assert tree_path(given, Path("/t"), Path(cwd)) == want


@pytest.mark.parametrize(
    ("given", "cwd", "why"),
    [
        ("../x", "/t", "outside the tree"),
        ("/etc/passwd", "/t", "outside the tree"),
        ("../../etc/passwd", "/t/sub", "outside the tree"),
        ("/t2/x", "/t", "outside the tree"),  # a sibling with the same prefix
        (".", "/t", "the tree itself"),
        (".devstack/ancestors.json", "/t", "reserved"),
    ],
)
def test_tree_path_refuses_what_is_not_in_the_tree(given: str, cwd: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        tree_path(given, Path("/t"), Path(cwd))


def test_split_words() -> None:
    assert split_words(["web", "a", "b"], explicit=False) == ("web", ["a", "b"])
    assert split_words(["a", "b"], explicit=True) == (None, ["a", "b"])
    assert split_words([], explicit=False) == (None, [])


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB")]
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


def test_message_json_names_zeros_and_numbers() -> None:
    bare = message_json(pb.StatusResponse(workspace="ws"))
    assert bare["batches_applied"] == 0 and bare["last_reload"] is None
    assert bare["replica"] is False and bare["uptime_seconds"] == 0.0
    ev = pb.Event(kind="reload-finished", reload_id=2**40, paths=["a"])
    full = message_json(pb.StatusResponse(bytes_received=2**40 + 1, last_reload=ev))
    assert full["bytes_received"] == 2**40 + 1  # a number, not proto3 JSON's string
    assert full["last_reload"] == {
        "kind": "reload-finished",
        "message": "",
        "paths": ["a"],
        "exit_code": 0,
        "reason": "",
        "output_tail": "",
        "duration_ms": 0,
        "reload_id": 2**40,
    }
