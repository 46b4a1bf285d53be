"""alice installs her copy of the example chart with Helm's own SDK
(helm-python-sdk: `helm install`, `helm upgrade`, `helm uninstall`) into the
Kubernetes emulator. A job runner stands in for the kubelet: it runs each hook
Job's container (`devstack provision ...`) for real, against moto, and marks the
Job Complete. Every check reads the emulator or moto back directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.helm.charts import prepare_example
from tests.support.aws import Backend, moto, moto_endpoint  # noqa: F401
from tests.support.helm import JobRunner, calls, permits, rbac_rules
from tests.support.kube import EmulatorThread, kube, secret_value  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RELEASE = "hello-alice"
NAMESPACE = "dev"
AWS: dict[str, Any] = {
    "sqs": [{"name": "jobs", "deadLetter": {"maxReceiveCount": 5}}],
    "s3": [{"name": "uploads"}],
    "secrets": [{"name": "db-password", "value": "s3cret-pw"}],
}


def values(aws: dict[str, Any] | None, endpoint: str) -> dict[str, Any]:
    return {
        "devstack": {
            "enabled": True,
            "owner": "alice",
            "provision": {"endpoint": endpoint},
            "aws": aws,
        }
    }


def first(kube: EmulatorThread, method: str, plural: str, name: str) -> int:  # noqa: F811
    """Index in the emulator's log of the first write of ``plural/name`` by Helm."""
    for i, r in enumerate(kube.emulator.log):
        if r.method == method and r.plural == plural and r.name == name:
            return i
    raise AssertionError(f"no {method} of {plural}/{name}")


def test_install_upgrade_uninstall_with_the_provisioning_hooks(
    kube: EmulatorThread,  # noqa: F811
    moto: Backend,  # noqa: F811
    tmp_path: Path,
) -> None:
    chart = prepare_example(tmp_path / "charts")
    em = kube.emulator
    cms, secrets = em.resource("v1", "configmaps"), em.resource("v1", "secrets")
    helm = helm_python.Config(
        kubeconfig_content=kube.kubeconfig(tmp_path / "kubeconfig").read_text(),
        namespace=NAMESPACE,
        storage_driver="memory",
    )
    # The hook Jobs reach moto; credentials come from the chart's hook Secret.
    with JobRunner(kube, tmp_path / "jobs", env={}) as runner:
        # helm install: the pre-install hook provisions before anything else exists.
        helm.install(chart, RELEASE, values(AWS, moto.endpoint), wait="hookOnly", timeout=300)
        (install,) = runner.runs
        assert install.name == "hello-alice-devstack-provision"
        assert install.returncode == 0, install.stderr
        job_created = first(kube, "PATCH", "jobs", install.name)
        deployment_created = first(kube, "PATCH", "deployments", RELEASE)
        assert job_created < install.log_index <= deployment_created

        # The resources exist, as alice's, and the outputs are where the app reads them.
        assert moto.everything() == {
            "sqs alice-jobs",
            "sqs alice-jobs-dlq",
            "s3 alice-uploads",
            "secrets alice-db-password",
        }
        cm = em.get(cms, NAMESPACE, "hello-alice-devstack-aws")
        assert cm is not None
        data = cm["data"]
        jobs_url = moto.client("sqs").get_queue_url(QueueName="alice-jobs")["QueueUrl"]
        assert data["DEVSTACK_SQS_JOBS_URL"] == jobs_url
        assert data["DEVSTACK_SQS_JOBS_DLQ_NAME"] == "alice-jobs-dlq"
        assert data["DEVSTACK_S3_UPLOADS_BUCKET"] == "alice-uploads"
        assert data["DEVSTACK_SECRET_DB_PASSWORD_NAME"] == "alice-db-password"
        assert data["AWS_ENDPOINT_URL"] == moto.endpoint
        assert data["AWS_REGION"] == "us-east-1"
        assert "s3cret-pw" not in str(cm)
        secret = em.get(secrets, NAMESPACE, "hello-alice-devstack-aws")
        assert secret is not None
        assert secret_value(secret, "DEVSTACK_SECRET_DB_PASSWORD_VALUE") == "s3cret-pw"
        deployment = em.get(em.resource("apps/v1", "deployments"), NAMESPACE, RELEASE)
        assert deployment is not None
        app = deployment["spec"]["template"]["spec"]["containers"][0]
        assert app["envFrom"] == [
            {"configMapRef": {"name": "hello-alice-devstack-aws"}},
            {"secretRef": {"name": "hello-alice-devstack-aws", "optional": True}},
        ]
        # Hooks that succeeded are deleted, support objects included.
        for plural, api in (("jobs", "batch/v1"), ("serviceaccounts", "v1"), ("secrets", "v1")):
            assert em.get(em.resource(api, plural), NAMESPACE, install.name) is None, plural

        # helm upgrade without the bucket (null: the chart's own values.yaml declares
        # one, and Helm merges maps) and with a new password: the pre-upgrade hook
        # prunes the bucket and updates the secret and the outputs.
        less = {**AWS, "s3": None, "secrets": [{"name": "db-password", "value": "n3w-pw"}]}
        helm.upgrade(chart, RELEASE, values(less, moto.endpoint), wait="hookOnly", timeout=300)
        upgrade = runner.runs[-1]
        assert upgrade.returncode == 0, upgrade.stderr
        assert "pruned        s3 alice-uploads" in upgrade.stdout
        assert "s3 alice-uploads" not in moto.everything()
        data = em.get(cms, NAMESPACE, "hello-alice-devstack-aws")["data"]  # type: ignore[index]
        assert "DEVSTACK_S3_UPLOADS_BUCKET" not in data
        secret = em.get(secrets, NAMESPACE, "hello-alice-devstack-aws")
        assert secret is not None
        assert secret_value(secret, "DEVSTACK_SECRET_DB_PASSWORD_VALUE") == "n3w-pw"
        for stream in (upgrade.stdout, upgrade.stderr):
            assert "n3w-pw" not in stream and "s3cret-pw" not in stream

        # helm uninstall: the pre-delete hook tears everything of alice's down.
        helm.uninstall(RELEASE, wait="hookOnly", timeout=300)
        teardown = runner.runs[-1]
        assert teardown.name == "hello-alice-devstack-teardown"
        assert teardown.returncode == 0, teardown.stderr
        assert moto.everything() == set()
        assert em.get(cms, NAMESPACE, "hello-alice-devstack-aws") is None
        assert em.get(secrets, NAMESPACE, "hello-alice-devstack-aws") is None
        assert len(runner.runs) == 3

    # Every call the hooks made was one their Role allows, and every verb the Role
    # grants was used: the Role is exactly what `devstack provision` needs.
    made = calls(em.log, "devstack-provision")
    assert made
    for run in runner.runs:
        (role,) = run.roles
        rules = rbac_rules(role)
        for call in made:
            assert permits(rules, *call), call
    granted = {(g, r, v) for rule in rbac_rules(role) for g in rule.groups
               for r in rule.resources for v in rule.verbs}  # fmt: skip
    assert granted == {(g, r, v) for g, r, v, _ in made}
