"""A person connects to their sidecar through the cluster's Traefik entry
point: gRPC as h2c, routed by host, with no kubectl exec or port-forward."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sync import Sidecar, devstack_cmd, tree_state
from tests.support.traefik_file import FileTraefik

HOST = "sync--hello--alice.localtest.me"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Sidecar, FileTraefik]]:
    ws = tmp_path / "ws"
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text("tok")
    sc = Sidecar(ws, token).start()
    dynamic = {
        "http": {
            "routers": {
                "sync": {"rule": f"Host(`{HOST}`)", "service": "sync", "entryPoints": ["web"]}
            },
            "services": {
                "sync": {"loadBalancer": {"servers": [{"url": f"h2c://127.0.0.1:{sc.port}"}]}}
            },
        }
    }
    tr = FileTraefik(tmp_path, dynamic).start(["sync"])
    yield sc, tr
    tr.stop()
    sc.stop()


def test_connect_through_traefik_by_host(
    stack: tuple[Sidecar, FileTraefik], tmp_path: Path
) -> None:
    import subprocess

    sc, tr = stack
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.py").write_text("print('through traefik')\n")
    (src / "blob").write_bytes(os.urandom(2_000_000))
    cmd = devstack_cmd(
        "connect", str(src), "--to", f"127.0.0.1:{tr.port}", "--authority", HOST,
        "--token-file", str(sc.token_file), "--once",
    )  # fmt: skip
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert tree_state(sc.workspace) == tree_state(src)
    # Without the right host Traefik has no route: one clear line, exit 2.
    cmd[cmd.index(HOST)] = "nobody.localtest.me"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    assert r.stderr.startswith("devstack connect: ") and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one line, even if it took a retry
