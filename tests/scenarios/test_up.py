"""`make up`: the example shop on the local stack, as a newcomer runs it.

`make up` is `devstack up --local -f examples/shop`. `--smoke` starts the
same stack (moto or LocalStack with the shop's queue provisioned for the
baseline and for you, the three baselines in `needs` order, your copies
under sidecars, real Traefik with the agent's routes, the embedded sync),
checks each part once from the outside, stops it and exits. Without
`--smoke` it stays up until Ctrl-C, and Ctrl-C stops it all.

Each test runs on a copy of examples/shop (and of the chart its Helmfile
names), so its state (`.devstack/`) is its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.aws import localstack_endpoint  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]

CHECKS = [
    "an untagged request reaches every baseline (3 services)",
    "x-devstack-route reaches your copies, 2 hop(s) deep",
    "baggage among other members reaches your copies",
    "alice2 does not reach alice",
    "the preview URL reaches your copies with your routing key",
    "provisioned resources: your copy uses its own queue, the baseline its own",
    "a save reaches your copy of stock through sync and reload",
    "the baseline is untouched",
]


def devstack(*args: str) -> list[str]:
    return [sys.executable, "-m", "devstack.cli", *args]


def shop_copy(tmp_path: Path) -> Path:
    """examples/shop and examples/chart (its releases' chart) under ``tmp_path``."""
    for name in ("shop", "chart"):
        shutil.copytree(
            ROOT / "examples" / name,
            tmp_path / "examples" / name,
            ignore=shutil.ignore_patterns("__pycache__", ".devstack"),
        )
    return tmp_path / "examples" / "shop"


def makefile_up_command() -> list[str]:
    """The `devstack` arguments of the Makefile's `up` target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    recipe = lines[lines.index("up: venv") + 1].strip().lstrip("@")
    words = recipe.split()
    assert words[0] == "$(VENV)/bin/devstack", recipe
    return [w for w in words[1:] if not w.startswith("$(")]


def run_smoke(shop: Path, *extra: str) -> list[str]:
    args = makefile_up_command()
    # `make up` names the checkout's shop; run the same command on the copy.
    args[args.index("-f") + 1] = str(shop)
    done = subprocess.run(
        devstack(*args, "--smoke", "--owner", "alice", "--port", "0", *extra),
        capture_output=True,
        text=True,
        timeout=480,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return lines


def assert_every_check_passed(lines: list[str]) -> None:
    for check in CHECKS:
        assert any(line.startswith("ok") and check in line for line in lines), (check, lines)
    assert not any(line.startswith("FAIL") for line in lines), lines


def processes_under(path: Path) -> list[str]:
    """Every process whose command line or working folder is under ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(path) in cmdline or cwd.startswith(str(path)):
            found.append(f"{proc.name}: {cmdline} (in {cwd})")
    return found


def test_make_up_runs_the_shop_on_the_local_stack() -> None:
    args = makefile_up_command()
    assert args[:2] == ["up", "--local"], args
    assert Path(args[args.index("-f") + 1]) == Path("examples/shop"), args
    assert (ROOT / "examples" / "shop" / "helmfile.yaml").is_file()


def test_up_with_its_embedded_aws_endpoint(tmp_path: Path) -> None:
    shop = shop_copy(tmp_path)
    assert_every_check_passed(run_smoke(shop))
    assert not (shop / ".devstack").exists(), "the smoke run left its state behind"
    assert processes_under(tmp_path) == []


def test_up_provisioning_into_localstack(tmp_path: Path, localstack_endpoint: str) -> None:  # noqa: F811
    assert_every_check_passed(run_smoke(shop_copy(tmp_path), "--aws", localstack_endpoint))


def test_up_never_edits_the_callers_tree(tmp_path: Path) -> None:
    shop = shop_copy(tmp_path)
    before = {p: p.read_bytes() for p in shop.rglob("*.py")}
    assert_every_check_passed(run_smoke(shop))
    assert {p: p.read_bytes() for p in shop.rglob("*.py")} == before


def test_ctrl_c_stops_the_whole_stack(tmp_path: Path) -> None:
    shop = shop_copy(tmp_path)
    proc = subprocess.Popen(
        devstack("up", "--local", "-f", str(shop), "--owner", "alice", "--port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 240
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
    assert any("Edit MESSAGE in" in line for line in seen), "".join(seen)
    req = urllib.request.Request(
        url, headers={"Host": "web.localtest.me", "x-devstack-route": "alice"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.read().count(b'"owner": "alice"') == 3
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), "".join(seen) + rest
    # Traefik, moto, the baselines, the sidecars and the apps they supervised are gone.
    with pytest.raises(OSError):
        urllib.request.urlopen(req, timeout=5)
    assert processes_under(tmp_path) == []
    assert not (shop / ".devstack" / "local.json").exists()
