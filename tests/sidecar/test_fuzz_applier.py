"""A short, reproducible run of the batch applier's fuzzer
(tests/fuzz/fuzz_applier.py, which also says how to run it for longer): a
corpus of random programs from a fixed seed, then mutations from a fixed
seed, a fixed number of executions, hash randomisation off."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_applier.py"
#: Random programs to start from, and executions in all (about 25 s).
SEEDS, RUNS = 100, 1000


def _fuzz(tmp_path: Path, *args: str, timeout: float) -> str:
    """Run the fuzzer with ``args`` (hash randomisation off); its output,
    once it exited 0."""
    proc = subprocess.run(
        # -rss_limit_mb=0: Linux keeps a process's peak RSS across exec, so
        # the fuzzer would count the pytest process that forked it.
        [sys.executable, str(FUZZER), *args, "-rss_limit_mb=0"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    return out


@pytest.mark.timeout(600)
def test_a_short_fuzzer_run_finds_nothing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    subprocess.run(
        [sys.executable, str(FUZZER), "--seed-corpus", str(corpus), str(SEEDS)], check=True
    )
    out = _fuzz(
        tmp_path,
        str(corpus),
        f"-atheris_runs={RUNS}",
        "-seed=1",
        f"-artifact_prefix={tmp_path}/",
        timeout=540,
    )
    done = re.findall(r"fuzz_applier: (\d+) executions", out)
    assert done and int(done[-1]) == RUNS, out[-2000:]


CRASHES = sorted((FUZZER.parent / "crashes").iterdir())


@pytest.mark.parametrize("crash", CRASHES, ids=[c.name for c in CRASHES])
def test_each_input_the_fuzzer_once_broke_the_applier_with_stays_fixed(
    crash: Path, tmp_path: Path
) -> None:
    """tests/fuzz/crashes holds the inputs of violations the fuzzer found
    and that were fixed, each named for what it broke: replayed, each runs
    clean."""
    out = _fuzz(tmp_path, str(crash), timeout=300)
    assert "fuzz_applier: 1 executions" in out, out[-2000:]
