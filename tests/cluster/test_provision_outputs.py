"""Provisioning's outputs on the testbed's real API server: the
ConfigMap and Secret that ``devstack provision`` writes through
devstack.agent.kube, as the library sink and as the hook Job's command
line (against moto), the latter under a ServiceAccount granted only what
the chart's provisioning Role grants (helm/devstack-lib/templates/_provision.tpl:
create, and get/update/delete on the two names)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.cli.main import main
from devstack.provision import outputs
from devstack.provision.kube import AgentKubeWriter
from tests.support.aws import Backend, moto, moto_endpoint  # noqa: F401  (fixtures)
from tests.support.testbed import Kube, Testbed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CONFIG_MAP, SECRET = "shop-devstack-aws", "shop-devstack-aws-secret"


def _paths(namespace: str) -> tuple[str, str]:
    return (
        f"/api/v1/namespaces/{namespace}/configmaps/{CONFIG_MAP}",
        f"/api/v1/namespaces/{namespace}/secrets/{SECRET}",
    )


def _decoded(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def test_outputs_go_to_a_configmap_and_a_secret(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    labels = outputs.labels(release="shop", owner="alice")
    sink = outputs.KubernetesSink(
        AgentKubeWriter(kubeconfig=str(testbed.admin_kubeconfig)),
        namespace=namespace,
        config_map=CONFIG_MAP,
        secret=SECRET,
        labels=labels,
    )
    cm_path, secret_path = _paths(namespace)
    sink.write(
        outputs.Outputs({"DEVSTACK_SQS_JOBS_URL": "u1"}, {"DEVSTACK_SECRET_PW_VALUE": "s3cr3t"})
    )
    cm = admin.get(cm_path)
    assert cm["data"] == {"DEVSTACK_SQS_JOBS_URL": "u1"}
    assert cm["metadata"]["labels"] == labels
    assert "s3cr3t" not in str(cm)
    secret = admin.get(secret_path)
    assert secret["type"] == "Opaque"
    assert _decoded(secret, "DEVSTACK_SECRET_PW_VALUE") == "s3cr3t"

    # A rerun with other values replaces the data exactly.
    sink.write(outputs.Outputs({"DEVSTACK_SQS_JOBS_URL": "u2"}, {}))
    assert admin.get(cm_path)["data"] == {"DEVSTACK_SQS_JOBS_URL": "u2"}
    assert not admin.get(secret_path).get("data")

    sink.delete()
    assert admin.maybe(cm_path) is None and admin.maybe(secret_path) is None
    sink.delete()  # already gone is fine


def test_without_a_secret_name_secret_values_are_written_nowhere(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    sink = outputs.KubernetesSink(
        AgentKubeWriter(kubeconfig=str(testbed.admin_kubeconfig)),
        namespace=namespace,
        config_map="cm",
        secret=None,
        labels={},
    )
    sink.write(outputs.Outputs({"A": "1"}, {"S": "hidden"}))
    assert admin.get(f"/api/v1/namespaces/{namespace}/configmaps/cm")["data"] == {"A": "1"}
    secrets = admin.get(f"/api/v1/namespaces/{namespace}/secrets")["items"]
    assert "hidden" not in str(secrets)
    assert all(s["type"] != "Opaque" for s in secrets)


def _hook_account(testbed: Testbed, admin: Kube, namespace: str) -> None:
    """ServiceAccount ``provision`` with the chart's provisioning Role."""
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "provision", "namespace": namespace},
        }
    )
    rules = [
        {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CONFIG_MAP],
         "verbs": ["get", "update", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET],
         "verbs": ["get", "update", "delete"]},
    ]  # fmt: skip
    meta = {"name": "provision", "namespace": namespace}
    admin.create(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": rules}
    )  # fmt: skip
    admin.create(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "provision"},
         "subjects": [{"kind": "ServiceAccount", "name": "provision", "namespace": namespace}]}
    )  # fmt: skip

    # the authorizer reads roles from its caches: wait until they are in force
    def allowed(kube: Kube) -> bool:
        return all(
            kube.post(
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                 "spec": {"resourceAttributes": {"namespace": namespace, "resource": resource,
                                                 "verb": verb, "name": name}}},
            )["status"].get("allowed")
            for resource, name in (("configmaps", CONFIG_MAP), ("secrets", SECRET))
            for verb in ("get", "update", "delete")
        )  # fmt: skip

    with testbed.as_service_account(namespace, "provision") as kube:
        wait_for(lambda: allowed(kube))


def test_the_hook_writes_outputs_under_the_charts_role(
    moto: Backend,  # noqa: F811
    testbed: Testbed,
    admin: Kube,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The hook Job's command line, its kubeconfig minted for a ServiceAccount
    with the chart's provisioning Role: non-secret values in the ConfigMap,
    secret ones only in the Secret; the pre-delete hook removes both. A call
    the Role does not grant would be refused (403) and fail the run."""
    _hook_account(testbed, admin, namespace)
    kubeconfig = testbed.service_account_kubeconfig(namespace, "provision", tmp_path / "kc")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump({"sqs": [{"name": "jobs"}], "secrets": [{"name": "pw", "value": "s3cr3t"}]})
    )
    args = [
        "provision", "--endpoint", moto.endpoint, "--spec", str(spec),
        "--release", "shop", "--namespace", namespace, "--kubeconfig", str(kubeconfig),
        "--outputs-configmap", CONFIG_MAP, "--outputs-secret", SECRET,
    ]  # fmt: skip
    cm_path, secret_path = _paths(namespace)

    rc = main(args)
    _, err = capsys.readouterr()
    assert rc == 0, err
    cm = admin.get(cm_path)
    assert cm["data"]["DEVSTACK_SQS_JOBS_NAME"] == "jobs"
    assert cm["metadata"]["labels"]["devstack.dev/release"] == "shop"
    assert "s3cr3t" not in str(cm)
    assert _decoded(admin.get(secret_path), "DEVSTACK_SECRET_PW_VALUE") == "s3cr3t"

    # a rerun that changes nothing (get, then nothing to replace) is allowed too
    rc = main(args)
    _, err = capsys.readouterr()
    assert rc == 0, err

    rc = main([*args, "--teardown"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert admin.maybe(cm_path) is None and admin.maybe(secret_path) is None
    assert moto.everything() == set()
