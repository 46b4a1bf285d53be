"""Property: whatever sequence of edits happens to the source tree, a sync
leaves the workspace byte-identical, with equal modes and link targets.

The sidecar is a real process; the laptop side runs in-process (the same
Syncer `devstack connect` uses) so each example stays fast."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.cli.syncer import Syncer, Target
from devstack.core.plan import Plan
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.sync import Sidecar, tree_state

NAMES = ["a", "b.txt", "ü.py", "d", "d/x", "d/y.bin", "d/e", "d/e/z", "l"]

op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NAMES), st.binary(max_size=3000)),
    st.tuples(st.just("big"), st.sampled_from(NAMES), st.integers(0, 3)),
    st.tuples(st.just("mkdir"), st.sampled_from(NAMES), st.just(b"")),
    st.tuples(st.just("link"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("delete"), st.sampled_from(NAMES), st.just(b"")),
    st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(
        st.just("chmod"), st.sampled_from(NAMES), st.sampled_from([0o644, 0o755, 0o600, 0o700])
    ),
)


def _clear(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)


def apply(root: Path, action: str, name: str, arg: object) -> None:
    p = root / name
    try:
        if action in ("write", "big", "mkdir", "link"):
            parent = p.parent
            if parent != root and (parent.is_file() or parent.is_symlink()):
                _clear(parent)
            parent.mkdir(parents=True, exist_ok=True)
            if action == "mkdir":
                if not p.is_dir() or p.is_symlink():
                    _clear(p)
                    p.mkdir()
                return
            if p.is_dir() and not p.is_symlink():
                _clear(p)
            if action == "link":
                _clear(p)
                os.symlink(str(arg), p)
            elif action == "big":
                # Large enough to travel chunked; sometimes as a delta.
                base = (b"line of text %d\n" % int(arg)) * 30000  # type: ignore[call-overload]
                if p.is_symlink():
                    p.unlink()
                p.write_bytes(base[: len(base) // 2] + os.urandom(50) + base[len(base) // 2 :])
            else:
                if p.is_symlink():
                    p.unlink()
                p.write_bytes(arg)  # type: ignore[arg-type]
        elif action == "delete":
            _clear(p)
        elif action == "rename":
            dst = root / str(arg)
            if p.exists() or p.is_symlink():
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.is_dir() and not dst.is_symlink():
                    _clear(dst)
                os.rename(p, dst)
        elif action == "chmod" and p.exists() and not p.is_symlink():
            os.chmod(p, int(arg))  # type: ignore[call-overload]
    except OSError:
        pass  # an impossible edit (e.g. renaming a folder into itself) is simply skipped


class Quiet:
    def round_started(self, plan: Plan, *, initial: bool) -> None: ...
    def progress(self, files: int, nbytes: int) -> None: ...
    def round_finished(self, stats: object) -> None: ...
    def event(self, event: pb.Event) -> None: ...
    def note(self, text: str) -> None: ...


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    base = tmp_path_factory.mktemp("prop")
    ws = base / "ws"
    ws.mkdir()
    token = base / "token"
    token.write_text("tok")
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=st.lists(st.lists(op, min_size=1, max_size=8), min_size=1, max_size=3))
def test_random_edits_converge(
    sidecar: Sidecar, tmp_path_factory: pytest.TempPathFactory, rounds: list
) -> None:  # type: ignore[type-arg]
    src = tmp_path_factory.mktemp("src")
    for child in list(sidecar.workspace.iterdir()):  # every example starts from empty
        if child.name != ".devstack":
            _clear(child)
    (sidecar.workspace / ".devstack" / "ancestors.json").unlink(missing_ok=True)
    cache = src.parent / f"{src.name}.cache.json"
    for edits in rounds:
        for action, name, arg in edits:
            apply(src, action, name, arg)
        syncer = Syncer(src, Target(sidecar.address, "tok"), reporter=Quiet(), cache_path=cache)
        assert asyncio.run(syncer.run(once=True)) == 0
        assert tree_state(sidecar.workspace) == tree_state(src)
