"""alice's day against a cluster, through the `devstack` command line, on the
testbed's real control plane (tests/support/testbed.py), from the Helmfile of
tests/data/workflow: hello (the example chart, with devstack) needs api, which
needs db (2 replicas) and cache (a small chart of our own).

- story 1: `devstack up hello` deploys the baselines hello needs that the
  cluster lacks and alice's copy `hello--alice`, in `needs` order, each level
  only once the one before has its Pods Ready (proved from a watch of the
  namespace: every Pod of a level turned Ready at a lower resourceVersion
  than the next level's Deployment was created at), and waits until every
  Pod is Ready. Its provisioning hook runs for real (tests/support/helm.py's
  JobRunner plays the kubelet) against moto. `--dry-run -o json` first
  prints the plan and changes nothing;
- story 2: `devstack connect hello` finds the copy's sidecar (the sync host
  of the chart's IngressRoute) and its token (the chart's Secret) in the
  cluster and syncs through real Traefik to a real `devstack sidecar`
  started with the chart's own arguments and that token (the testbed runs no
  containers: an EndpointSlice points the chart's sync Service at it on
  127.0.0.1, as tests/cluster/test_helm_sync_route.py does); an edit arrives
  and the supervised app restarts with it; `devstack status` and `devstack
  urls` show it;
- story 7: bob has his own copy; alice's `devstack down` leaves no route
  (neither the chart's sync route nor those the cluster's agent made for her
  copy: the agent chart runs throughout, tests/support/chart_agent.py),
  Deployment, Service, Secret or AWS resource of hers, and touches nothing of
  the baselines or of bob's (the same objects, at the same generation).

Also: a release whose Pods never turn Ready, and one whose chart fails, end
`up` with one line naming the release and what to do, exit 1, no traceback.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cli.test_workflow_plan import workflow_project
from tests.cluster.test_routing_traefik import (  # the module's Traefik access (fixture)
    SLICE_MANAGER,
    TraefikAccess,
    traefik_access,  # noqa: F401
)
from tests.support.aws import Backend, moto, moto_endpoint  # noqa: F401
from tests.support.chart_agent import chart_agent
from tests.support.helm import JobRunner
from tests.support.sync import Sidecar, devstack_cmd
from tests.support.testbed import (
    LOCAL_RUN_LABEL,
    NODE_NAMES,
    Kube,
    Testbed,
    condition,
    tls_context,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

Obj = dict[str, Any]


class Watch:
    """Every event of the Pods and Deployments of ``namespace``, in a thread."""

    def __init__(self, testbed: Testbed, namespace: str) -> None:
        self.events: list[tuple[str, str, Obj]] = []  # (kind, type, object)
        self._lock = threading.Lock()
        self._client = httpx.Client(
            base_url=testbed.server,
            verify=tls_context(
                testbed.pki.ca_cert, (testbed.pki.admin_cert, testbed.pki.admin_key)
            ),
            timeout=httpx.Timeout(30.0, read=None),
        )
        self._threads = [
            threading.Thread(target=self._run, args=(kind, path), daemon=True)
            for kind, path in (
                ("Pod", f"/api/v1/namespaces/{namespace}/pods"),
                ("Deployment", f"/apis/apps/v1/namespaces/{namespace}/deployments"),
            )
        ]
        self._started = threading.Barrier(len(self._threads) + 1)

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        self._started.wait(60)
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def _run(self, kind: str, path: str) -> None:
        params = {"watch": "true", "resourceVersion": "0", "timeoutSeconds": "1800"}
        try:
            with self._client.stream("GET", path, params=params) as response:
                self._started.wait(60)
                for line in response.iter_lines():
                    if line.strip():
                        event = json.loads(line)
                        with self._lock:
                            self.events.append((kind, event["type"], event["object"]))
        except (httpx.HTTPError, ValueError):
            return  # closed at the end

    def created_at(self, deployment: str) -> int:
        """The resourceVersion the Deployment was created at."""
        with self._lock:
            return min(
                int(o["metadata"]["resourceVersion"])
                for k, t, o in self.events
                if k == "Deployment" and t == "ADDED" and o["metadata"]["name"] == deployment
            )

    def ready_at(self, release: str) -> dict[str, int]:
        """Each Pod of ``release`` (the app's, not a hook's): the resourceVersion
        it was first seen Ready at."""
        out: dict[str, int] = {}
        with self._lock:
            for k, _t, o in self.events:
                labels = o["metadata"].get("labels") or {}
                if (
                    k == "Pod"
                    and labels.get("app.kubernetes.io/instance") == release
                    and LOCAL_RUN_LABEL not in labels
                    and condition(o, "Ready") == "True"
                ):
                    out.setdefault(o["metadata"]["name"], int(o["metadata"]["resourceVersion"]))
        return out


def devstack(
    *args: str, env: dict[str, str] | None = None, timeout: float = 400
) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        devstack_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in run.stderr, run.stderr
    return run


#: The node, and a label db's Pods select (the test puts it on the node when
#: it has seen `up` wait for them).
NODE = f"/api/v1/nodes/{NODE_NAMES[0]}"
GATE = "testbed.devstack.dev/workflow-gate"


@pytest.fixture
def project(tmp_path: Path, admin: Kube, moto: Backend) -> Iterator[Path]:  # noqa: F811
    """The fixture project, its example chart prepared; the hooks reach moto
    and their pods run here; db's Pods wait for the node's ``GATE`` label."""
    helmfile = workflow_project(tmp_path / "p", prepare=True)
    text = helmfile.read_text()
    assert "      - replicas: 2\n" in text
    helmfile.write_text(
        text.replace(
            "      - replicas: 2\n",
            f"      - replicas: 2\n        nodeSelector: {{{GATE}: open}}\n",
        )
    )
    values = {
        "devstack": {
            "provision": {"endpoint": moto.endpoint, "podLabels": {LOCAL_RUN_LABEL: "true"}}
        }
    }
    (helmfile.parent / "values" / "hello.yaml").write_text(yaml.safe_dump(values))
    yield helmfile
    admin.merge_patch(NODE, {"metadata": {"labels": {GATE: None}}})


def flags(testbed: Testbed, helmfile: Path, namespace: str, owner: str) -> list[str]:
    return [
        "-f",
        str(helmfile),
        "--kubeconfig",
        str(testbed.admin_kubeconfig),
        "-n",
        namespace,
        "--owner",
        owner,
    ]


def helm_releases(admin: Kube, namespace: str) -> dict[str, str]:
    """release -> status of its latest record (Helm's Secrets)."""
    records = admin.get(f"/api/v1/namespaces/{namespace}/secrets", labelSelector="owner=helm")
    latest: dict[str, tuple[int, str]] = {}
    for r in records["items"]:
        labels = r["metadata"]["labels"]
        version = int(labels["version"])
        if version >= latest.get(labels["name"], (0, ""))[0]:
            latest[labels["name"]] = (version, labels["status"])
    return {name: status for name, (_, status) in latest.items()}


def deployments(admin: Kube, namespace: str) -> dict[str, Obj]:
    items = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
    return {d["metadata"]["name"]: d for d in items}


def ready_pods(admin: Kube, namespace: str, release: str) -> list[Obj]:
    pods = admin.get(
        f"/api/v1/namespaces/{namespace}/pods",
        labelSelector=f"app.kubernetes.io/instance={release},!{LOCAL_RUN_LABEL}",
    )["items"]
    return [p for p in pods if condition(p, "Ready") == "True"]


def test_up_connect_status_down(
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    apps: str,
    moto: Backend,  # noqa: F811
    project: Path,
    traefik_access: TraefikAccess,  # noqa: F811
    tmp_path: Path,
) -> None:
    # the cluster's agent (its chart, in `namespace`) routes the Services of `apps`
    values = {"scope": "namespaced", "namespaces": [apps]}
    (tmp_path / "agent").mkdir()
    with chart_agent(testbed, admin, namespace, tmp_path / "agent", values):
        _alices_day(testbed, admin, apps, moto, project, traefik_access, tmp_path)


def _alices_day(
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    moto: Backend,  # noqa: F811
    project: Path,
    traefik_access: TraefikAccess,  # noqa: F811
    tmp_path: Path,
) -> None:
    alice = flags(testbed, project, namespace, "alice")
    routes = f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/ingressroutes"
    middlewares = f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/middlewares"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}

    # --dry-run -o json: the plan, and nothing changes
    run = devstack("up", "hello", "--dry-run", "-o", "json", *alice, env=env)
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    assert [
        [(r["release"], r["role"], r["action"]) for r in level] for level in plan["levels"]
    ] == [
        [("db", "baseline", "install"), ("cache", "baseline", "install")],
        [("api", "baseline", "install")],
        [("hello--alice", "copy", "install")],
    ]
    assert plan["levels"][2][0]["injectedValues"] == {
        "devstack": {
            "enabled": True,
            "owner": "alice",
            "service": "hello",
            "sidecar": {"enabled": True},
        }
    }
    assert helm_releases(admin, namespace) == {}
    assert deployments(admin, namespace) == {}
    # and as a table
    run = devstack("up", "hello", "--dry-run", *alice, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == [
        "LEVEL",
        "RELEASE",
        "SERVICE",
        "ROLE",
        "NAMESPACE",
        "ACTION",
        "CHART",
    ]
    assert [line.split()[:4] for line in lines[1:5]] == [
        ["1", "db", "db", "baseline"],
        ["1", "cache", "cache", "baseline"],
        ["2", "api", "api", "baseline"],
        ["3", "hello--alice", "hello", "copy"],
    ]
    assert 'hello--alice: devstack.enabled=true devstack.owner="alice"' in run.stdout

    # --- story 1: up, in needs order, waiting for Ready ----------------------------------
    with (
        Watch(testbed, namespace) as watch,
        JobRunner(testbed, tmp_path / "jobs", namespace=namespace) as runner,
    ):
        # db's Pods can go nowhere until the node gets the label they select:
        # up waits, and deploys nothing of the next level meanwhile
        log = tmp_path / "up.stderr"
        with log.open("w") as err:
            proc = subprocess.Popen(
                devstack_cmd("up", "hello", *alice),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, **env},
            )
        try:
            wait_for(lambda: "db: waiting: 0/2 pods ready" in log.read_text(), timeout=120)
            wait_for(lambda: "cache: ready" in log.read_text(), timeout=120)
            assert "api" not in deployments(admin, namespace)
            assert "api:" not in log.read_text()
            admin.merge_patch(NODE, {"metadata": {"labels": {GATE: "open"}}})
            stdout, _ = proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        run = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, log.read_text())
        assert "Traceback" not in run.stderr, run.stderr
        assert run.returncode == 0, run.stderr
        for release in ("db", "cache", "api", "hello--alice"):
            assert f"{release}: ready" in run.stderr.splitlines(), run.stderr
        table = {line.split()[0]: line.split() for line in run.stdout.splitlines()[1:]}
        assert {name: row[4] for name, row in table.items()} == {
            "db": "ready",
            "cache": "ready",
            "api": "ready",
            "hello--alice": "ready",
        }
        # the provisioning hook ran before the copy's Deployment, against moto
        (hook,) = runner.runs
        assert hook.job == "hello--alice-devstack-provision"
        assert hook.returncode == 0, hook.stderr
        assert {"sqs alice-jobs", "s3 alice-uploads"} <= moto.everything()
        # every Pod is Ready when up returns
        assert len(ready_pods(admin, namespace, "db")) == 2
        for release in ("cache", "api", "hello--alice"):
            assert len(ready_pods(admin, namespace, release)) == 1, release
        # the order: a level starts once every Pod of the levels before is Ready
        wait_for(lambda: len(watch.ready_at("hello--alice")) == 1, timeout=60)
        db, cache, api = watch.ready_at("db"), watch.ready_at("cache"), watch.ready_at("api")
        assert len(db) == 2 and len(cache) == 1 and len(api) == 1
        assert max(db.values()) < watch.created_at("api")
        assert max(cache.values()) < watch.created_at("api")
        assert max(api.values()) < watch.created_at("hello--alice")
    assert helm_releases(admin, namespace) == {
        "db": "deployed",
        "cache": "deployed",
        "api": "deployed",
        "hello--alice": "deployed",
    }
    copy = deployments(admin, namespace)["hello--alice"]
    assert copy["metadata"]["labels"]["devstack.dev/owner"] == "alice"
    assert copy["metadata"]["labels"]["devstack.dev/service"] == "hello"
    containers = [c["name"] for c in copy["spec"]["template"]["spec"]["containers"]]
    assert containers == ["app", "devstack-sidecar"]
    # the agent routes alice's copy by the labels devstack injected
    route = wait_for(lambda: admin.maybe(f"{routes}/devstack-hello--alice"), timeout=90)
    assert route["metadata"]["labels"]["devstack.dev/owner"] == "alice"

    # the plan of up again: nothing is missing, the copy would be upgraded
    run = devstack("up", "hello", "--dry-run", "-o", "yaml", *alice, env=env)
    assert run.returncode == 0, run.stderr
    again = yaml.safe_load(run.stdout)
    assert [[r["release"] for r in lv] for lv in again["levels"]] == [["hello--alice"]]
    assert again["levels"][0][0]["action"] == "upgrade"
    assert again["present"] == ["api"]

    # --- story 2: connect finds the sidecar and its token in the cluster ----------------------
    base = f"/api/v1/namespaces/{namespace}"
    secret = admin.get(f"{base}/secrets/hello--alice-devstack-token")
    token_file = tmp_path / "token"
    token_file.write_bytes(base64.b64decode(secret["data"]["token"]))
    sidecar_spec = next(
        c for c in copy["spec"]["template"]["spec"]["containers"] if c["name"] == "devstack-sidecar"
    )
    assert sidecar_spec["args"][:5] == ["sidecar", "--mode", "safe", "--reload", "supervise"]
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    sidecar = Sidecar(workspace, token_file, *sidecar_spec["args"][1:]).start()
    traefik = None
    try:
        sync_service = admin.get(f"{base}/services/hello--alice-devstack-sync")
        (port,) = sync_service["spec"]["ports"]
        # The pod is this local process, not the kwok pod: the Service stops
        # selecting that one (its sync label goes), and our slice holds the
        # only endpoint.
        for pod in admin.get(f"{base}/pods", labelSelector="devstack.dev/sync=hello--alice")[
            "items"
        ]:
            admin.merge_patch(
                f"{base}/pods/{pod['metadata']['name']}",
                {"metadata": {"labels": {"devstack.dev/sync": None}}},
            )
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        of_sync = "kubernetes.io/service-name=hello--alice-devstack-sync"
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
                    "name": "hello--alice-devstack-sync-pod",
                    "namespace": namespace,
                    "labels": {
                        "kubernetes.io/service-name": "hello--alice-devstack-sync",
                        "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                    },
                },
                "addressType": "FQDN",
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
                "ports": [{"name": port["name"], "port": sidecar.port, "protocol": "TCP"}],
            }
        )
        traefik = traefik_access.start(tmp_path / "traefik")
        sync_rule = "Host(`hello--alice-sync.localtest.me`)"
        wait_for(
            lambda: any(r.get("rule") == sync_rule for r in traefik.routers().values()), timeout=90
        )
        entry = f"127.0.0.1:{traefik.port}"

        out = tmp_path / "app-output"
        src = tmp_path / "src"
        src.mkdir()
        app = (
            "import pathlib, time\n"
            f"pathlib.Path({str(out)!r}).write_text(pathlib.Path('message.txt').read_text())\n"
            "time.sleep(3600)\n"
        )
        (src / "app.py").write_text(app)
        (src / "message.txt").write_text("hello, v1")
        run = devstack(
            "connect", "hello", str(src), "--to", entry, "--once", *alice, env=env, timeout=180
        )
        assert run.returncode == 0, run.stderr + traefik.log()
        assert (workspace / "message.txt").read_text() == "hello, v1"
        wait_for(lambda: out.exists() and out.read_text() == "hello, v1", timeout=60)

        # an edit arrives, and the app restarts with it
        (src / "message.txt").write_text("hello, v2")
        run = devstack(
            "connect", "hello", str(src), "--to", entry, "--once", *alice, env=env, timeout=180
        )
        assert run.returncode == 0, run.stderr + traefik.log()
        wait_for(lambda: out.read_text() == "hello, v2", timeout=60)

        # status: ready, the sidecar's sync state and last reload through Traefik
        def hello_row() -> Obj:
            run = devstack("status", "--to", entry, "-o", "json", *alice, env=env, timeout=120)
            assert run.returncode == 0, run.stderr
            rows = json.loads(run.stdout)["services"]
            assert {(r["service"], r["owner"]) for r in rows} == {
                ("hello", "alice"),
                ("api", ""),
                ("db", ""),
                ("cache", ""),
            }
            return next(r for r in rows if r["owner"] == "alice")

        # (the sidecar counts the finished session out a moment after `--once` exits)
        def reloaded_and_idle() -> Obj | None:
            r = hello_row()
            return r if r["last_reload"] and r["sync"] == "idle" else None

        row = wait_for(reloaded_and_idle, timeout=60)
        assert row["ready"] is True
        assert row["last_reload"].startswith("reload-finished: "), row
        assert "restarted the app" in row["last_reload"], row
        assert row["preview_url"] == "http://hello--alice.preview.localtest.me"
        run = devstack("status", "--to", entry, *alice, env=env, timeout=120)
        assert run.returncode == 0, run.stderr
        header, *rows_text = run.stdout.splitlines()
        assert header.split()[:4] == ["SERVICE", "OWNER", "READY", "SYNC"]
        assert any(line.split()[:4] == ["hello", "alice", "yes", "idle"] for line in rows_text)
        # the explicit form still is the one sidecar's own status
        run = devstack(
            "status", "--to", sidecar.address, "--token-file", str(token_file), "--json", env=env
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["batches_applied"] >= 2
        run = devstack("urls", "-o", "json", *alice, env=env)
        assert run.returncode == 0, run.stderr
        urls = {(u["service"], u["owner"]): u["url"] for u in json.loads(run.stdout)["urls"]}
        assert urls[("hello", "alice")] == "http://hello--alice.preview.localtest.me"
        assert urls[("api", "")] == "http://api.localtest.me"
    finally:
        if traefik is not None:
            traefik.stop()
        sidecar.stop()

    # --- story 7: down removes alice's copy, and nothing else -----------------------------------
    bob = flags(testbed, project, namespace, "bob")
    with JobRunner(testbed, tmp_path / "jobs-bob", namespace=namespace):
        run = devstack("up", "hello", *bob, env=env)
        assert run.returncode == 0, run.stderr
    assert "sqs bob-jobs" in moto.everything()
    wait_for(lambda: admin.maybe(f"{routes}/devstack-hello--bob"), timeout=90)
    before = {
        name: (d["metadata"]["uid"], d["metadata"]["generation"])
        for name, d in deployments(admin, namespace).items()
    }
    assert set(before) == {"db", "cache", "api", "hello--alice", "hello--bob"}

    run = devstack("down", "--dry-run", "-o", "json", *alice, env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["remove"] == [
        {"release": "hello--alice", "service": "hello", "namespace": namespace}
    ]
    assert "hello--alice" in helm_releases(admin, namespace)

    with JobRunner(testbed, tmp_path / "jobs-down", namespace=namespace) as runner:
        run = devstack("down", *alice, env=env)
        assert run.returncode == 0, run.stderr
        (teardown,) = runner.runs
        assert teardown.job == "hello--alice-devstack-teardown"
        assert teardown.returncode == 0, teardown.stderr
    assert "removed" in run.stdout
    # nothing of alice's: no AWS resource, Deployment, Service, route, Secret
    assert not {r for r in moto.everything() if r.split()[1].startswith("alice-")}
    assert {"sqs bob-jobs", "s3 bob-uploads"} <= moto.everything()
    after = {
        name: (d["metadata"]["uid"], d["metadata"]["generation"])
        for name, d in deployments(admin, namespace).items()
    }
    assert "hello--alice" not in after
    # the baselines and bob's copy are the very same objects, unchanged
    assert after == {k: v for k, v in before.items() if k != "hello--alice"}
    assert helm_releases(admin, namespace) == {
        "db": "deployed",
        "cache": "deployed",
        "api": "deployed",
        "hello--bob": "deployed",
    }

    def of_alice(path: str) -> list[str]:
        names = [o["metadata"]["name"] for o in admin.get(path)["items"]]
        return [n for n in names if "alice" in n]

    # the agent takes alice's routes away once her copy's Service is gone
    wait_for(lambda: not of_alice(routes) and not of_alice(middlewares), timeout=90)
    for kind in ("services", "secrets", "configmaps", "serviceaccounts"):
        assert of_alice(f"/api/v1/namespaces/{namespace}/{kind}") == [], kind
    assert of_alice(f"/apis/batch/v1/namespaces/{namespace}/jobs") == []
    # bob's routes (the agent's and his sync route) stay
    names = {o["metadata"]["name"] for o in admin.get(routes)["items"]}
    assert {"devstack-hello--bob", "hello--bob-devstack-sync"} <= names
    # and a second down has nothing to do
    run = devstack("down", *alice, env=env)
    assert run.returncode == 0, run.stderr
    assert "nothing to remove: alice has no copies" in run.stderr


def test_up_failures_are_one_line_naming_the_release(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    helmfile = workflow_project(tmp_path / "p")
    # cache's Pods never turn Ready (no node matches their nodeSelector: they
    # stay Pending); db's chart does not render
    helmfile.write_text(
        yaml.safe_dump(
            {
                "releases": [
                    {
                        "name": "cache",
                        "chart": "./charts/plain",
                        "values": [{"nodeSelector": {"testbed.devstack.dev/no-such-node": "x"}}],
                    },
                    {"name": "db", "chart": "./charts/plain", "values": [{"fail": True}]},
                    {"name": "api", "chart": "./charts/plain", "needs": ["cache", "db"]},
                ]
            }
        )
    )
    run = devstack(
        "up",
        "api",
        "--wait-timeout",
        "20",
        *flags(testbed, helmfile, namespace, "alice"),
        timeout=300,
    )
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("devstack up: ")]
    assert len(errors) == 2, run.stderr
    cache_error = next(e for e in errors if e.startswith("devstack up: cache: "))
    assert "not ready after 20s (0/1 pods ready)" in cache_error
    assert "--wait-timeout" in cache_error
    db_error = next(e for e in errors if e.startswith("devstack up: db: "))
    assert "helm install failed" in db_error and "plain: broken on purpose" in db_error
    table = {line.split()[0]: line.split()[4:] for line in run.stdout.splitlines()[1:]}
    assert table["cache"][0:2] == ["timed", "out"]
    assert table["db"][0] == "failed"
    # the next level never started
    assert table["api--alice"][0] == "skipped"
    assert "api--alice" not in deployments(admin, namespace)

    # as the line says: fix it and run up again. db's chart never rendered, so
    # it has no release and is installed now; cache's release exists (its Pods
    # still Pending), and a baseline that exists is left as it is
    helmfile.write_text(
        yaml.safe_dump(
            {
                "releases": [
                    {"name": "cache", "chart": "./charts/plain"},
                    {"name": "db", "chart": "./charts/plain"},
                    {"name": "api", "chart": "./charts/plain", "needs": ["cache", "db"]},
                ]
            }
        )
    )
    run = devstack(
        "up", "api", "-o", "json", *flags(testbed, helmfile, namespace, "alice"), timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # the result, for scripts: only JSON on stdout
    assert result["owner"] == "alice"
    assert [
        (r["release"], r["role"], r["action"], r["state"], r["ok"]) for r in result["releases"]
    ] == [
        ("db", "baseline", "install", "ready", True),
        ("api--alice", "copy", "install", "ready", True),
    ]
    assert set(deployments(admin, namespace)) == {"cache", "db", "api--alice"}
    assert helm_releases(admin, namespace) == {
        "cache": "deployed",
        "db": "deployed",
        "api--alice": "deployed",
    }
