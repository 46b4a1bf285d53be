"""`devstack agent` run as the agent chart (helm/devstack) runs it, against
the testbed's real API server.

The chart is rendered by Helm's engine and applied to the server: its
ServiceAccount, roles and bindings, ConfigMap and Deployment. The agent then
runs as a local process with the ConfigMap's environment and a kubeconfig
minted for the chart's ServiceAccount (TokenRequest), so every call it makes
is authorized by the real RBAC authorizer against the chart's own rules.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL
from tests.helm.charts import AGENT_CHART, documents, render
from tests.support.net import free_port
from tests.support.testbed import Kube, Testbed, wait_for

Obj = dict[str, Any]
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}
#: The pod name the agent is told it runs as (its Lease holder identity).
POD_NAME = "devstack-0"


@dataclass(frozen=True)
class ChartAgent:
    """The chart's objects on the server and the agent running as its
    ServiceAccount, with its HTTP API on ``port``."""

    docs: list[Obj]
    release: str
    port: int
    log: Path

    def one(self, kind: str, name: str | None = None) -> Obj:
        (doc,) = [
            d for d in self.docs if d["kind"] == kind and name in (None, d["metadata"]["name"])
        ]
        return doc

    def config(self) -> Obj:
        """The ConfigMap the Deployment takes the agent's environment from
        (the chart has another: the Grafana dashboard's)."""
        (source,) = self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        return self.one("ConfigMap", source["configMapRef"]["name"])

    def routes(self) -> Any:
        """``/v1/routes``, or None while the agent does not answer yet."""
        try:
            r = httpx.get(f"http://127.0.0.1:{self.port}/v1/routes", timeout=5)
        except httpx.TransportError:
            return None
        return r.json() if r.status_code == 200 else None


@contextlib.contextmanager
def chart_agent(
    testbed: Testbed,
    admin: Kube,
    release: str,
    tmp_path: Path,
    values: dict[str, Any],
    *,
    refusals_allowed: bool = False,
    server: str | None = None,
    edit: Callable[[list[Obj]], list[Obj]] | None = None,
) -> Iterator[ChartAgent]:
    """Apply the chart (release ``release`` in namespace ``release``), run
    `devstack agent` as its Deployment would, stop it on the way out. The
    agent must exit cleanly and, unless ``refusals_allowed``, must have been
    refused nothing. ``server``: reach the API server there (a proxy).
    ``edit``: change the rendered documents before they are applied."""
    docs = documents(render(AGENT_CHART, values, name=release, namespace=release))
    if edit is not None:
        docs = edit(docs)
    for doc in docs:
        admin.apply(doc)
    run = ChartAgent(docs, release, free_port(), tmp_path / "agent.log")
    sa_name = run.one("ServiceAccount")["metadata"]["name"]
    # The authorizer reads roles and bindings from its caches, which lag the
    # writes a little (more so on a just-restarted server): start the agent
    # once every rule the chart grants is in force, as a pod would start
    # seconds after `helm install`.
    with testbed.as_service_account(release, sa_name) as as_agent:
        wait_for(lambda: _allgranted(as_agent, docs))
    # as the Deployment runs it: the ConfigMap's environment, the pod's name
    # and namespace; on loopback
    env = dict(run.config()["data"])
    env |= {
        "POD_NAME": POD_NAME,
        "POD_NAMESPACE": release,
        "DEVSTACK_LEASE_NAMESPACE": release,
        "DEVSTACK_AGENT_LISTEN": f"127.0.0.1:{run.port}",
    }
    kubeconfig = testbed.service_account_kubeconfig(
        release, sa_name, tmp_path / "agent.kubeconfig", server=server
    )
    with run.log.open("wb") as out:
        agent = subprocess.Popen(
            [str(Path(sys.executable).parent / "devstack"), "agent", "--kubeconfig",
             str(kubeconfig)],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield run
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            code = agent.wait(10)
        # shown with a failure (pytest prints what a failing test printed)
        print(f"agent log ({run.log}):\n{run.log.read_text(errors='replace')[-4000:]}")
        for d in docs:
            if d["kind"] in CLUSTER_SCOPED:
                admin.delete(admin.object_path(d))
    text = run.log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    # nothing it tried was refused: the chart grants all it calls
    refused = [line for line in text.splitlines() if ": 403 " in line]
    assert refusals_allowed or refused == [], refused[:3]


def granted(docs: list[Obj]) -> Iterator[dict[str, str]]:
    """The resource attributes of every request the rendered Roles and
    ClusterRoles grant, one per (group, resource, verb, name)."""
    for role in docs:
        if role["kind"] in ("Role", "ClusterRole"):
            namespace = role["metadata"].get("namespace", "")
            for rule in role.get("rules") or ():
                for group, resource, verb, name in itertools.product(
                    rule["apiGroups"], rule["resources"], rule["verbs"],
                    rule.get("resourceNames") or [""],
                ):  # fmt: skip
                    yield {"namespace": namespace, "group": group, "resource": resource,
                           "verb": verb, "name": name}  # fmt: skip


def _allgranted(kube: Kube, docs: list[Obj]) -> bool:
    """Whether the caller may do all the roles grant (SelfSubjectAccessReview)."""
    return all(
        kube.post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            },
        )["status"].get("allowed")
        for attributes in granted(docs)
    )


def without_grant(docs: list[Obj], resource: str, verb: str) -> list[Obj]:
    """The rendered chart with ``verb`` on ``resource`` taken from its Roles
    and ClusterRoles (the rule's other resources keep it)."""
    out = copy.deepcopy(docs)
    for doc in out:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        rules = []
        for rule in doc.get("rules") or ():
            if resource in rule["resources"] and verb in rule["verbs"]:
                others = [r for r in rule["resources"] if r != resource]
                if others:
                    rules.append({**rule, "resources": others})
                rule = {**rule, "resources": [resource],
                        "verbs": [v for v in rule["verbs"] if v != verb]}  # fmt: skip
            rules.append(rule)
        doc["rules"] = rules
    return out


def routed_service(
    admin: Kube, namespace: str, name: str, *, service: str = "shop", owner: str | None = None
) -> Obj:
    """Create a Service the agent routes: the baseline of ``service``, or
    ``owner``'s copy of it (port 8000)."""
    labels = {SERVICE_LABEL: service}
    if owner:
        labels[OWNER_LABEL] = owner
    created: Obj = admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"ports": [{"name": "http", "port": 8000, "targetPort": 8000}]},
        }
    )
    return created
