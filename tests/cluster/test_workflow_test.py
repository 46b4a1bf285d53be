"""Story 5, against a cluster: alice runs hello's tests in her copy.

On the testbed's real control plane (tests/support/testbed.py), from the
Helmfile of tests/data/workflow with `devstack.test` declared for hello:
`devstack up hello` deploys her copy (and the baselines it needs), and, as in
tests/cluster/test_workflow.py story 2, the copy's sidecar runs as a local
`devstack sidecar` process with the chart's own arguments and token (the
testbed runs no containers: an EndpointSlice points the chart's sync Service
at it), reached through real Traefik by the chart's sync route. `devstack
connect hello` syncs a tree with a test in it; then `devstack test hello`
finds the sidecar and its token in the cluster as `connect` does and returns
the command's output and exit code through Traefik: the declared tests
passing (0) and, after an edit, failing (1); `-- CMD` (3); the timeout
(124); and Ctrl-C (130), which cancels the call through Traefik so that the
sidecar kills the command.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.test_routing_traefik import (  # the module's Traefik access (fixture)
    SLICE_MANAGER,
    TraefikAccess,
    traefik_access,  # noqa: F401
)
from tests.cluster.test_workflow import (
    GATE,
    NODE,
    deployments,
    devstack,
    flags,
    project,  # noqa: F401  (the fixture)
)
from tests.support.aws import Backend, moto, moto_endpoint  # noqa: F401
from tests.support.helm import JobRunner
from tests.support.sync import Sidecar, devstack_cmd
from tests.support.testbed import Kube, Testbed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: What hello declares (python3: the local sidecar process runs this machine's Python).
HELLO_TEST = {
    "command": "python3 -m unittest -v",
    "env": {"PYTHONDONTWRITEBYTECODE": "1", "EXPECTED": "hello, v1"},
    "timeoutSeconds": 120,
}

TEST_FILE = """import pathlib
import os
import unittest


class MessageTest(unittest.TestCase):
    def test_message(self):
        self.assertEqual(pathlib.Path("message.txt").read_text(), os.environ["EXPECTED"])
