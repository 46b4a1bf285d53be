"""Pod logs on the testbed: kwok's kubelet server answers ``pods/log`` from
a file on this machine (docs/testing.md).

The testbed installs kwok's ``Logs`` and ``ClusterLogs`` CRDs and starts kwok
with ``--enable-crds=Logs,ClusterLogs`` (tests/support/testbed.py). A test
writes a container's log file in the CRI format a kubelet keeps
(:func:`cri_line`, :class:`LogFile`) and points a pod's containers at it
with a ``Logs`` object named after the pod (:func:`serve_logs`). The API
server's ``pods/log`` then reaches kwok at the node's address and kubelet
port, and kwok reads the file as a kubelet reads its own (``tailLines``,
``sinceSeconds``/``sinceTime``, ``timestamps``; ``follow=true`` streams what
is appended, until the client goes).

Does I/O: writes files, talks to the API server through :class:`Kube`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path

from tests.support.testbed import Kube, KubeError, Obj, wait_for

LOGS_API = "/apis/kwok.x-k8s.io/v1alpha1"


def cri_line(text: str, *, stream: str = "stdout", when: datetime.datetime | None = None) -> str:
    """One line of a CRI log file: ``<RFC 3339 nanoseconds> <stream> F <text>``."""
    when = when or datetime.datetime.now(datetime.UTC)
    stamp = when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    return f"{stamp} {stream} F {text}\n"


class LogFile:
    """A container's log file, as a kubelet writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def write(self, *lines: str, when: datetime.datetime | None = None) -> None:
        """Append ``lines`` (each stamped ``when``, else now)."""
        with self.path.open("a") as f:
            for line in lines:
                f.write(cri_line(line, when=when))
            f.flush()


def logs_object(namespace: str, pod: str, files: Mapping[str, Path]) -> Obj:
    """kwok's ``Logs`` for one pod: container name -> its log file."""
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": pod, "namespace": namespace},
        "spec": {
            "logs": [
                {"containers": [c], "logsFile": str(path), "follow": True}
                for c, path in files.items()
            ]
        },
    }


def pod_log(kube: Kube, namespace: str, pod: str, container: str) -> str:
    """``pods/log`` as the API server answers it (the admin's, not devstack's)."""
    text = kube.get(f"/api/v1/namespaces/{namespace}/pods/{pod}/log", container=container)
    return str(text)


def serve_logs(kube: Kube, namespace: str, pod: str, files: Mapping[str, LogFile]) -> None:
    """Point ``pod``'s containers at their files, and wait until kwok (an
    informer behind the API server) answers ``pods/log`` from them: each
    file's content, read through the API server."""
    kube.create(logs_object(namespace, pod, {c: f.path for c, f in files.items()}))

    def served() -> bool:
        for container in files:
            try:
                pod_log(kube, namespace, pod, container)
            except KubeError:
                return False  # kwok has not seen the Logs object yet: 400, no logs found
        return True

    wait_for(served, timeout=60)
