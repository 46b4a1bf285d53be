"""The sidecar's server as a real process over a real gRPC connection: the
standard health service, and a graceful SIGTERM that stops the supervised
app and leaves it no sync token."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.sync import Sidecar, wait_until

SERVICE = "devstack.sync.v1.Sync"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

APP = """
import json, os, time
json.dump(dict(os.environ), open("env.json.tmp", "w"))
os.rename("env.json.tmp", "env.json")
open("app.pid.tmp", "w").write(str(os.getpid()))
os.rename("app.pid.tmp", "app.pid")
print("app up", flush=True)
while True:
    time.sleep(0.1)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_is_serving_then_not_serving_during_shutdown(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "token").write_text("health-token")
    sc = Sidecar(ws, tmp_path / "token").start()
    try:
        with grpc.insecure_channel(sc.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert check(stub, "") == SERVING
            assert check(stub, SERVICE) == SERVING
            with pytest.raises(grpc.RpcError) as e:
                check(stub, "no.such.Service")
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=60)
            assert next(watch).status == SERVING
            assert sc.proc is not None
            sc.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            watch.cancel()
        assert sc.proc.wait(30) == 0
    finally:
        sc.stop()


def test_sigterm_stops_the_supervised_app_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "app.py").write_text(APP)
    token = tmp_path / "token"
    token.write_text("the-sync-token")
    # However the sidecar found its token, the app must not.
    monkeypatch.setenv("DEVSTACK_TOKEN_FILE", str(token))
    monkeypatch.setenv("DEVSTACK_TOKEN", "the-sync-token")
    sc = Sidecar(
        ws, token, "--reload", "supervise", "--command", f"{sys.executable} app.py"
    ).start()
    try:
        wait_until(lambda: (ws / "app.pid").exists() and (ws / "env.json").exists(), what="app")
        pid = int((ws / "app.pid").read_text())
        assert alive(pid)
        env = json.loads((ws / "env.json").read_text())
        assert "DEVSTACK_TOKEN_FILE" not in env and "DEVSTACK_TOKEN" not in env
        assert not any("the-sync-token" in v or str(token) in v for v in env.values())
        with grpc.insecure_channel(sc.address) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=60
            )
            assert next(watch).status == SERVING
            assert sc.proc is not None
            sc.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            watch.cancel()
        assert sc.proc.wait(30) == 0
        assert not alive(pid)
        stops = ("sidecar.stopping", "sidecar.stopped")
        assert [e["event"] for e in sc.log if e["event"] in stops] == list(stops)
    finally:
        sc.stop()
        if (ws / "app.pid").exists():  # leave nothing behind if the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(int((ws / "app.pid").read_text()), signal.SIGKILL)
