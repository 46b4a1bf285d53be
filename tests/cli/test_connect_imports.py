"""`devstack connect` imports only what it needs: every run pays its
interpreter start-up before the first byte leaves, so `connect --help`,
`connect PATH --to ADDR --token-file FILE` and `--once` load no Helmfile
reader (nor its jsonschema), no Kubernetes client, no AWS SDK, no rich and no
importlib.metadata (only `--version` reads the distribution's metadata). Each
case runs the real command in a fresh interpreter and lists the modules it
ended with."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Modules (and their submodules) that no `connect PATH ...` nor `--help` needs.
HEAVY = (
    "devstack.core.helmfile",
    "jsonschema",
    "kubernetes_asyncio",
    "aiohttp",
    "boto3",
    "botocore",
    "rich",
    "importlib.metadata",
)

#: Runs ``python -m devstack.cli ARGS`` and writes the modules loaded to
#: ``$MODULES_OUT``: after a failure or ``--help`` (both end in SystemExit);
#: a finished ``--once`` sync ends with os._exit and writes nothing.
_WRAPPER = """
import os, runpy, sys
sys.argv = ["devstack", *sys.argv[1:]]
try:
    runpy.run_module("devstack.cli", run_name="__main__", alter_sys=True)
finally:
    with open(os.environ["MODULES_OUT"], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
"""


def run_devstack(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = tmp_path / "modules.txt"
    r = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            **os.environ,
            "MODULES_OUT": str(out),
            "XDG_CACHE_HOME": str(tmp_path / ".cache"),
        },
    )
    assert out.is_file(), f"no module list written (exit {r.returncode}): {r.stderr}"
    return r, set(out.read_text().split())


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture
def refused_address() -> Iterator[str]:
    """A 127.0.0.1 port bound but not listening: a connection to it is
    refused, and no other process can take the port while the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_connect_help_imports_no_heavy_module(tmp_path: Path) -> None:
    r, modules = run_devstack(tmp_path, "connect", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: devstack connect"), r.stdout
    assert "--token-file" in r.stdout and "--once" in r.stdout
    assert "devstack.cli.workflow_connect" in modules  # the list is the command's
    assert heavy_in(modules) == []


def test_a_refused_connect_once_imports_no_heavy_module_and_says_why(
    tmp_path: Path, refused_address: str
) -> None:
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "a.txt").write_text("a\n")
    token = tmp_path / "token"
    token.write_text("tok")
    r, modules = run_devstack(
        tmp_path,
        "connect",
        str(tree),
        "--to",
        refused_address,
        "--token-file",
        str(token),
        "--once",
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"devstack connect: cannot reach the sidecar at {refused_address}: connection refused, "
        "nothing listens there (start the sidecar, or fix the host or port in --to)\n"
    )
    assert "devstack.cli.syncer" in modules  # it got as far as dialling
    assert heavy_in(modules) == []


def test_version_alone_reads_the_distributions_metadata(tmp_path: Path) -> None:
    import importlib.metadata

    r, modules = run_devstack(tmp_path, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"devstack {importlib.metadata.version('devstack')}\n"
    assert "importlib.metadata" in modules


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_logging_keeps_rich_out_of_structlog_and_only_out_of_it() -> None:
    """structlog imports rich whenever it is installed (here it is, for
    import-linter); devstack's logging never uses it, so it is hidden from
    structlog's import, and only from that."""
    r = _python(
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('rich') is not None, 'rich is not installed'\n"
        "import devstack.core.logging, structlog.dev, structlog.tracebacks\n"
        "print('rich' in sys.modules, structlog.dev.rich, structlog.tracebacks.rich)\n"
        "import rich.console\n"
        "print(rich.console.__name__)\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == ["False None None", "rich.console", ""]


def test_logging_leaves_a_rich_already_loaded_to_structlog() -> None:
    r = _python(
        "import rich, devstack.core.logging, structlog.dev\nprint(structlog.dev.rich is rich)\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "True\n"
