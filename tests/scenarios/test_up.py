"""`make up`: the whole inner loop on this machine, as a newcomer runs it.

`devstack up --smoke` starts the same stack as `make up` (provisioning, the
baseline, the sidecar supervising your copy, real Traefik with the agent's
routes, `devstack connect`), checks each part once from the outside and
exits. Without `--smoke` it stays up until Ctrl-C, and Ctrl-C stops it all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.aws import localstack_endpoint  # noqa: F401

pytestmark = pytest.mark.slow

CHECKS = [
    "untagged request reaches the baseline",
    "x-devstack-route reaches your copy",
    "baggage among other members reaches your copy",
    "alice2 does not reach alice",
    "the preview URL reaches your copy",
    "the preview URL tags the request with your routing key",
    "provisioned resources: yours are your own, the baseline's its own",
    "a save reaches your copy through sync and reload",
    "the baseline is untouched",
]


def devstack(*args: str) -> list[str]:
    return [sys.executable, "-m", "devstack.cli", *args]


def run_smoke(tmp_path: Path, *extra: str) -> list[str]:
    done = subprocess.run(
        devstack(
            "up",
            "--smoke",
            "--owner",
            "alice",
            "--port",
            "0",
            "--dir",
            str(tmp_path / "up"),
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return lines


def assert_every_check_passed(lines: list[str]) -> None:
    for check in CHECKS:
        assert any(line.startswith("ok") and check in line for line in lines), (check, lines)
    assert not any(line.startswith("FAIL") for line in lines), lines


def test_up_with_its_embedded_aws_endpoint(tmp_path: Path) -> None:
    assert_every_check_passed(run_smoke(tmp_path))


def test_up_provisioning_into_localstack(tmp_path: Path, localstack_endpoint: str) -> None:  # noqa: F811
    assert_every_check_passed(run_smoke(tmp_path, "--aws", localstack_endpoint))


def test_up_never_edits_the_callers_tree(tmp_path: Path) -> None:
    source = tmp_path / "src"
    example = Path(__file__).resolve().parents[2] / "examples" / "hello"
    source.mkdir()
    for name in ("app.py", "devstack.yaml"):
        (source / name).write_bytes((example / name).read_bytes())
    before = (source / "app.py").read_bytes()
    assert_every_check_passed(run_smoke(tmp_path, "--source", str(source)))
    assert (source / "app.py").read_bytes() == before


def test_ctrl_c_stops_the_whole_stack(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        devstack("up", "--owner", "alice", "--port", "0", "--dir", str(tmp_path / "up")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    url = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "baseline:" in line and "curl" in line:
            url = line.split()[-1]
        if line.startswith("Logs:"):
            break
    assert url is not None, "".join(seen)
    req = urllib.request.Request(
        url, headers={"Host": "hello.localtest.me", "x-devstack-route": "alice"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert b'"owner": "alice"' in resp.read()
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), "".join(seen) + rest
    # Traefik, the baseline, the sidecar and the app it supervised are gone: nothing answers.
    with pytest.raises(OSError):
        urllib.request.urlopen(req, timeout=2)
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "up")], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout
