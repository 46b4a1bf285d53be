"""`devstack doctor` against the testbed's real control plane
(tests/support/testbed.py): every cluster line, ok and failing, from the
real API server's own answers.

- all green: the testbed's Traefik CRDs, the agent chart's agent running
  (tests/support/chart_agent.py) and asked at ``--agent-url`` (the testbed
  runs no containers, so the agent is a local process: the API server's
  service proxy would dial the simulated pod's made-up IP, never it), moto
  as the AWS endpoint; the same once the agent stopped;
- Traefik's CRDs gone (every line after the credentials still runs), then
  only in the older traefik.containo.us group;
- a token the API server refuses (401), one it accepts but that may not read
  Helm's releases (403), a CA that does not sign the server's certificate;
- the agent chart installed but no agent pod ready behind its Service
  (``replicaCount: 0``), reached through the real service proxy, found by
  ``--agent-service`` and by its labels (a user who may only list the
  namespace's Services), and a named Service that does not exist;
- an agent that speaks another protocol version: the real agent, started as
  a build speaking protocol 2 would be (tests/support/protocol.py: no such
  build exists to install).
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.core.protocol import PROTOCOL_VERSION
from tests.cli.test_doctor import aws_release, report_lines, write_project
from tests.helm.charts import AGENT_CHART, documents, render
from tests.support.aws import moto_endpoint  # noqa: F401  (the fixture)
from tests.support.chart_agent import ChartAgent, chart_agent
from tests.support.net import free_port
from tests.support.protocol import speaking_protocol
from tests.support.testbed import (
    CRD_DIR,
    Kube,
    Testbed,
    crd_documents,
    crds_established,
    install_crds,
    make_pki,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLUSTER_LINES = ["helmfile", "kubeconfig", "cluster", "credentials", "traefik", "agent", "aws",
                 "versions"]  # fmt: skip
#: The environment a test started with (before it changed PYTHONPATH for an agent).
ENV = dict(os.environ)
VERSION = importlib.metadata.version("devstack")


def run_doctor(
    project: Path, kubeconfig: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`devstack doctor` as a user runs it, in ``project`` with ``kubeconfig``."""
    environ = {k: v for k, v in (env or ENV).items() if not k.startswith("DEVSTACK_")}
    environ |= {"KUBECONFIG": str(kubeconfig), "DEVSTACK_OWNER": "alice", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "devstack.cli", "doctor", *argv],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def doctor(
    project: Path, kubeconfig: Path, *argv: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """The exit code and the report, by line (tests/cli/test_doctor.py's report_lines)."""
    done = run_doctor(project, kubeconfig, *argv, env=env)
    assert done.stderr == "", done.stderr
    return done.returncode, report_lines(done.stdout)


@pytest.fixture
def project(tmp_path: Path, moto_endpoint: str) -> Path:  # noqa: F811
    """A project whose one release provisions into moto."""
    root = tmp_path / "project"
    write_project(root, aws_release(moto_endpoint))
    return root


def closed_url() -> str:
    """An agent URL nothing listens on (so nothing is looked up in the cluster)."""
    return f"http://127.0.0.1:{free_port()}"


def ready(agent: ChartAgent) -> bool:
    routes = agent.routes()
    return bool(routes and routes.get("ready"))


def test_all_green_then_the_agent_stops(
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    tmp_path: Path,
    project: Path,
    moto_endpoint: str,  # noqa: F811
) -> None:
    # namespaced: what other tests of the session left in their namespaces
    # (Services with routing problems, on purpose) is not this agent's
    scope = {"scope": "namespaced", "namespaces": [namespace]}
    with chart_agent(testbed, admin, namespace, tmp_path, scope) as agent:
        wait_for(lambda: ready(agent), timeout=120)
        url = f"http://127.0.0.1:{agent.port}"
        code, lines = doctor(project, testbed.admin_kubeconfig, "-n", namespace, "--agent-url", url)
        assert code == 0, lines
        assert [n for n in lines if n != "_summary"] == CLUSTER_LINES
        assert {lines[n][0] for n in CLUSTER_LINES} == {"ok"}, lines
        assert lines["kubeconfig"][1] == (
            f"{testbed.admin_kubeconfig}, context testbed, namespace {namespace}"
        )
        assert lines["cluster"][1].startswith(f"{testbed.server} answers (Kubernetes v1.")
        assert lines["credentials"][1] == (
            f"accepted as devstack-testbed-admin; may read Helm's releases in namespace {namespace}"
        )
        assert lines["traefik"][1] == "IngressRoute and Middleware CRDs in traefik.io/v1alpha1"
        assert lines["agent"][1].startswith(f"{url}: healthy, ready, ")
        assert lines["aws"][1] == (
            f"{moto_endpoint} (stock): answers as AWS (STS: account 123456789012)"
        )
        assert lines["versions"][1].startswith(
            f"devstack {VERSION} speaks protocol {PROTOCOL_VERSION}; "
            f"agent {VERSION}: protocol {PROTOCOL_VERSION}"
        )
        assert lines["_summary"] == "all good"
        # -o json: the same, for scripts
        done = run_doctor(project, testbed.admin_kubeconfig, "-n", namespace, "--agent-url",
                          url, "-o", "json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] is True
        assert [c["status"] for c in report["checks"]] == ["ok"] * len(CLUSTER_LINES)
    # the agent stopped
    code, lines = doctor(project, testbed.admin_kubeconfig, "-n", namespace, "--agent-url", url)
    assert code == 1
    assert lines["agent"][0] == "FAIL"
    assert lines["agent"][1].startswith(f"{url}: connection refused -- fix: is it running there?")
    assert lines["versions"][0] == "skip"


def _delete_crds(admin: Kube, group: str) -> None:
    for crd in crd_documents(CRD_DIR):
        name = f"{crd['spec']['names']['plural']}.{group}"
        if admin.maybe(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"):
            admin.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    wait_for(lambda: admin.maybe(f"/apis/{group}/v1alpha1") is None, timeout=120)


def test_traefik_crds_missing_then_the_older_group(
    testbed: Testbed, admin: Kube, namespace: str, project: Path
) -> None:
    agent = closed_url()
    # other tests of the session may have installed the older group (Traefik
    # 2.9's): take both away, and put back what was there
    had_older = admin.maybe("/apis/traefik.containo.us/v1alpha1") is not None
    try:
        _delete_crds(admin, "traefik.io")
        _delete_crds(admin, "traefik.containo.us")
        code, lines = doctor(project, testbed.admin_kubeconfig, "-n", namespace,
                             "--agent-url", agent)  # fmt: skip
        assert code == 1
        status, text = lines["traefik"]
        assert status == "FAIL"
        assert text.startswith(
            "no IngressRoute or Middleware CRD (traefik.io/v1alpha1 or "
            "traefik.containo.us/v1alpha1): Traefik's CRDs are not installed -- fix: install "
            "Traefik with its chart"
        )
        assert lines["credentials"][0] == lines["aws"][0] == "ok"

        # Traefik before 2.10: the CRDs in traefik.containo.us
        install_crds(admin, CRD_DIR, group="traefik.containo.us")
        wait_for(lambda: crds_established(admin, CRD_DIR, group="traefik.containo.us"))
        wait_for(lambda: admin.maybe("/apis/traefik.containo.us/v1alpha1"))
        code, lines = doctor(project, testbed.admin_kubeconfig, "-n", namespace,
                             "--agent-url", agent)  # fmt: skip
        assert lines["traefik"] == (
            "ok",
            "IngressRoute and Middleware CRDs in traefik.containo.us/v1alpha1 (Traefik before "
            "2.10: give the agent chart a matching traefikVersion)",
        )
    finally:
        if not had_older:
            _delete_crds(admin, "traefik.containo.us")
        else:
            install_crds(admin, CRD_DIR, group="traefik.containo.us")
            wait_for(lambda: crds_established(admin, CRD_DIR, group="traefik.containo.us"))
        install_crds(admin, CRD_DIR)
        wait_for(lambda: crds_established(admin, CRD_DIR))
        wait_for(lambda: admin.maybe("/apis/traefik.io/v1alpha1"))


def _kubeconfig_with(testbed: Testbed, path: Path, user: dict[str, str]) -> Path:
    doc = yaml.safe_load(testbed.admin_kubeconfig.read_text())
    doc["users"][0]["user"] = user
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_refused_token(testbed: Testbed, namespace: str, tmp_path: Path, project: Path) -> None:
    kubeconfig = _kubeconfig_with(testbed, tmp_path / "kc", {"token": "not-a-token-it-knows"})
    code, lines = doctor(project, kubeconfig, "-n", namespace)
    assert code == 1
    assert lines["cluster"] == ("ok", f"{testbed.server} answers")
    status, text = lines["credentials"]
    assert status == "FAIL"
    assert text.startswith(
        "refused by the API server (401 Unauthorized): the token or certificate is not valid "
        "(expired?) -- fix: log in again"
    )
    for name in ("traefik", "agent"):
        assert lines[name] == ("skip", "not checked: the credentials were not accepted")


def test_a_forbidden_token(testbed: Testbed, namespace: str, tmp_path: Path, project: Path) -> None:
    """The namespace's default ServiceAccount: authenticated, granted nothing."""
    kubeconfig = testbed.service_account_kubeconfig(namespace, "default", tmp_path / "kc")
    code, lines = doctor(project, kubeconfig)  # its context's namespace
    assert code == 1
    assert lines["kubeconfig"][1].endswith(f"namespace {namespace}")
    status, text = lines["credentials"]
    assert status == "FAIL"
    assert text.startswith(
        f"accepted as system:serviceaccount:{namespace}:default, but forbidden (403) to list "
        f"Secrets in namespace {namespace}, where Helm keeps its releases -- fix: ask the "
        f"cluster's admin for a Role in namespace {namespace}"
    )
    for name in ("traefik", "agent"):
        assert lines[name] == ("skip", "not checked: the credentials were not accepted")


def test_a_certificate_the_kubeconfig_does_not_trust(
    testbed: Testbed, tmp_path: Path, project: Path
) -> None:
    other = make_pki(tmp_path / "other-pki")  # another cluster's CA
    doc = yaml.safe_load(testbed.admin_kubeconfig.read_text())
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        other.ca_cert.read_bytes()
    ).decode()
    (tmp_path / "kc").write_text(yaml.safe_dump(doc))
    code, lines = doctor(project, tmp_path / "kc")
    assert code == 1
    status, text = lines["cluster"]
    assert status == "FAIL"
    assert text.startswith(f"{testbed.server}: the server's certificate is not trusted (")
    assert "-- fix: the kubeconfig does not trust the server's certificate" in text


def test_no_agent_pod_behind_its_service(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path, project: Path
) -> None:
    """The agent chart, installed with no replica: the API server's service
    proxy answers that no endpoint is there."""
    values = {"scope": "namespaced", "replicaCount": 0}
    docs = documents(render(AGENT_CHART, values, name=namespace, namespace=namespace))
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for doc in docs:
        admin.apply(doc)
    (service,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"]
    wait_for(lambda: admin.maybe(f"/api/v1/namespaces/{namespace}/endpoints/{service}"))

    code, lines = doctor(project, testbed.admin_kubeconfig, "-n", namespace,
                         "--agent-service", f"{namespace}/{service}")  # fmt: skip
    assert code == 1
    status, text = lines["agent"]
    assert status == "FAIL"
    assert text.startswith(
        f"{namespace}/{service} (through the API server): no agent pod is ready behind the "
        f"Service -- fix: see why: `kubectl -n {namespace} get pods -l "
        "app.kubernetes.io/component=agent`"
    )
    assert lines["versions"][0] == "skip"

    # found by its labels, by a user who may list only this namespace's Services
    user = "doctor"
    admin.create({"apiVersion": "v1", "kind": "ServiceAccount",
                  "metadata": {"name": user, "namespace": namespace}})  # fmt: skip
    admin.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": user, "namespace": namespace},
            "rules": [
                {"apiGroups": [""], "resources": ["secrets", "services"], "verbs": ["list", "get"]},
                {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get"]},
            ],
        }
    )
    admin.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": user, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
            "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": namespace}],
        }
    )
    kubeconfig = testbed.service_account_kubeconfig(namespace, user, tmp_path / "kc")
    with testbed.as_service_account(namespace, user) as as_user:  # the binding in force
        wait_for(lambda: as_user.get(f"/api/v1/namespaces/{namespace}/services"))
    code, lines = doctor(project, kubeconfig)
    assert lines["credentials"][0] == "ok", lines
    assert lines["agent"][1].startswith(
        f"{namespace}/{service} (through the API server): no agent pod is ready behind the Service"
    )

    # a named Service that is not there
    code, lines = doctor(project, testbed.admin_kubeconfig, "-n", namespace,
                         "--agent-service", f"{namespace}/nothing")  # fmt: skip
    assert lines["agent"][0] == "FAIL"
    assert lines["agent"][1].startswith(
        f"no Service {namespace}/nothing (--agent-service) -- fix: name the agent chart's Service"
    )


