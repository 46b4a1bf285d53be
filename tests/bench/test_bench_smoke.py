"""The sync benchmark still runs: its tree generator is deterministic, and
the devstack part completes at a tiny size (``--quick --only devstack``).
Timings are printed by the benchmark, never asserted here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_generated_tree_is_deterministic_and_has_the_asked_shape(tmp_path: Path) -> None:
    tree = _load("_tree")
    a = tree.generate(tmp_path / "a", files=120, binaries=2, binary_mib=(1, 1))
    b = tree.generate(tmp_path / "b", files=120, binaries=2, binary_mib=(1, 1))
    c = tree.generate(tmp_path / "c", files=120, binaries=2, binary_mib=(1, 1), seed=99)
    assert a == b
    assert c.files == a.files
    assert a.files == 120 == tree.count_files(tmp_path / "a")
    assert a.bytes == sum(p.stat().st_size for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(list((tmp_path / "a" / "assets").iterdir())) == 2
    assert tree.tree_digest(tmp_path / "a") == tree.tree_digest(tmp_path / "b")
    assert tree.tree_digest(tmp_path / "a") != tree.tree_digest(tmp_path / "c")


def test_quick_devstack_run_reports_every_devstack_figure(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "sync_bench.py"),
            "--quick",
            "--only",
            "devstack",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    # Only devstack ran, and every devstack measurement produced a number.
    assert set(result["initial"]["runs_s"]) == {"devstack"}
    assert result["initial"]["runs_s"]["devstack"][0] > 0
    assert result["noop"]["devstack"]["median_s"] > 0
    assert "rsync-pipe" not in result["noop"]
    assert set(result["latency"]) == {"devstack"}
    assert result["latency"]["devstack"]["saves"] == result["sizes"]["saves"]
    bytes_ = result["bytes"]["devstack"]
    assert 0 < bytes_["client_counter_bytes_sent"] <= bytes_["wire_bytes_up"]
    assert result["rss"]["idle_kib"][0] > 0
    # The table names each target beside its figure, and the trees are gone.
    assert "| what | target | measured | result |" in done.stdout
    assert "no-op resync" in done.stdout
    assert not (tmp_path / "work").exists()
