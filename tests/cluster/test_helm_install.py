"""alice installs, upgrades and uninstalls her copy of the example chart with
Helm's own engine (helm-python-sdk: `helm install`, `helm upgrade`, `helm
uninstall`) on the testbed's real API server, releases stored as Secrets.

The provisioning hooks run for real: the real job controller makes each hook
Job's pod, the real scheduler puts it on the kwok node, and the pod carries
the testbed's ``LOCAL_RUN_LABEL`` (through the chart's
``devstack.provision.podLabels``), so kwok leaves it Running and
:class:`tests.support.helm.JobRunner` plays its kubelet: it runs the
container's `devstack provision` locally against moto, under a token of the
pod's own ServiceAccount, and reports the exit through the pod's status; the
job controller then marks the Job Complete and Helm's hook wait ends. Every
check reads the server, moto or the API server's audit log."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.helm.charts import prepare_example
from tests.support.aws import Backend, moto, moto_endpoint  # noqa: F401
from tests.support.helm import (
    JobRunner,
    audit_requests,
    namespace_leftovers,
    permits,
    service_account_user,
    unused_grants,
)
from tests.support.net import free_port
from tests.support.testbed import (
    LOCAL_RUN_LABEL,
    NODE_NAMES,
    Kube,
    Testbed,
    condition,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "hello-alice"
PROVISION = "hello-alice-devstack-provision"
TEARDOWN = "hello-alice-devstack-teardown"
OUTPUTS = "hello-alice-devstack-aws"
AWS: dict[str, Any] = {
    "sqs": [{"name": "jobs", "deadLetter": {"maxReceiveCount": 5}}],
    "s3": [{"name": "uploads"}],
    "secrets": [{"name": "db-password", "value": "s3cret-pw"}],
}
#: what the API server's audit log calls the admin (Helm runs as it)
ADMIN = "devstack-testbed-admin"
JOB_CONTROLLER = service_account_user("kube-system", "job-controller")


def values(aws: dict[str, Any] | None, endpoint: str) -> dict[str, Any]:
    return {
        "devstack": {
            "enabled": True,
            "owner": "alice",
            "provision": {"endpoint": endpoint, "podLabels": {LOCAL_RUN_LABEL: "true"}},
            "aws": aws,
        }
    }


def _secret(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    data = kube.get(f"/api/v1/namespaces/{namespace}/secrets/{name}").get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _received(event: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(event["requestReceivedTimestamp"])


def _ready_pods(admin: Kube, namespace: str) -> list[dict[str, Any]]:
    pods = admin.get(
        f"/api/v1/namespaces/{namespace}/pods",
        labelSelector=f"app.kubernetes.io/instance={RELEASE},!{LOCAL_RUN_LABEL}",
    )["items"]
    return [p for p in pods if condition(p, "Ready") == "True" and not p["metadata"].get(
        "deletionTimestamp")]  # fmt: skip


def _deployment_converged(admin: Kube, namespace: str) -> bool:
    d = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}")
    status = d.get("status") or {}
    return (
        status.get("observedGeneration") == d["metadata"]["generation"]
        and status.get("updatedReplicas") == d["spec"]["replicas"]
        and status.get("availableReplicas") == d["spec"]["replicas"]
        and condition(d, "Available") == "True"
    )


def _hook_objects_gone(admin: Kube, namespace: str, name: str) -> bool:
    paths = [
        f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{PROVISION}",
        f"/api/v1/namespaces/{namespace}/secrets/{PROVISION}",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/{PROVISION}",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings/{PROVISION}",
    ]
    pods = admin.get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"batch.kubernetes.io/job-name={name}"
    )["items"]
    return not pods and all(admin.maybe(p) is None for p in paths)


def test_install_upgrade_uninstall_with_the_provisioning_hooks(
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    moto: Backend,  # noqa: F811
    tmp_path: Path,
) -> None:
    chart = prepare_example(tmp_path / "charts")
    helm = helm_python.Config(
        kubeconfig_content=testbed.admin_kubeconfig.read_text(), namespace=namespace
    )
    audit_start = testbed.audit_offset()
    cm_path = f"/api/v1/namespaces/{namespace}/configmaps/{OUTPUTS}"
    # The hook Jobs reach moto; credentials come from the chart's hook Secret.
    with JobRunner(testbed, tmp_path / "jobs", namespace=namespace) as runner:
        # helm install: the pre-install hook provisions before anything else
        # exists; then Helm waits until every object is ready (kstatus).
        helm.install(chart, RELEASE, values(AWS, moto.endpoint), wait="watcher", timeout=300)
        (install,) = runner.runs
        assert install.job == PROVISION
        assert install.returncode == 0, install.stderr
        # the real scheduler bound it to the simulated node
        assert install.node in NODE_NAMES
        assert condition(install.pod, "PodScheduled") == "True"
        assert install.pod["metadata"]["labels"][LOCAL_RUN_LABEL] == "true"

        # the real job controller saw the pod succeed and completed the Job
        # (Helm then deleted it: hook-succeeded)
        job_status = [
            e
            for e in testbed.audit_events(JOB_CONTROLLER, offset=audit_start)
            if (e.get("objectRef") or {}).get("resource") == "jobs"
            and e["objectRef"].get("subresource") == "status"
            and e["objectRef"].get("name") == PROVISION
            and e["objectRef"].get("namespace") == namespace
            and e["verb"] in ("update", "patch")
        ]
        assert any(_received(e) > install.reported for e in job_status), job_status

        # provisioning ended before Helm wrote the Deployment
        deployment_writes = [
            e
            for e in testbed.audit_events(ADMIN, offset=audit_start)
            if (e.get("objectRef") or {}).get("resource") == "deployments"
            and e["objectRef"].get("name") == RELEASE
            and e["objectRef"].get("namespace") == namespace
            and e["verb"] in ("create", "patch", "update")
        ]
        assert deployment_writes
        assert install.reported < min(_received(e) for e in deployment_writes)

        # the Deployment's pods are Ready on the simulated node
        assert _deployment_converged(admin, namespace)
        pods = _ready_pods(admin, namespace)
        assert pods and all(p["spec"]["nodeName"] in NODE_NAMES for p in pods)

        # The resources exist, as alice's, and the outputs are where the app reads them.
        assert moto.everything() == {
            "sqs alice-jobs",
            "sqs alice-jobs-dlq",
            "s3 alice-uploads",
            "secrets alice-db-password",
        }
        cm = admin.get(cm_path)
        data = cm["data"]
        jobs_url = moto.client("sqs").get_queue_url(QueueName="alice-jobs")["QueueUrl"]
        assert data["DEVSTACK_SQS_JOBS_URL"] == jobs_url
        assert data["DEVSTACK_SQS_JOBS_DLQ_NAME"] == "alice-jobs-dlq"
        assert data["DEVSTACK_S3_UPLOADS_BUCKET"] == "alice-uploads"
        assert data["DEVSTACK_SECRET_DB_PASSWORD_NAME"] == "alice-db-password"
        assert data["AWS_ENDPOINT_URL"] == moto.endpoint
        assert data["AWS_REGION"] == "us-east-1"
        assert "s3cret-pw" not in str(cm)
        secret = _secret(admin, namespace, OUTPUTS)
        assert secret["DEVSTACK_SECRET_DB_PASSWORD_VALUE"] == "s3cret-pw"
        deployment = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}")
        app = deployment["spec"]["template"]["spec"]["containers"][0]
        assert app["envFrom"] == [
            {"configMapRef": {"name": OUTPUTS}},
            {"secretRef": {"name": OUTPUTS, "optional": True}},
        ]
        # Hooks that succeeded are deleted, support objects and pods included.
        wait_for(lambda: _hook_objects_gone(admin, namespace, PROVISION), timeout=120)

        # helm upgrade without the bucket (an empty list, as docs/helm.md says
        # to drop a kind an earlier values file declares: Helm replaces lists)
        # and with a new password: the pre-upgrade hook prunes the bucket and
        # updates the secret and the outputs; the Deployment converges again.
        less = {**AWS, "s3": [], "secrets": [{"name": "db-password", "value": "n3w-pw"}]}
        helm.upgrade(chart, RELEASE, values(less, moto.endpoint), wait="watcher", timeout=300)
        assert len(runner.runs) == 2
        upgrade = runner.runs[-1]
        assert upgrade.job == PROVISION
        assert upgrade.pod["metadata"]["uid"] != install.pod["metadata"]["uid"]
        assert upgrade.returncode == 0, upgrade.stderr
        assert "pruned        s3 alice-uploads" in upgrade.stdout
        assert "s3 alice-uploads" not in moto.everything()
        assert "DEVSTACK_S3_UPLOADS_BUCKET" not in admin.get(cm_path)["data"]
        secret = _secret(admin, namespace, OUTPUTS)
        assert secret["DEVSTACK_SECRET_DB_PASSWORD_VALUE"] == "n3w-pw"
        for stream in (upgrade.stdout, upgrade.stderr):
            assert "n3w-pw" not in stream and "s3cret-pw" not in stream
        # Helm's release records, as Secrets on the server
        records = admin.get(
            f"/api/v1/namespaces/{namespace}/secrets", labelSelector=f"owner=helm,name={RELEASE}"
        )["items"]
        assert {r["metadata"]["labels"]["version"]: r["metadata"]["labels"]["status"]
                for r in records} == {"1": "superseded", "2": "deployed"}  # fmt: skip
        assert _deployment_converged(admin, namespace)
        assert _ready_pods(admin, namespace)
        wait_for(lambda: _hook_objects_gone(admin, namespace, PROVISION), timeout=120)

        # helm uninstall: the pre-delete hook tears everything of alice's
        # down, then Helm deletes the release's objects and its records.
        helm.uninstall(RELEASE, wait="watcher", timeout=300)
        assert len(runner.runs) == 3
        teardown = runner.runs[-1]
        assert teardown.job == TEARDOWN
        assert teardown.returncode == 0, teardown.stderr
        assert teardown.node in NODE_NAMES
        assert moto.everything() == set()
        # nothing the release made is left: objects, hooks, outputs, pods,
        # Helm's release Secrets
        wait_for(lambda: namespace_leftovers(admin, namespace) == [], timeout=180)

    # Every call the hooks made was one their Role allows, nothing was
    # refused, and every (verb, object) the Role grants was used: the Role is
    # exactly what `devstack provision` needs.
    made = audit_requests(
        testbed.audit_events(service_account_user(namespace, PROVISION), offset=audit_start)
    )
    assert made
    assert [q for q in made if q.code == 403] == []
    assert {q.decision for q in made} == {"allow"}
    for run in runner.runs:
        assert run.rules
        assert run.rules == runner.runs[0].rules
        for request in made:
            assert permits(run.rules, request), request
    assert unused_grants(runner.runs[0].rules, made) == []


def test_a_failing_provisioning_hook_fails_the_install_before_the_deployment(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    chart = prepare_example(tmp_path / "charts")
    helm = helm_python.Config(
        kubeconfig_content=testbed.admin_kubeconfig.read_text(), namespace=namespace
    )
    # nothing listens there: `devstack provision` fails; no retry of the pod
    nowhere = f"http://127.0.0.1:{free_port()}"
    vals = values({"sqs": [{"name": "jobs"}]}, nowhere)
    vals["devstack"]["provision"]["backoffLimit"] = 0
    with JobRunner(testbed, tmp_path / "jobs", namespace=namespace) as runner:
        with pytest.raises(helm_python.HelmReleaseError):
            helm.install(chart, RELEASE, vals, wait="watcher", timeout=300)
        (run,) = runner.runs
    assert run.job == PROVISION
    assert run.returncode != 0
    # the pod's status says how its container ended, as a kubelet reports it
    (pod,) = admin.get(
        f"/api/v1/namespaces/{namespace}/pods",
        labelSelector=f"batch.kubernetes.io/job-name={PROVISION}",
    )["items"]
    assert pod["status"]["phase"] == "Failed"
    (container,) = pod["status"]["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == run.returncode
    # the real job controller failed the Job (a failed hook is kept), and
    # Helm created nothing after it
    job = admin.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{PROVISION}")
    assert condition(job, "Failed") == "True"
    assert job["status"].get("failed") == 1
    assert admin.maybe(f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}") is None
