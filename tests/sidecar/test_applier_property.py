"""Property: whatever programs of batches and app actions run against the
batch applier, no symlink sync made or moved leads out of the workspace,
nothing outside changes, no setuid/setgid/sticky bit appears, nothing is
half-written, and safe mode keeps what the app made (the invariant and the
programs: tests/support/applier_model.py; the fuzzer over the same ones:
tests/fuzz/fuzz_applier.py).

CI runs 200 examples from a fixed seed (``derandomize``). A longer, random
run by hand::

    APPLIER_EXAMPLES=20000 APPLIER_RANDOM=1 .venv/bin/python -m pytest \\
        tests/sidecar/test_applier_property.py -x -q -p no:cacheprovider

A failure prints the shrunk program and, per op, what the applier did;
``APPLIER_SKIP`` looks past known violations (see the model). The explicit
examples are the breaches issue 7 reports and those the property found
besides, each as the shortest program that shows it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.applier_model import App, Commit, Op, Program, Sidecar, check, draw_program

_DEEP, _OTHER = "/".join("a" * 10), "/".join("b" * 9)

#: name -> the shortest program that shows a breach.
KNOWN = {
    # staging takes the link's folder from resolve_link's scratch cache, which
    # closes it while following the target; the rename lands wherever that
    # descriptor number went (b x 9), where 10 '..' climb out
    "descriptor reuse": Program(
        False,
        (
            Commit((Op("mkdirs", _DEEP, mode=0o755), Op("mkdirs", _OTHER, mode=0o755))),
            Commit(
                (
                    Op("symlink", "c", target=f"{_DEEP}/q", expect="absent"),
                    Op("symlink", f"{_DEEP}/l", target="../" * 10 + f"{_OTHER}/x"),
                )
            ),
        ),
    ),
    # the recheck of a moved folder's links skips a subfolder it cannot list
    "unreadable subfolder": Program(
        False,
        (
            App("symlink", "lk2/g/l", target="../../../canary.txt"),
            App("chmod", "lk2/g", mode=0o000),
            Commit((Op("rename", "x", source="lk2", expect="none"),)),
        ),
    ),
    "absolute target moved": Program(
        False,
        (
            App("symlink", "a", target="{base}/canary.txt"),
            Commit((Op("rename", "b", source="a"),)),
        ),
    ),
    "untracked file deleted": Program(False, (App("write", "f"), Commit((Op("delete", "f"),)))),
    "untracked folder replaced": Program(
        False, (App("mkdirs", "d"), Commit((Op("write", "d", data=1, mode=0o644),)))
    ),
    # the moved file's ancestor stays at d/f: at e/f the app's edit reads as untracked
    "folder move launders a conflict": Program(
        False,
        (
            Commit((Op("mkdirs", "d", mode=0o755), Op("write", "d/f", data=1, mode=0o644))),
            App("write", "d/f"),
            Commit((Op("rename", "e", source="d"),)),
            Commit((Op("write", "e/f", data=2, mode=0o644),)),
        ),
    ),
    "setuid kept": Program(False, (Commit((Op("write", "f", data=1, mode=0o4755),)),)),
    "folder mode 7777 kept": Program(False, (Commit((Op("mkdir", "d", mode=0o7777),)),)),
    # a symlink op over a folder that is not empty leaves its staged link behind
    "staged link left over": Program(
        False,
        (
            Commit((Op("mkdirs", "d", mode=0o755), Op("write", "d/f", data=1, mode=0o644))),
            Commit((Op("symlink", "d", target="."),)),
        ),
    ),
    "delta against a fifo hangs": Program(
        False, (App("fifo", "p"), Commit((Op("write", "p", data=1, send="delta"),)))
    ),
    # a scan that cannot list d forgets the ancestors below it: once the app
    # makes d readable again, its edit of d/f reads as untracked, and is lost
    "unlistable folder forgets ancestors": Program(
        False,
        (
            Commit((Op("mkdirs", "d", mode=0o755), Op("write", "d/f", data=1, mode=0o644))),
            App("write", "d/f"),
            App("chmod", "d", mode=0o000),
            Sidecar("session"),
            App("chmod", "d", mode=0o755),
            Commit((Op("write", "d/f", data=2, mode=0o644),)),
        ),
    ),
    # a folder sync may list but not enter: every later manifest scan raises
    # PermissionError (the session's Hello fails)
    "folder without x": Program(
        False,
        (
            Commit((Op("mkdirs", "d/e", mode=0o755),)),
            Commit((Op("chmod", "d", mode=0o600),)),
            Sidecar("session"),
        ),
    ),
}


def _known(test: Callable[[Program], None]) -> Callable[[Program], None]:
    for program in KNOWN.values():
        test = example(program)(test)
    return test


class _Draws:
    """A :class:`~tests.support.applier_model.Chooser` over hypothesis'
    draws: integers shrink towards 0, the simplest choice."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def int(self, n: int) -> int:
        return self._draw(st.integers(0, n - 1))


@st.composite
def programs(draw: st.DrawFn) -> Program:
    return draw_program(_Draws(draw))


@pytest.mark.timeout(600)
@settings(
    max_examples=int(os.environ.get("APPLIER_EXAMPLES", "200")),
    derandomize=not os.environ.get("APPLIER_RANDOM"),
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@_known
@given(programs())
def test_applier_keeps_the_invariant(program: Program) -> None:
    check(program)
