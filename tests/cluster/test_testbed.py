"""The testbed itself (tests/support/testbed.py): every process listens on
127.0.0.1 only, a minted kubeconfig authenticates as its ServiceAccount, and
the API server can be stopped and started again under a running cluster."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.support.testbed import Kube, Testbed, condition, wait_condition, wait_for

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def _listening(pid: int) -> set[str]:
    """``address:port`` of every TCP socket the process listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    out = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN or fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            if family == 4:
                ip = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                ip = "::1" if address == "0" * 24 + "01000000" else f"v6:{address}"
            out.add(f"{ip}:{int(port, 16)}")
    return out


def test_every_component_listens_on_loopback_only(testbed: Testbed) -> None:
    seen = {}
    for name, component in testbed.components.items():
        assert component.process is not None, name
        seen[name] = _listening(component.process.pid)
        assert seen[name], f"{name} listens on nothing?"
        assert all(a.startswith("127.0.0.1:") for a in seen[name]), (name, seen[name])
    assert f"127.0.0.1:{testbed.apiserver_port}" in seen["kube-apiserver"]


def test_a_minted_kubeconfig_authenticates_as_the_service_account(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "robot", "namespace": namespace},
        }
    )
    path = testbed.service_account_kubeconfig(namespace, "robot", tmp_path / "robot.kubeconfig")
    config = yaml.safe_load(path.read_text())
    (user,) = config["users"]
    (cluster,) = config["clusters"]
    assert cluster["cluster"]["server"] == testbed.server
    with Kube(testbed.server, verify=testbed.pki.ca_cert, token=user["user"]["token"]) as robot:
        review = robot.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    info = review["status"]["userInfo"]
    assert info["username"] == f"system:serviceaccount:{namespace}:robot"
    assert f"system:serviceaccounts:{namespace}" in info["groups"]


def test_the_api_server_restarts_under_a_running_cluster(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "before", "namespace": namespace},
            "data": {"kept": "yes"},
        }
    )
    testbed.stop_apiserver()
    assert not testbed.apiserver_ready_quietly()
    testbed.start_apiserver()

    # what was stored survives (etcd kept it)...
    assert admin.get(f"/api/v1/namespaces/{namespace}/configmaps/before")["data"] == {"kept": "yes"}
    # ...and the controllers, the scheduler and kwok found the server again
    admin.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "after", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "after"}},
                "template": {
                    "metadata": {"labels": {"app": "after"}},
                    "spec": {"containers": [{"name": "a", "image": "example.invalid/a:1"}]},
                },
            },
        }
    )
    wait_condition(
        admin, f"/apis/apps/v1/namespaces/{namespace}/deployments/after", "Available", timeout=90
    )
    node = wait_for(lambda: admin.get("/api/v1/nodes/kwok-node-0"))
    assert condition(node, "Ready") == "True"
