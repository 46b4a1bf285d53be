"""The sync benchmark still runs end to end at ``--quick`` size and reports
every figure of its table as a number (the emulated-link rows too), with
each peer either measured in the same run or reported absent (CI machines
start without rsync and syncthing; ``bench/run`` installs them, these tests
never do).

Timings are printed by the benchmark, never asserted here. What is asserted
beyond "present and numeric" are correctness properties: a one-line edit to
a large file moves as a delta (far fewer bytes than the file), every save
reaches the app, and stdout holds the table and nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.testbed import binary_paths, missing_message

BENCH = Path(__file__).resolve().parents[2] / "bench"
PEERS = ("rsync", "syncthing")

# Every figure of the summary table, and the peer tool each is measured against.
FIGURES: dict[str, str | None] = {
    "initial-raw:rsync-pipe": "rsync",
    "initial-raw:rsync-daemon": "rsync",
    "initial-raw:tar": "tar",
    "initial-raw:cp": "cp",
    "initial:rsync-pipe": "rsync",
    "initial:rsync-daemon": "rsync",
    "initial:tar": "tar",
    "initial:cp": "cp",
    "initial:syncthing": "syncthing",
    "seeded:rsync-checksum": "rsync",
    "seeded:rsync-a": "rsync",
    "seeded-cold:rsync-checksum": "rsync",
    "seeded-laptop:rsync-checksum": "rsync",
    "seeded-asset:cold-sidecar": "devstack",
    "startup": None,
    "sidecar-cpu:devstack": None,
    "sidecar-cpu:devstack-raw": None,
    # Over the emulated link (tests/bench/test_sync_link_smoke.py checks the link).
    "link:best": "tar",
    "link-raw:best": "tar",
    "link:floor": "tar",
    "link:rsync-a": "rsync",
    "link:rsync-az": "rsync",
    "link:tar-gzip": "tar",
    "link:tar": "tar",
    "link:syncthing": "syncthing",
    "noop:rsync-pipe": "rsync",
    "latency-median:syncthing": "syncthing",
    "latency-median:tar-one-file": "tar",
    "latency-median:rsync-one-file": "rsync",
    "latency-p99:syncthing": "syncthing",
    "latency-p99:tar-one-file": "tar",
    "latency-p99:rsync-one-file": "rsync",
    "bytes:rsync-pipe": "rsync",
    "reload-median:signal": None,
    "reload-p99:signal": None,
    "reload-median:supervise": None,
    "reload-p99:supervise": None,
    "rss-idle": None,
    "rss-initial-sync": None,
}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _path_without(tmp_path: Path, hidden: tuple[str, ...]) -> str:
    """A PATH with every program of the current one except ``hidden``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = bin_dir / entry.name
            if entry.name in hidden or target.exists() or target.is_symlink():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return str(bin_dir)


def _run_quick(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path / "result.json"
    md = tmp_path / "result.md"
    work = tmp_path / "work"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "sync_bench.py"),
            "--quick",
            "--workdir",
            str(work),
            "--json",
            str(out),
            "--markdown",
            str(md),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert md.read_text() == done.stdout
    return json.loads(out.read_text()), done.stdout, work


