"""Shared parts of the agent benchmarks: the Kubernetes emulator from the
tests, a real ``devstack agent`` process, and its memory (Linux /proc)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.kube import EmulatorThread  # noqa: E402
from tests.support.net import free_port, wait_until  # noqa: E402


def start_agent(
    kube: EmulatorThread, workdir: Path, *, identity: str = "bench", args: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """``devstack agent`` against the emulator, with ``args`` appended to its
    command line; returns (process, API port)."""
    kubeconfig = kube.kubeconfig(workdir / "kubeconfig")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVSTACK_", "KUBE"))}
    env.update({"POD_NAME": identity, "DEVSTACK_LOG_LEVEL": "warning"})
    log = open(workdir / f"agent-{identity}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.cli.main",
            "agent",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            f"127.0.0.1:{port}",
            *args,
        ],
        env=env,
        stderr=log,
        stdout=log,
    )
    return proc, port


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait(predicate: Callable[[], object], timeout: float, interval: float = 0.005) -> float:
    """Poll ``predicate`` until true; return the moment (``perf_counter``) it was."""
    wait_until(predicate, timeout=timeout, interval=interval)
    return time.perf_counter()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
