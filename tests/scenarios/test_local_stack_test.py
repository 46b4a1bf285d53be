"""`devstack test SERVICE` on the local stack: `devstack up --local` runs the
shop (examples/shop), and `devstack test stock` runs stock's declared tests
(`devstack.test` in its Helmfile: `python -m unittest -v`) in your copy's
workspace, through its sidecar, with the command's output and exit code; an
edit synced with `devstack connect stock` is what the tests then see (they run
in the synced tree, not in the source folder).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from devstack.cli import localstack
from tests.scenarios.test_local_stack import project, up
from tests.scenarios.test_up import devstack, processes_under, shop_copy
from tests.support.aws import moto_endpoint  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OWNER = "frank"


def run(shop: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``devstack COMMAND -f SHOP --owner frank ARGS...`` (what follows ``--`` is the command's)."""
    done = subprocess.run(
        devstack(command, "-f", str(shop), "--owner", OWNER, *args),
        capture_output=True,
        text=True,
        timeout=180,
    )
    # (a failing test's own traceback is the test's output; devstack's would name it)
    assert "devstack/cli/" not in done.stderr, done.stderr
    return done


def test_devstack_test_runs_the_declared_tests_in_the_synced_copy(
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

        # the declared command, in the copy's workspace: its output and exit code
        done = run(shop, "test", "stock")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "test_healthz (test_app.StockTest.test_healthz) ... ok" in done.stderr
        assert re.search(r"^Ran 2 tests in ", done.stderr, re.M), done.stderr
        assert done.stderr.rstrip().endswith("OK")
        # it runs in the workspace, with the copy's environment, and stdout is its own
        done = run(
            shop, "test", "stock", "--", "python", "-c",
            "import os; print(os.getcwd()); print(os.environ['DEVSTACK_OWNER'])",
        )  # fmt: skip
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        assert done.stdout.splitlines() == [str(workspace.resolve()), OWNER]

        # an edit and a new test in the source folder: not in the copy until synced
        source = shop / "stock"
        app = source / "app.py"
        app.write_text(re.sub(r"^MESSAGE = .*$", 'MESSAGE = "edited"', app.read_text(), flags=re.M))
        (source / "test_message.py").write_text(
            "import unittest\n\nimport app\n\n\n"
            "class MessageTest(unittest.TestCase):\n"
            "    def test_edited(self) -> None:\n"
            '        self.assertEqual(app.MESSAGE, "edited")\n'
        )
        done = run(shop, "test", "stock", "--", "python", "-m", "unittest", "test_message")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "No module named 'test_message'" in done.stderr

        synced = run(shop, "connect", "stock", "--once")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert (workspace / "test_message.py").exists()

        done = run(shop, "test", "stock")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "test_edited (test_message.MessageTest.test_edited) ... ok" in done.stderr
        assert re.search(r"^Ran 3 tests in ", done.stderr, re.M), done.stderr
        done = run(shop, "test", "stock", "--", "python", "-c", "import app; print(app.MESSAGE)")
        assert (done.returncode, done.stdout) == (0, "edited\n"), done.stderr

        # a failing test is the command's exit code, 1
        test = source / "test_message.py"
        test.write_text(test.read_text().replace('"edited")', '"not what it says")'))
        synced = run(shop, "connect", "stock", "--once")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        done = run(shop, "test", "stock")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "FAILED (failures=1)" in done.stderr
        assert "AssertionError: 'edited' != 'not what it says'" in done.stderr
    finally:
        localstack.down(proj)
    assert processes_under(tmp_path) == []