def _check_every_figure(result: dict[str, Any], stdout: str, work: Path, absent: set[str]) -> None:
    assert result["peers"] == {
        t: ("absent" if t in absent else "present") for t in ("cp", "tar", *PEERS)
    }
    table = {row["key"]: row for row in result["table"]}
    assert set(table) == set(FIGURES)
    for key, row in table.items():
        assert _positive(row["devstack"]), row
        tool = FIGURES[key]
        if tool is None:
            assert row["peer"] == "" and row["ratio"] is None, row
        elif tool in absent:
            assert (row["peer_status"], row["peer_value"], row["ratio"]) == ("absent", None, None)
        else:
            assert row["peer_status"] == "measured", row
            assert _positive(row["peer_value"]), row
            assert row["ratio"] == pytest.approx(row["devstack"] / row["peer_value"])
        assert row["result"] in ("PASS", "MISS", "-")
        assert f"| {row['what']} |" in stdout, row

    # A one-line edit moves as a delta: a small fraction of the file, though
    # more than a session that sends nothing.
    dev = result["bytes"]["devstack"]
    assert dev["wire_bytes_up"] < result["bytes"]["file_bytes"] / 10
    assert dev["wire_bytes_up"] > dev["noop_session_wire_bytes_up"] > 0
    assert table["bytes:rsync-pipe"]["devstack"] == dev["wire_bytes_up"]

    # Every save reached the app: with `signal`, at least one signal per
    # save; with `supervise`, each save was served by a newly started app.
    saves = result["sizes"]["reload_saves"]
    for got in result["reload"]["signal"].values():
        assert got["saves"] == saves
        assert got["signals_handled"] >= saves
    for got in result["reload"]["supervise"].values():
        assert got["saves"] == saves
        assert got["app_processes"] == saves
    assert result["latency"]["devstack"]["saves"] == result["sizes"]["saves"]
    _check_link(result, absent)

    # stdout is the table; child processes wrote to their own log files,
    # which outlive the trees.
    assert stdout.startswith("### devstack sync benchmark")
    assert '"event"' not in stdout and "connect.session" not in stdout
    assert sorted(p.name for p in work.iterdir()) == ["logs"]
    logs = sorted(p.name for p in (work / "logs").iterdir())
    assert any(n.endswith("-sidecar.log") for n in logs)
    assert any(n.endswith("-connect-watch.log") for n in logs)


def _check_link(result: dict[str, Any], absent: set[str]) -> None:
    """The emulated link is really the link: the calibration saw at least
    the latency and at most the rate asked for, and every tool that sends
    the tree uncompressed took at least its bytes at the link's rate (so
    its traffic crossed the link, not loopback). The best-of row compares
    with the fastest of rsync -a, rsync -az and tar | gzip."""
    link = result["link"]
    shape = link["shape"]
    rate_bytes_s = shape["mbit_s"] * 1e6 / 8
    cal = link["calibration"]
    assert cal["rtt_ms"] >= shape["rtt_ms"]
    # A little slack: the far end's socket buffers hold the last bytes.
    assert cal["transfer_s"] >= 0.9 * cal["transfer_bytes"] / rate_bytes_s
    tree_bytes = link["tree"]["bytes"]
    for name in ("rsync-a", "tar", "devstack-raw", "syncthing"):
        if name.split("-")[0] in absent:
            assert name not in link["runs_s"]
            continue
        for took in link["runs_s"][name]:
            assert took >= 0.9 * tree_bytes / rate_bytes_s, (name, took)
    table = {row["key"]: row for row in result["table"]}
    med = link["median_s"]
    best = min(med[k] for k in ("rsync-a", "rsync-az", "tar-gzip") if k in med)
    assert table["link:best"]["peer_value"] == best
    assert (table["link:best"]["devstack"], table["link:best"]["target"]) == (
        med["devstack"],
        "ratio <= 0.8",
    )
    assert table["link-raw:best"]["devstack"] == med["devstack-raw"]
    floor = link["floor"]
    assert 0 < floor["gzip6_stream_bytes"] < tree_bytes
    assert table["link:floor"]["peer_value"] == floor["gzip6_stream_s"] < floor["raw_s"]


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


@pytest.mark.slow
@pytest.mark.timeout(600)
def _require_toxiproxy() -> None:
    """The emulated-link rows run through toxiproxy (scripts/testbed build)."""
    binary = binary_paths().get("toxiproxy-server")
    assert binary is not None and binary.is_file(), missing_message(["toxiproxy-server"])


def test_quick_run_reports_every_figure_with_the_peers_this_machine_has(tmp_path: Path) -> None:
    _require_toxiproxy()
    absent = {t for t in PEERS if shutil.which(t) is None}
    result, stdout, work = _run_quick(tmp_path, dict(os.environ))
    _check_every_figure(result, stdout, work, absent)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_without_rsync_and_syncthing_reports_them_absent(tmp_path: Path) -> None:
    _require_toxiproxy()
    env = {**os.environ, "PATH": _path_without(tmp_path, PEERS)}
    result, stdout, work = _run_quick(tmp_path, env)
    _check_every_figure(result, stdout, work, set(PEERS))
    assert "rsync over a pipe: absent" in stdout
