"""The initial-sync profile (bench/sync_profile.py) still runs at a tiny
size and reports CPU per process, the three ways of staging a tree and the
digests; its pure parts read what py-spy and strace write, and the emulated
link (bench/_link.py) asks toxiproxy for the shape it promises. The link's
rows themselves are checked by tests/bench/test_bench_smoke.py, whose
``--quick`` run crosses it.

Timings are printed, never asserted as speeds. py-spy and strace are not
project dependencies (``bench/run sync-profile`` installs them), so the run
here leaves their parts out.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the bench modules import each other by name
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_profile_reports_cpu_per_process_and_the_staging_ways(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "sync_profile.py"),
            "--files",
            "60",
            "--binaries",
            "1",
            "--repeat",
            "1",
            "--only",
            "cpu,staging,digest",
            "--digest-seconds",
            "0.02",
            "--settle",
            "0",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "profile.md"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    res = json.loads(out.read_text())
    files = res["tree"]["files"]
    assert files == 60
    for name in ("devstack-raw", "devstack"):
        med = res["cpu"]["median"][name]
        for key in ("wall_s", "connect_cpu_s", "sidecar_cpu_s"):
            assert _positive(med[key]), (name, key)
        assert med["connect_sys_s"] <= med["connect_cpu_s"]
        assert med["sidecar_cpu_ms_per_1000_files"] == pytest.approx(
            med["sidecar_cpu_s"] * 1e6 / files
        )
    assert _positive(res["cpu"]["connect_help"]["median_wall_s"])
    stg = res["staging"]
    assert stg["files"] == files
    assert set(stg["median"]) == {"in-place", "per-file-staging", "folder-staging"}
    assert {"sha256", "blake2b-256"} <= set(res["digest"])
    assert all(_positive(by["3000"]["mb_s"]) for by in res["digest"].values())
    assert done.stdout.startswith("### devstack initial-sync profile")
    assert "sidecar CPU per 1,000 files" in done.stdout


@pytest.mark.parametrize("how", ["in-place", "per-file-staging", "folder-staging"])
def test_each_staging_way_writes_the_same_tree(tmp_path: Path, how: str) -> None:
    prof = _load("sync_profile")
    tree = _load("_tree")
    src = tmp_path / "src"
    tree.generate(src, files=40, binaries=1, binary_mib=(1, 1))
    dirs, files = prof._tree_listing(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    prof.write_tree(dst, dirs, files, how)
    assert tree.count_files(dst) == 40
    assert tree.tree_digest(dst) == tree.tree_digest(src)
    assert not (tmp_path / "dst.staging").exists()


def test_profile_aggregates_self_and_cumulative_once_per_stack() -> None:
    prof = _load("sync_profile")
    text = "\n".join(
        [
            "<module> (/r/cli/devstack/cli/main.py);run (/r/cli/devstack/cli/syncer.py);"
            "hash_fd (/r/core/devstack/core/manifest.py) 7",
            "<module> (/r/cli/devstack/cli/main.py);run (/r/cli/devstack/cli/syncer.py) 2",
            # recursion: counted once in the inclusive figure
            "walk (/r/core/devstack/core/manifest.py);walk (/r/core/devstack/core/manifest.py) 3",
            "<module> (/r/cli/devstack/cli/main.py);_find_and_load (<frozen importlib._bootstrap>);"
            "exec_module (<frozen importlib._bootstrap_external>) 5",
            "not a stack line",
        ]
    )
    p = prof.Profile(text)
    assert p.total == 17
    assert p.imports == 5
    assert p.self_["hash_fd (devstack/core/manifest.py)"] == 7
    assert p.self_["run (devstack/cli/syncer.py)"] == 2
    assert p.incl["run (devstack/cli/syncer.py)"] == 9
    assert p.incl["walk (devstack/core/manifest.py)"] == 3
    cumulative = dict(p.cumulative(10))
    assert "<module> (devstack/cli/main.py)" not in cumulative  # the entry point's spine
    assert not any("<frozen" in k for k in cumulative)
    assert cumulative["run (devstack/cli/syncer.py)"] == 9


def test_strace_summary_is_read_per_call_name() -> None:
    prof = _load("sync_profile")
    text = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.004000           4      1000           openat
 30.00    0.003000           3      1000        12 newfstatat
 30.00    0.003000          30       100           renameat2
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           4      2100        12 total
"""
    calls = prof.parse_strace_c(text)
    assert calls == {"openat": 1000, "newfstatat": 1000, "renameat2": 100}
    got = prof._per_file(calls, 100, 2)
    assert got["calls"] == 2100
    assert got["per_file"] == 21
    assert got["top_per_file"] == [("openat", 10.0), ("newfstatat", 10.0)]


def test_link_shape_asks_toxiproxy_for_half_the_round_trip_each_way() -> None:
    link = _load("_link")
    shape = link.Shape(rtt_ms=20, mbit_s=100)
    assert shape.latency_ms == 10
    assert shape.rate_kb_s == 12_500
    assert shape.ideal_s(12_500_000) == pytest.approx(1.01)
    assert link.Shape(rtt_ms=50, mbit_s=8).rate_kb_s == 1_000


def test_compression_counts_what_each_way_sends(tmp_path: Path) -> None:
    """Three copies of 40 KB of noise: zlib, file by file or as one 32 KiB
    window stream, sends each whole; the session stream sends one."""
    prof = _load("sync_profile")
    noise = random.Random(2).randbytes(40_000)
    for k in range(3):
        (tmp_path / f"copy{k}.txt").write_bytes(noise)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_bytes(noise)  # left out, as connect ignores it
    [got] = prof.measure_compression([tmp_path])
    assert (got["files"], got["bytes"]) == (3, 120_000)
    assert got["zlib_bytes"] >= 120_000 and got["gzip_stream_bytes"] >= 120_000
    assert 40_000 <= got["stream_bytes"] < 42_000
    assert "| stream / zlib |" in prof.report({**_minimal_result(), "compression": [got]})


def _minimal_result() -> dict[str, Any]:
    machine = {
        "nproc": 2,
        "cpu": "x",
        "kernel": "k",
        "filesystem": "ext4",
        "python": "3",
        "rsync": "3",
    }
    return {
        "machine": machine,
        "tree": {"files": 1, "dirs": 1, "bytes": 1},
        "started": "now",
        "loadavg_1m": 0.0,
    }
