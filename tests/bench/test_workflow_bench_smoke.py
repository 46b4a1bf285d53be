"""The workflow benchmarks (bench/workflow_local.py, bench/workflow_cluster.py)
still run, at a tiny size, and report every figure they promise, each with its
peer measured in the same run.

Timings are printed by the benchmarks, never asserted here. What is asserted
beyond "present and numeric" is what must hold whatever the machine's speed:
the order of the workflow's steps (Traefik answers before the first routed
request, a level's Pods are Ready no later than the next level's), the routed
request went through your copies, every save reached the app, and stdout
holds the report and nothing else.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
REPO = BENCH.parent


def _run(tmp_path: Path, *args: str, timeout: float) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, *args, "--json", str(out)],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert '"event"' not in done.stdout and "bench:" not in done.stdout
    return done.stdout, json.loads(out.read_text())


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _row(stdout: str, label: str) -> str:
    rows = [line for line in stdout.splitlines() if line.startswith(f"| {label}")]
    assert len(rows) == 1, f"no row {label!r} in:\n{stdout}"
    return rows[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_up_reports_the_stack_and_the_apps_by_hand(tmp_path: Path) -> None:
    stdout, result = _run(tmp_path, "workflow_local.py", "up", "--runs", "1", timeout=280)
    assert stdout.startswith("### devstack up --local: start to the first routed request")
    (run,) = result["runs"]
    (peer,) = result["by_hand"]
    # the workflow's order: the plan, AWS, Traefik, then every process; the
    # first routed request needs Traefik and comes before Ctrl-C
    assert 0 < run["plan"] < run["aws"] < run["traefik"] < run["ready"] < run["settled"]
    assert run["traefik"] < run["routed"]
    assert run["levels"] == 3
    assert _positive(run["stop"])
    # the peer started the same three apps, in needs order
    assert peer["services"] == ["stock", "api", "web"]
    assert _positive(peer["ready"]) and peer["ready"] == max(peer["each"].values())
    assert result["ratio"] == pytest.approx(run["routed"] / peer["ready"])
    for key, took in result["step_took_s"].items():
        assert all(_positive(x) for x in took["values"]), key
    assert f"| {run['routed']:.2f} |" in _row(stdout, "`devstack up --local -f examples/shop`")
    assert f"| {peer['ready']:.2f} |" in _row(stdout, "peer, same runs: the three apps by hand")
    _row(stdout, "devstack / peer (medians)")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_reload_reports_through_traefik_beside_sync_alone(tmp_path: Path) -> None:
    from devstack.sidecar.reload import DEFAULT_DEBOUNCE_MS

    stdout, result = _run(
        tmp_path, "workflow_local.py", "reload", "--saves", "2", "--peer-saves", "2", timeout=280
    )
    assert stdout.startswith("### devstack connect on the local stack")
    assert len(result["saves"]) == 2
    for s in result["saves"]:
        # the file lands before the new code answers; the reload waits its
        # debounce, so no answer comes sooner than that
        assert 0 < s["applied"] < s["answered"]
        assert s["reload_started"] < s["answered"]
        assert s["answered"] > DEFAULT_DEBOUNCE_MS / 1000
        assert 0 < s["answering_request"] < s["answered"]
    peer = result["peer_reload_latency_supervise"]
    assert peer["saves"] == 2 and peer["app_processes"] == 2  # each save: a new process
    assert peer["debounce_ms"] == DEFAULT_DEBOUNCE_MS
    for key in ("router", "direct"):
        assert all(_positive(x) for x in result["steady_request_s"][key]["values"])
    for label in (
        "the file in your copy's workspace",
        "**the new code answering through Traefik**",
        "peer, same run: `bench/reload_latency.py` supervise",
    ):
        assert _row(stdout, label).split(" | ")[1] == "2", label
    assert "Through Traefik / sync alone (medians): " in stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cluster_up_reports_devstack_and_plain_helm_installs(tmp_path: Path) -> None:
    stdout, result = _run(tmp_path, "workflow_cluster.py", "--runs", "1", timeout=880)
    assert stdout.startswith("### devstack up against the testbed: start to every Pod Ready")
    (dev,) = result["devstack"]
    (helm,) = result["helm"]
    levels = dev["levels"]
    assert levels == [["db", "cache"], ["api"], ["hello--alice"]]
    for run in (dev, helm):
        ready = run["pods_ready"]
        assert _positive(run["all_ready"])
        assert run["all_ready"] == max(ready[r] for level in levels for r in level)
        # needs order, seen from outside: no level is Ready before the one it needs
        for before, after in itertools.pairwise(levels):
            assert max(ready[r] for r in before) <= min(ready[r] for r in after)
    assert _positive(dev["first_install"]) and dev["first_install"] < dev["all_ready"]
    for run in (dev, helm):  # the hook ran before the copy's Pods (a pre-install hook)
        assert 0 < run["hook_s"] < run["pods_ready"]["hello--alice"]
    assert all(_positive(t) for t in dev["up_said_ready"].values())
    assert result["ratio"] == pytest.approx(dev["all_ready"] / helm["all_ready"])
    assert f"| {dev['all_ready']:.2f} |" in _row(stdout, "`devstack up hello` -> every Pod Ready")
    assert f"| {helm['all_ready']:.2f} |" in _row(stdout, "peer, same runs: helm-python-sdk")


def test_bench_run_names_the_workflow_benchmarks() -> None:
    done = subprocess.run(
        [str(BENCH / "run"), "workflow-local", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "{up,reload}" in done.stdout
