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


@pytest.mark.timeout(600)
def test_a_short_fuzzer_run_finds_nothing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    subprocess.run(
        [sys.executable, str(FUZZER), "--seed-corpus", str(corpus), str(SEEDS)], check=True
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZER),
            str(corpus),
            f"-atheris_runs={RUNS}",
            "-seed=1",
            # Off: Linux keeps a process's peak RSS across exec, so the
            # fuzzer would count the pytest process that forked it.
            "-rss_limit_mb=0",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        timeout=540,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    done = re.findall(r"fuzz_applier: (\d+) executions", out)
    assert done and int(done[-1]) == RUNS, out[-2000:]
