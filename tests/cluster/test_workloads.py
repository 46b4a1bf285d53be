"""What the real controllers, the scheduler and kwok's simulated node do with
workloads: a Deployment becomes a ReplicaSet becomes Pods that are scheduled
on the node and turn Ready; a Job's pod completes; deleting an owner deletes
its dependents through the garbage collector. Pods never run their images
(no container runtime): kwok only moves their status along."""

from __future__ import annotations

from typing import Any

from tests.support.testbed import NODE_NAMES, Kube, condition, wait_condition, wait_for

Obj = dict[str, Any]


def _pod_template(app: str) -> Obj:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": app, "image": "example.invalid/never-pulled:1"}]},
    }


def _owned_by(obj: Obj, kind: str, uid: str) -> bool:
    return any(
        r["kind"] == kind and r["uid"] == uid and r.get("controller")
        for r in obj["metadata"].get("ownerReferences") or ()
    )


def test_a_deployment_becomes_a_replicaset_and_ready_pods_on_the_node(
    admin: Kube, namespace: str
) -> None:
    deployment = admin.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": _pod_template("web"),
            },
        }
    )
    apps = f"/apis/apps/v1/namespaces/{namespace}"
    (rs,) = wait_for(lambda: admin.get(f"{apps}/replicasets", labelSelector="app=web")["items"])
    assert _owned_by(rs, "Deployment", deployment["metadata"]["uid"])

    def ready_pods() -> list[Obj]:
        pods = admin.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=web")["items"]
        ready = [p for p in pods if condition(p, "Ready") == "True"]
        return ready if len(ready) == 2 else []

    pods = wait_for(ready_pods)
    for pod in pods:
        assert _owned_by(pod, "ReplicaSet", rs["metadata"]["uid"])
        assert pod["spec"]["nodeName"] in NODE_NAMES
        assert pod["status"]["phase"] == "Running"
        assert condition(pod, "PodScheduled") == "True"
        # the ServiceAccount admission plugin mounted the namespace's token
        assert pod["spec"]["serviceAccountName"] == "default"
        assert any(v["name"].startswith("kube-api-access-") for v in pod["spec"]["volumes"])

    def available() -> Obj | None:
        d = admin.get(f"{apps}/deployments/web")
        return d if d["status"].get("availableReplicas") == 2 else None

    d = wait_for(available)
    assert condition(d, "Available") == "True"

    # scaled down: the ReplicaSet controller deletes one Pod, kwok lets it go
    admin.merge_patch(f"{apps}/deployments/web", {"spec": {"replicas": 1}})
    wait_for(
        lambda: (
            len(admin.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=web")["items"])
            == 1
        )
    )


def test_a_jobs_pod_completes_on_the_node(admin: Kube, namespace: str) -> None:
    admin.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once", "namespace": namespace},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    **_pod_template("once"),
                    "spec": {**_pod_template("once")["spec"], "restartPolicy": "Never"},
                },
            },
        }
    )
    job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs/once"
    job = wait_condition(admin, job_path, "Complete")
    assert job["status"]["succeeded"] == 1
    (pod,) = admin.get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector="batch.kubernetes.io/job-name=once"
    )["items"]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] in NODE_NAMES


def test_deleting_an_owner_deletes_its_dependents_through_the_garbage_collector(
    admin: Kube, namespace: str
) -> None:
    service = admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "owner", "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }
    )
    owner_ref = {
        "apiVersion": "v1",
        "kind": "Service",
        "name": "owner",
        "uid": service["metadata"]["uid"],
    }
    route = admin.create(
        {
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "IngressRoute",
            "metadata": {"name": "owned", "namespace": namespace, "ownerReferences": [owner_ref]},
            "spec": {
                "entryPoints": ["web"],
                "routes": [
                    {
                        "kind": "Rule",
                        "match": "Host(`owner.localtest.me`)",
                        "services": [{"name": "owner", "port": 80}],
                    }
                ],
            },
        }
    )
    unowned = admin.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kept", "namespace": namespace},
        }
    )
    route_path = admin.object_path(route)
    assert admin.maybe(route_path) is not None

    admin.delete(admin.object_path(service))
    wait_for(lambda: admin.maybe(route_path) is None)
    assert admin.maybe(admin.object_path(unowned)) is not None
