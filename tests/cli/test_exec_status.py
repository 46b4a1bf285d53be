"""`devstack exec` and `devstack status` as a person runs them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.sync import Sidecar, devstack_cmd


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "hello.txt").write_text("hi from the pod\n")
    token = tmp_path / "token"
    token.write_text("t0k")
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(devstack_cmd(*args), capture_output=True, text=True, timeout=60)


def test_exec_streams_and_exits_with_the_code(sidecar: Sidecar) -> None:
    common = ["--to", sidecar.address, "--token-file", str(sidecar.token_file)]
    r = run("exec", *common, "--", "cat", "hello.txt")
    assert (r.returncode, r.stdout) == (0, "hi from the pod\n")
    r = run("exec", *common, "--", "sh", "-c", "echo bad >&2; exit 4")
    assert (r.returncode, r.stderr) == (4, "bad\n")
    r = run("exec", *common, "--", "definitely-not-a-command")
    assert r.returncode == 127
    assert "command not found" in r.stderr


def test_status_reports_counters(sidecar: Sidecar) -> None:
    r = run("status", "--to", sidecar.address, "--token-file", str(sidecar.token_file), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["workspace"] == "ws"
    assert data["protocol_version"] == 1


def test_status_output_is_snake_case_with_zeros(sidecar: Sidecar) -> None:
    """A fresh sidecar: every counter is there, 0, as a number; no reload yet."""
    common = ["--to", sidecar.address, "--token-file", str(sidecar.token_file)]
    r = run("status", *common, "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert list(data) == [
        "protocol_version",
        "workspace",
        "sessions",
        "batches_applied",
        "files_written",
        "bytes_received",
        "conflicts",
        "last_reload",
        "uptime_seconds",
        "replica",
    ]
    zeros = ("sessions", "batches_applied", "files_written", "bytes_received", "conflicts")
    assert {k: data[k] for k in zeros} == dict.fromkeys(zeros, 0)
    assert data["last_reload"] is None and data["replica"] is False
    assert isinstance(data["uptime_seconds"], float)
    r = run("status", *common, "-o", "yaml")
    assert r.returncode == 0, r.stderr
    as_yaml = yaml.safe_load(r.stdout)
    del as_yaml["uptime_seconds"], data["uptime_seconds"]  # time passed between the two
    assert as_yaml == data


def test_bad_token_is_one_line(sidecar: Sidecar, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("nope")
    r = run("status", "--to", sidecar.address, "--token-file", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "refused the token" in r.stderr
    r = run(
        "exec", "--to", sidecar.address, "--token-file", str(tmp_path / "missing"), "--", "true"
    )
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_sidecar_refuses_bad_options(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("")
    r = run("sidecar", "--workspace", str(tmp_path), "--token-file", str(token))
    assert r.returncode == 2 and "is empty" in r.stderr
    token.write_text("x")
    r = run("sidecar", "--workspace", str(tmp_path / "nope"), "--token-file", str(token))
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = run(
        "sidecar", "--workspace", str(tmp_path), "--token-file", str(token), "--file-mode", "99x"
    )
    assert r.returncode == 2 and "octal" in r.stderr