"""


@contextlib.contextmanager
def sidecar_behind_traefik(
    admin: Kube,
    namespace: str,
    release: str,
    traefik_access: TraefikAccess,  # noqa: F811
    workdir: Path,
) -> Iterator[tuple[Sidecar, str]]:
    """The copy's sidecar as a local process with the chart's arguments and
    token, the only endpoint of the chart's sync Service, and real Traefik
    routing the chart's sync route to it: the sidecar and Traefik's entry
    point (as tests/cluster/test_workflow.py story 2 sets it up)."""
    base = f"/api/v1/namespaces/{namespace}"
    secret = admin.get(f"{base}/secrets/{release}-devstack-token")
    token_file = workdir / "token"
    token_file.write_bytes(base64.b64decode(secret["data"]["token"]))
    copy = deployments(admin, namespace)[release]
    spec = next(
        c for c in copy["spec"]["template"]["spec"]["containers"] if c["name"] == "devstack-sidecar"
    )
    workspace = workdir / "workspace"
    workspace.mkdir()
    sidecar = Sidecar(workspace, token_file, *spec["args"][1:]).start()
    traefik = None
    try:
        (port,) = admin.get(f"{base}/services/{release}-devstack-sync")["spec"]["ports"]
        # the kwok pod stops being an endpoint; our slice holds the only one
        for pod in admin.get(f"{base}/pods", labelSelector=f"devstack.dev/sync={release}")["items"]:
            admin.merge_patch(
                f"{base}/pods/{pod['metadata']['name']}",
                {"metadata": {"labels": {"devstack.dev/sync": None}}},
            )
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        of_sync = f"kubernetes.io/service-name={release}-devstack-sync"
        wait_for(
            lambda: (
                not any(
                    o.get("endpoints") for o in admin.get(slices, labelSelector=of_sync)["items"]
                )
            ),
            timeout=60,
        )
        admin.create(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{release}-devstack-sync-pod",
                    "namespace": namespace,
                    "labels": {
                        "kubernetes.io/service-name": f"{release}-devstack-sync",
                        "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                    },
                },
                "addressType": "FQDN",
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
                "ports": [{"name": port["name"], "port": sidecar.port, "protocol": "TCP"}],
            }
        )
        traefik = traefik_access.start(workdir / "traefik")
        rule = f"Host(`{release}-sync.localtest.me`)"
        wait_for(lambda: any(r.get("rule") == rule for r in traefik.routers().values()), timeout=90)
        yield sidecar, f"127.0.0.1:{traefik.port}"
    finally:
        if traefik is not None:
            traefik.stop()
        sidecar.stop()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def test_devstack_test_runs_in_the_copy_through_traefik(
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    moto: Backend,  # noqa: F811
    project: Path,  # noqa: F811
    traefik_access: TraefikAccess,  # noqa: F811
    tmp_path: Path,
) -> None:
    values_file = project.parent / "values" / "hello.yaml"
    values: dict[str, Any] = yaml.safe_load(values_file.read_text())
    values["devstack"]["test"] = HELLO_TEST
    values_file.write_text(yaml.safe_dump(values))
    alice = flags(testbed, project, namespace, "alice")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}

    # before `up`: no copy to run in, one line saying what to do
    run = devstack("test", *alice, "hello", env=env)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.endswith("run `devstack up hello` first\n"), run.stderr

    admin.merge_patch(NODE, {"metadata": {"labels": {GATE: "open"}}})  # db's Pods may run
    with JobRunner(testbed, tmp_path / "jobs", namespace=namespace):
        run = devstack("up", "hello", *alice, env=env)
    assert run.returncode == 0, run.stderr

    with sidecar_behind_traefik(admin, namespace, "hello--alice", traefik_access, tmp_path) as (
        sidecar,
        entry,
    ):
        src = tmp_path / "src"
        src.mkdir()
        (src / "app.py").write_text("import time\ntime.sleep(3600)\n")
        (src / "message.txt").write_text("hello, v1")
        (src / "test_message.py").write_text(TEST_FILE)
        run = devstack(
            "connect", *alice, "hello", str(src), "--to", entry, "--once", env=env, timeout=180
        )
        assert run.returncode == 0, run.stderr
        assert (sidecar.workspace / "test_message.py").read_text() == TEST_FILE

        def test(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                devstack_cmd("test", *alice, "--to", entry, "hello", *args),
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **env},
            )

        # the declared tests, in the synced tree, with the declared env: they pass
        run = test()
        assert run.returncode == 0, run.stdout + run.stderr
        assert "test_message (test_message.MessageTest.test_message) ... ok" in run.stderr
        assert re.search(r"^Ran 1 test in ", run.stderr, re.M), run.stderr

        # an edit arrives, and the same tests now fail: the command's exit code, 1
        (src / "message.txt").write_text("hello, v2")
        run = devstack(
            "connect", *alice, "hello", str(src), "--to", entry, "--once", env=env, timeout=180
        )
        assert run.returncode == 0, run.stderr
        run = test()
        assert run.returncode == 1, run.stdout + run.stderr
        assert "AssertionError: 'hello, v2' != 'hello, v1'" in run.stderr
        assert "FAILED (failures=1)" in run.stderr

        # -- CMD instead; stdout and stderr apart
        run = test("--", "sh", "-c", "cat message.txt; echo oops >&2; exit 3")
        assert (run.returncode, run.stdout, run.stderr) == (3, "hello, v2", "oops\n")

        # the timeout: 124 and one line
        run = test("--timeout", "1", "--", "sleep", "60")
        assert run.returncode == 124, run.stderr
        assert run.stderr == (
            "devstack test: killed after 1s timeout "
            "(give it longer with --timeout or devstack.test.timeoutSeconds)\n"
        )

        # Ctrl-C: the call is cancelled through Traefik, and the sidecar kills the command
        proc = subprocess.Popen(
            devstack_cmd(
                "test", *alice, "--to", entry, "hello", "--",
                "sh", "-c", "echo $$ > pid; echo started; exec sleep 600",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )  # fmt: skip
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()))  # type: ignore[union-attr]
        reader.start()
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "started\n", proc.poll()
            pid = int((sidecar.workspace / "pid").read_text())
            assert alive(pid)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 130
            reader.join(30)
            assert "Traceback" not in err[0], err[0]
            wait_for(lambda: not alive(pid), timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
