"""Story 6: `devstack logs SERVICE` against a cluster, on the testbed's real
control plane (tests/support/testbed.py), through the `devstack` command line.

The testbed runs no containers, but kwok answers the API server's
``pods/log`` from files a test names (tests/support/kwok_logs.py: a
``Logs`` object per pod, a CRI-format file per container), so every line here
went file -> kwok's kubelet server -> kube-apiserver's ``pods/log`` ->
devstack. The project: hello (the example chart, with devstack, provisioning
off) and front (a plain chart) that needs hello, so `up front` deploys
hello's baseline.

- no copy deployed, no such service: one line, the fix;
- `logs hello`: the lines written into the copy's app container's file, not
  the sidecar's; `--tail`, `--since`, `-c`, `--all-containers`, `--timestamps`;
- `logs hello -f`: a line appended after it started arrives; the pod is
  deleted and its Deployment's replacement is followed (said on stderr); the
  API server restarts and the dropped stream goes on, nothing shown twice;
- `--baseline`: the baseline's pod; two pods: `[pod/NAME/CONTAINER]` lines;
- a ServiceAccount without `get` on `pods/log`: a 403 as one line naming the
  verb; granted, it reads;
- a pod that does not start yet: a progress line and, after
  `--wait-timeout`, one line; once it starts, `-f` shows its lines.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.cli.test_workflow_plan import workflow_project
from tests.support.kwok_logs import LogFile, logs_object, serve_logs
from tests.support.sync import devstack_cmd
from tests.support.testbed import NODE_NAMES, Kube, Testbed, condition, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

Obj = dict[str, Any]

NODE = f"/api/v1/nodes/{NODE_NAMES[0]}"
GATE = "testbed.devstack.dev/logs-gate"


def devstack(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(devstack_cmd(*args), capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in run.stderr, run.stderr
    return run


class Follow:
    """`devstack logs ... -f` in the background, its stdout and stderr
    collected line by line as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            devstack_cmd(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(s, into), daemon=True)
            for s, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for r in self._readers:
            r.start()

    @staticmethod
    def _read(stream: IO[str], into: list[str]) -> None:
        for line in iter(stream.readline, ""):
            into.append(line)

    def wait_out(self, line: str, timeout: float = 60) -> None:
        wait_for(lambda: line in self.out or self._ended(), timeout=timeout)
        assert line in self.out, (line, self.out, self.err)

    def wait_err(self, text: str, timeout: float = 60) -> None:
        wait_for(lambda: any(text in e for e in self.err) or self._ended(), timeout=timeout)
        assert any(text in e for e in self.err), (text, self.err)

    def _ended(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> int:
        """Ctrl-C, as a person ends `-f`; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        for r in self._readers:
            r.join(10)
        return code


@pytest.fixture
def project(tmp_path: Path, admin: Kube) -> Iterator[Path]:
    helmfile = workflow_project(tmp_path / "p", prepare=True)
    helmfile.write_text(
        yaml.safe_dump(
            {
                "releases": [
                    {
                        "name": "hello",
                        "chart": "../examples/chart",
                        "values": [
                            {
                                "devstack": {
                                    "provision": {"enabled": False},
                                    "sidecar": {"reload": "supervise", "command": "python app.py"},
                                }
                            }
                        ],
                    },
                    {"name": "front", "chart": "./charts/plain", "needs": ["hello"]},
                    # its Pods go nowhere until the node has the GATE label
                    {
                        "name": "gated",
                        "chart": "./charts/plain",
                        "values": [{"nodeSelector": {GATE: "open"}}],
                    },
                ]
            }
        )
    )
    yield helmfile
    admin.merge_patch(NODE, {"metadata": {"labels": {GATE: None}}})


def flags(
    testbed: Testbed, helmfile: Path, namespace: str, kubeconfig: Path | None = None
) -> list[str]:
    return [
        "--file",
        str(helmfile),
        "--kubeconfig",
        str(kubeconfig or testbed.admin_kubeconfig),
        "-n",
        namespace,
        "--owner",
        "alice",
    ]


def running_pods(admin: Kube, namespace: str, release: str) -> list[Obj]:
    pods = admin.get(
        f"/api/v1/namespaces/{namespace}/pods",
        labelSelector=f"app.kubernetes.io/instance={release}",
    )["items"]
    return sorted(
        (
            p
            for p in pods
            if condition(p, "Ready") == "True" and not p["metadata"].get("deletionTimestamp")
        ),
        key=lambda p: p["metadata"]["name"],
    )


def one_pod(admin: Kube, namespace: str, release: str, *, other_than: str = "") -> str:
    def found() -> str | None:
        names = [
            p["metadata"]["name"]
            for p in running_pods(admin, namespace, release)
            if p["metadata"]["name"] != other_than
        ]
        return names[0] if len(names) == 1 else None

    return str(wait_for(found, timeout=120))


def error_line(run: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("devstack logs: ")]
    assert lines, run.stderr
    return lines[-1]


def test_logs_of_a_copy_in_the_cluster(
    testbed: Testbed, admin: Kube, namespace: str, project: Path, tmp_path: Path
) -> None:
    alice = flags(testbed, project, namespace)

    # --- nothing deployed: one line with the fix; an unknown service: the known ones
    run = devstack("logs", "hello", *alice)
    assert run.returncode != 0
    assert error_line(run) == (
        f"devstack logs: no copy of hello deployed for alice in namespace {namespace}: "
        "run `devstack up hello`"
    )
    assert run.stdout == ""
    run = devstack("logs", "nope", *alice)
    assert run.returncode != 0
    assert "declares no service 'nope' (it declares: hello, front, gated)" in error_line(run)

    # the baseline of hello (front needs it), then alice's copy of hello
    for service in ("front", "hello"):
        run = devstack("up", service, *alice)
        assert run.returncode == 0, run.stderr
    pod = one_pod(admin, namespace, "hello--alice")
    spec = admin.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "devstack-sidecar"]

    # the files kwok serves for the copy's pod: the app's and the sidecar's
    hours_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    app = LogFile(tmp_path / "logs" / "app.log")
    app.write("alice: an old line", when=hours_ago)
    app.write("alice: line 1", "alice: line 2", "alice: line 3")
    sidecar = LogFile(tmp_path / "logs" / "sidecar.log")
    sidecar.write("sidecar: serving")
    serve_logs(admin, namespace, pod, {"app": app, "devstack-sidecar": sidecar})

    # --- the app's container, not the sidecar's; as written, nothing added
    run = devstack("logs", "hello", *alice)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "alice: an old line\nalice: line 1\nalice: line 2\nalice: line 3\n"
    run = devstack("logs", "hello", "--tail", "2", *alice)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "alice: line 2\nalice: line 3\n"
    run = devstack("logs", "hello", "--since", "1h", *alice)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "alice: line 1\nalice: line 2\nalice: line 3\n"
    run = devstack("logs", "hello", "-c", "devstack-sidecar", *alice)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "sidecar: serving\n"
    run = devstack("logs", "hello", "--all-containers", "--tail", "1", *alice)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "[app] alice: line 3\n[devstack-sidecar] sidecar: serving\n"
    run = devstack("logs", "hello", "--tail", "1", "--timestamps", *alice)
    assert run.returncode == 0, run.stderr
    stamp, _, text = run.stdout.partition(" ")
    assert text == "alice: line 3\n"
    # the line's own time, as the file has it
    assert stamp == app.path.read_text().splitlines()[-1].split(" ")[0]
    run = devstack("logs", "hello", "-c", "nope", *alice)
    assert run.returncode != 0
    assert "have no container 'nope' (they have: app, devstack-sidecar)" in error_line(run)

    # --- -f: what is appended after it started arrives ---------------------------------
    follow = Follow("logs", "hello", "-f", "--tail", "1", *alice)
    try:
        follow.wait_out("alice: line 3\n")
        app.write("alice: appended while following")
        follow.wait_out("alice: appended while following\n")
        assert follow.out == ["alice: line 3\n", "alice: appended while following\n"]

        # the pod is replaced: its Deployment's new pod is followed, and that is said
        admin.delete(f"/api/v1/namespaces/{namespace}/pods/{pod}")
        new_pod = one_pod(admin, namespace, "hello--alice", other_than=pod)
        new_app = LogFile(tmp_path / "logs" / "app-2.log")
        new_app.write("alice: the new pod's first line")
        admin.create(logs_object(namespace, new_pod, {"app": new_app.path}))
        follow.wait_out("alice: the new pod's first line\n", timeout=120)
        follow.wait_err(f"pod {pod} is gone")
        follow.wait_err(f"following pod {new_pod} (container app)")
        new_app.write("alice: and the next")
        follow.wait_out("alice: and the next\n")
        new_app.write("alice: a last line")
        follow.wait_out("alice: a last line\n")

        # the API server restarts under it: the stream drops and is opened again,
        # going on after the last line shown (nothing twice, nothing lost)
        testbed.restart_apiserver()
        new_app.write("alice: after the API server restarted")
        follow.wait_out("alice: after the API server restarted\n", timeout=120)
        assert follow.out == [
            "alice: line 3\n",
            "alice: appended while following\n",
            "alice: the new pod's first line\n",
            "alice: and the next\n",
            "alice: a last line\n",
            "alice: after the API server restarted\n",
        ]
    finally:
        code = follow.stop()
    assert code == 0, follow.err
    assert not any("Traceback" in e for e in follow.err), follow.err

    # --- --baseline: the baseline's own pod ----------------------------------------------
    base_pod = one_pod(admin, namespace, "hello")
    base = LogFile(tmp_path / "logs" / "baseline.log")
    base.write("baseline: up")
    serve_logs(admin, namespace, base_pod, {"app": base})
    run = devstack("logs", "hello", "--baseline", *alice)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "baseline: up\n"

    # --- two pods: each line says whose it is, as `kubectl logs --prefix` ---------------
    admin.merge_patch(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/hello--alice", {"spec": {"replicas": 2}}
    )
    wait_for(lambda: len(running_pods(admin, namespace, "hello--alice")) == 2, timeout=120)
    third = next(
        p["metadata"]["name"]
        for p in running_pods(admin, namespace, "hello--alice")
        if p["metadata"]["name"] != new_pod
    )
    other = LogFile(tmp_path / "logs" / "app-3.log")
    other.write("alice: from the second pod")
    serve_logs(admin, namespace, third, {"app": other})
    run = devstack("logs", "hello", "--tail", "1", *alice)
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == sorted(
        [
            f"[pod/{new_pod}/app] alice: after the API server restarted",
            f"[pod/{third}/app] alice: from the second pod",
        ]
    )

    # --- RBAC: without `get` on pods/log, one line naming it; granted, it reads ---------
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "reader", "namespace": namespace},
        }
    )
    rules = [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    ]
    admin.post(
        f"{rbac}/namespaces/{namespace}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "reader", "namespace": namespace},
            "rules": rules,
        },
    )
    admin.post(
        f"{rbac}/namespaces/{namespace}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    reader = flags(
        testbed,
        project,
        namespace,
        testbed.service_account_kubeconfig(namespace, "reader", tmp_path / "reader.kubeconfig"),
    )

    def refused() -> subprocess.CompletedProcess[str] | None:
        run = devstack("logs", "hello", "--baseline", *reader)
        # (a new binding takes a moment to be in force: until then, secrets are refused)
        return run if "pods/log" in run.stderr else None

    run = wait_for(refused, timeout=60)
    assert run.returncode != 0
    line = error_line(run)
    assert line.startswith(
        f"devstack logs: forbidden: your kube user may not get pods/log in namespace {namespace}: "
        "its RBAC role needs verb 'get' on resource 'pods/log'"
    ), line
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    rules.append({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]})
    admin.merge_patch(f"{rbac}/namespaces/{namespace}/roles/reader", {"rules": rules})

    def granted() -> subprocess.CompletedProcess[str] | None:
        run = devstack("logs", "hello", "--baseline", *reader)
        return run if run.returncode == 0 else None

    run = wait_for(granted, timeout=60)
    assert run.stdout == "baseline: up\n"


def test_logs_wait_for_a_pod_to_start(
    testbed: Testbed, admin: Kube, namespace: str, project: Path, tmp_path: Path
) -> None:
    alice = flags(testbed, project, namespace)
    # gated's Pod stays Pending (no node has the label it selects): up gives up,
    # the release stays
    run = devstack("up", "gated", "--wait-timeout", "5", *alice)
    assert run.returncode != 0
    (pod,) = admin.get(
        f"/api/v1/namespaces/{namespace}/pods",
        labelSelector="app.kubernetes.io/instance=gated--alice",
    )["items"]
    name = pod["metadata"]["name"]
    assert not pod["spec"].get("nodeName")

    # not started: a progress line, then one line after --wait-timeout
    run = devstack("logs", "gated", "--wait-timeout", "2", *alice)
    assert run.returncode != 0
    *progress_lines, error = run.stderr.strip().splitlines()
    assert progress_lines, run.stderr
    progress = progress_lines[0]
    assert all(p.startswith("devstack logs: waiting for a pod of") for p in progress_lines)
    assert progress.startswith(
        f"devstack logs: waiting for a pod of gated--alice to start ({name}: not scheduled"
    ), progress
    assert error.startswith(f"devstack logs: no pod of gated--alice started in 2s ({name}: "), error
    assert "or wait longer with --wait-timeout" in error
    assert run.stdout == ""

    # it starts while `-f` waits: its lines arrive
    log = LogFile(tmp_path / "logs" / "gated.log")
    log.write("gated: started at last")
    admin.create(logs_object(namespace, name, {"app": log.path}))
    follow = Follow("logs", "gated", "-f", "--wait-timeout", "120", *alice)
    try:
        follow.wait_err(f"waiting for a pod of gated--alice to start ({name}: not scheduled")
        assert follow.out == []
        admin.merge_patch(NODE, {"metadata": {"labels": {GATE: "open"}}})
        follow.wait_out("gated: started at last\n", timeout=120)
        log.write("gated: and more")
        follow.wait_out("gated: and more\n")
    finally:
        code = follow.stop()
    assert code == 0, follow.err
