"""``devstack agent`` as a process, against the testbed's real API server:
it starts, routes a Service, serves its HTTP API, and on SIGTERM stops
cleanly, releasing its Lease on the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devstack.core.routing import SERVICE_LABEL
from tests.support.net import free_port
from tests.support.testbed import Kube, Testbed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_command_runs_serves_and_stops_cleanly(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "shop", "namespace": namespace, "labels": {SERVICE_LABEL: "shop"}},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9}]},
        }
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVSTACK_", "KUBE"))}
    env.update({"POD_NAME": "agent-cli", "DEVSTACK_LEASE_NAMESPACE": namespace})
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.cli.main", "agent",
             "--kubeconfig", str(testbed.admin_kubeconfig),
             "--namespace", namespace, "--listen", f"127.0.0.1:{port}"],
            env=env,
            stderr=err,
        )  # fmt: skip
    try:
        wait_for(lambda: _ready(port), timeout=90)
        route = f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/ingressroutes/devstack-shop"
        wait_for(lambda: admin.maybe(route), timeout=90)
        body = httpx.get(f"http://127.0.0.1:{port}/v1/routes", timeout=5).json()
        assert body["services"][0]["host"] == "shop.localtest.me"
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/devstack-agent"
        assert admin.get(lease_path)["spec"]["holderIdentity"] == "agent-cli"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    log = stderr.read_text()
    assert code == 0, log[-3000:]
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "agent.started" in names and "agent.write" in names and names[-1] == "agent.stopped"
    # it let go of its Lease on the way out
    assert admin.get(lease_path)["spec"].get("holderIdentity", "") == ""
