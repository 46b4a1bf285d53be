"""The agent benchmarks still run, at a tiny size, and print every figure
they promise. Timings are printed by the benchmarks, never asserted here
(the full-size runs belong on a quiet machine). The benchmarks run on the
emulator on purpose (see bench/agent_scale.py's docstring)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
MS = r"\d+ ms"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def row(stdout: str, label: str, value: str) -> None:
    pattern = rf"^\| {re.escape(label)} \| {value} \|$"
    assert re.search(pattern, stdout, re.M), f"no row {label!r} in:\n{stdout}"


def test_route_latency_prints_create_and_delete_figures() -> None:
    out = run("agent_route_latency.py", "--runs", "2")
    assert "runs: 2" in out
    for label in (
        "Service created -> first request routed through Traefik to the copy",
        "Service deleted -> traffic back on the baseline",
        "Service deleted -> its IngressRoute deleted by the agent",
    ):
        row(out, label, rf"{MS} \| {MS} \| {MS}")


def test_scale_prints_cold_start_memory_and_one_change() -> None:
    out = run("agent_scale.py", "--owners", "3", "--services", "2")
    assert "services: 2, owners: 3, copies: 6" in out
    assert "objects to write: 8 IngressRoutes + 6 Middlewares" in out
    seconds = r"\d+\.\d\d s"
    row(out, "cold start: agent ready (caches synced)", seconds)
    row(out, "cold start: all objects written (reconcile time)", seconds)
    row(out, "agent RSS after cold start / peak", r"\d+ MiB / \d+ MiB")
    row(out, "agent CPU time for the cold start (rest: the emulator)", r"\d+\.\d s")
    row(out, "one change at size: copy created -> its IngressRoute written", MS)
    row(out, "one change at size: copy deleted -> its IngressRoute gone", MS)
    row(out, "warm restart: every key checked", seconds)
    # Not a timing: a restart over objects that are right writes nothing.
    row(out, "warm restart: writes made", "0")
    row(out, "agent RSS after warm restart / peak", r"\d+ MiB / \d+ MiB")


def test_usage_sampling_prints_cpu_per_interval_and_memory() -> None:
    out = run(
        "usage_sampling.py",
        *("--owners", "3", "--pods", "2", "--interval", "1", "--intervals", "2", "--churn", "2"),
    )
    assert "owners: 3, pods each: 2, interval: 1 s" in out
    seconds = r"\d+\.\d\d s"
    row(out, "agent ready, every owner in the records", rf"{seconds} \| {seconds}")
    row(out, "agent RSS", r"\d+ MiB \| \d+ MiB")
    row(out, "agent CPU per interval, steady", rf"{MS} \| {MS}")
    row(out, "agent CPU per interval, 2 Pods replaced each", rf"- \| {MS}")
    row(out, "agent RSS after the churn", r"- \| \d+ MiB")
    # Not a timing: the records hold the Pods' requested lifetimes, so the
    # pod-seconds are there, and no more than the Pods lived.
    match = re.search(r"^\| pod-seconds in the records \| - \| (\d+) \(.*: (\d+)\) \|$", out, re.M)
    assert match, out
    got, lived = int(match[1]), int(match[2])
    assert 0 < got <= lived, out
