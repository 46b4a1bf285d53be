"""`devstack conflicts` and `devstack resolve` on the local stack: `devstack up
--local` runs the shop (examples/shop) with a copy of stock, whose source
folder is the laptop's tree; the copy's workspace is the pod's side. Both
commands find the copy's sidecar and tree from the stack's state, as
`devstack connect stock` does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from devstack.cli import localstack
from devstack.core.manifest import hash_bytes
from tests.scenarios.test_local_stack import project, up
from tests.scenarios.test_up import devstack, processes_under, shop_copy
from tests.support.aws import moto_endpoint  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OWNER = "grace"


def run(shop: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        devstack(command, "-f", str(shop), "--owner", OWNER, *args),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_conflicts_of_the_local_copy_settled_each_way(
    tmp_path: Path,
    moto_endpoint: str,  # noqa: F811
) -> None:
    shop = shop_copy(tmp_path)
    up(shop, OWNER, "stock", "--aws", moto_endpoint, "--detach")
    proj = project(shop, OWNER)
    try:
        state = localstack.read_state(proj)
        assert state is not None
        stock = state.service("stock")
        assert stock.copy is not None
        workspace = Path(stock.copy.workspace)
        source = shop / "stock"
        synced = run(shop, "connect", "stock", "--once")
        assert synced.returncode == 0, synced.stdout + synced.stderr

        done = run(shop, "conflicts", "stock")
        assert (done.returncode, done.stdout) == (0, "no conflicts\n"), done.stderr

        (source / "NOTES.txt").write_text("from the laptop\n")
        synced = run(shop, "connect", "stock", "--once")
        assert synced.returncode == 0, synced.stdout + synced.stderr

        # The app edits two files in its workspace; the laptop edits one of them too.
        app = workspace / "app.py"
        pod_app = app.read_text() + "# the pod's edit\n"
        app.write_text(pod_app)
        (workspace / "NOTES.txt").write_text("the pod again\n")
        (source / "NOTES.txt").write_text("the laptop again\n")
        synced = run(shop, "connect", "stock", "--once")
        assert synced.returncode == 3, synced.stdout + synced.stderr

        done = run(shop, "conflicts", "stock", "-o", "json")
        assert done.returncode == 0, done.stderr
        found = {c["path"]: c for c in json.loads(done.stdout)["conflicts"]}
        assert sorted(found) == ["NOTES.txt", "app.py"]
        assert found["NOTES.txt"]["changed_by"] == "both"
        assert found["app.py"]["changed_by"] == "pod"
        assert found["app.py"]["pod"]["digest"] == hash_bytes(pod_app.encode()).hex()
        assert found["app.py"]["hint"] == "devstack resolve stock app.py --take laptop|pod"

        # Keep the pod's app.py (copied into the source folder) and the laptop's notes.
        done = run(shop, "resolve", "stock", "app.py", "--take", "pod")
        assert done.returncode == 0, done.stderr
        assert (source / "app.py").read_text() == pod_app
        done = run(shop, "resolve", "stock", "NOTES.txt", "--take", "laptop")
        assert done.returncode == 0, done.stderr
        synced = run(shop, "connect", "stock", "--once")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert (workspace / "NOTES.txt").read_text() == "the laptop again\n"
        assert (workspace / "app.py").read_text() == pod_app
        done = run(shop, "conflicts", "stock")
        assert (done.returncode, done.stdout) == (0, "no conflicts\n"), done.stderr

        # A service the stack runs no copy of is one line.
        done = run(shop, "conflicts", "web")
        assert done.returncode == 2 and "no copy of web" in done.stderr, done.stderr
    finally:
        localstack.down(proj)
    assert processes_under(tmp_path) == []
