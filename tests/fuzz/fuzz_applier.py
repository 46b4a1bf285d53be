"""Coverage-guided fuzzer (atheris, libFuzzer) for the sidecar's batch applier.

Each input is decoded, choice by choice, through atheris'
``FuzzedDataProvider`` into a program of app actions and batches of sync ops
(tests/support/applier_model.py, which the property test
tests/sidecar/test_applier_property.py draws from too), so coverage of the
applier and of the program's own branches guides the mutations through op
sequences. The program runs against a real ``Workspace``; a broken invariant
(a symlink sync made or moved that leads out, anything outside changed, a
setuid/setgid/sticky bit, something half-written, an app file safe mode
should keep) raises ``AssertionError`` with the program and every op's
outcome, and libFuzzer saves the input as a crash file.

CI runs it briefly (tests/sidecar/test_fuzz_applier.py). A longer run by hand,
keeping what it learns in a corpus folder, seeded with random programs (root
is best: see the model's docstring on why the sidecar's steps run as uid
65534)::

    .venv/bin/python tests/fuzz/fuzz_applier.py --seed-corpus /tmp/applier-corpus 200
    .venv/bin/python tests/fuzz/fuzz_applier.py /tmp/applier-corpus \\
        -max_total_time=3600 -artifact_prefix=/tmp/applier- -print_final_stats=1

``-atheris_runs=N`` stops after N executions instead. Replay a crash (prints
the program and the violation)::

    .venv/bin/python tests/fuzz/fuzz_applier.py /tmp/applier-crash-<sha1>

Each crash input, once fixed, goes into ``tests/fuzz/crashes/`` named for
what it broke; CI replays them all (tests/sidecar/test_fuzz_applier.py).

``APPLIER_SKIP=d-staging,c-mode`` looks past violations that are known and not
fixed yet (keys: see ``Found`` in the model). Executions and executions per
second are printed at every power of two, and at the end of an
``-atheris_runs`` run (libFuzzer's own ``-runs`` and ``-max_total_time`` exit
without Python's ``atexit``; libFuzzer prints its own exec/s then).
"""

from __future__ import annotations

import atexit
import random
import sys
import time
from pathlib import Path

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for tests.support

with atheris.instrument_imports(include=["devstack", "tests.support.applier_model"]):
    from tests.support.applier_model import check, draw_program


class _Provider:
    """A ``Chooser`` over the fuzzer's input: one byte per choice (fewer
    than 256 options), 0 once the input is used up, so a short input is a
    short program."""

    def __init__(self, data: bytes) -> None:
        self._fdp = atheris.FuzzedDataProvider(data)

    def int(self, n: int) -> int:
        return int(self._fdp.ConsumeIntInRange(0, n - 1))


_runs = 0
_start = time.monotonic()


def _stats() -> None:
    took = time.monotonic() - _start
    print(
        f"fuzz_applier: {_runs} executions in {took:.1f} s ({_runs / max(took, 1e-9):.1f}/s)",
        flush=True,
    )


def test_one_input(data: bytes) -> None:
    global _runs
    _runs += 1
    if _runs & (_runs - 1) == 0:
        _stats()
    check(draw_program(_Provider(data)))


def seed_corpus(folder: Path, count: int) -> None:
    """``count`` random inputs (from a fixed seed) of 64 to 1024 bytes: whole
    programs from the first execution on, which mutations then refine."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"seed-{i:04d}").write_bytes(rng.randbytes(rng.randint(64, 1024)))


def main() -> None:
    if sys.argv[1:2] == ["--seed-corpus"]:
        seed_corpus(Path(sys.argv[2]), int(sys.argv[3]))
        return
    atexit.register(_stats)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