def test_an_agent_of_another_protocol(
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    tmp_path: Path,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real agent, from a build that speaks protocol PROTOCOL_VERSION + 1
    (tests/support/protocol.py: the constant set before the agent starts;
    no such build exists to install)."""
    other = PROTOCOL_VERSION + 1
    for name, value in speaking_protocol(tmp_path / "site", other).items():
        monkeypatch.setenv(name, value)  # the agent's environment (chart_agent passes it on)
    # namespaced: what other tests of the session left in their namespaces
    # (Services with routing problems, on purpose) is not this agent's
    scope = {"scope": "namespaced", "namespaces": [namespace]}
    with chart_agent(testbed, admin, namespace, tmp_path, scope) as agent:
        wait_for(lambda: ready(agent), timeout=120)
        url = f"http://127.0.0.1:{agent.port}"
        code, lines = doctor(project, testbed.admin_kubeconfig, "-n", namespace,
                             "--agent-url", url, env=ENV)  # fmt: skip
        assert code == 1
        assert lines["agent"][0] == "ok"
        status, text = lines["versions"]
        assert status == "FAIL"
        assert text.startswith(
            f"the agent ({VERSION}) speaks protocol {other}, but this devstack {VERSION} speaks "
            f"protocol {PROTOCOL_VERSION} -- fix: install the devstack the cluster runs"
        )
