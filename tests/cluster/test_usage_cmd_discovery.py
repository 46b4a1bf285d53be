"""`devstack usage` finding the agent as `devstack doctor` does
(devstack.cli.agent_client), against the testbed's real API server: by the
agent chart's labels, or named with ``--agent-service``, and reached through
the real service proxy; each way it fails is one line with the fix.

The testbed runs no containers, so nothing answers behind a Service (the
service proxy would dial a simulated pod's made-up IP): the chart goes in
with no replica, and the API server's own answers are what is tested. The
real agent is then run as a process here (``devstack agent``, with prices
and a team mapping) and read at ``--agent-url``: what its ``/v1/usage``
reports for a Pod kwok runs, in every format. Every rendering case is in
tests/cli/test_usage_cmd.py; the agent's exact integration, restarts and
leader changes in test_usage_on_the_server.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.core.routing import OWNER_LABEL
from tests.helm.charts import AGENT_CHART, documents, render
from tests.support.net import free_port
from tests.support.testbed import Kube, Testbed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def usage(kubeconfig: Path, *argv: str) -> tuple[int, str, str]:
    """`devstack usage` as a user runs it, with ``kubeconfig``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVSTACK_")}
    env |= {"KUBECONFIG": str(kubeconfig), "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-m", "devstack.cli", "usage", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def one_line(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "", (code, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def namespace_user(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path, *, proxy: bool
) -> Path:
    """A ServiceAccount that may list only ``namespace``'s Services (and reach
    them through the service proxy when ``proxy``); its kubeconfig."""
    user = f"reader-{'proxy' if proxy else 'plain'}"
    admin.create({"apiVersion": "v1", "kind": "ServiceAccount",
                  "metadata": {"name": user, "namespace": namespace}})  # fmt: skip
    rules = [{"apiGroups": [""], "resources": ["services"], "verbs": ["list", "get"]}]
    if proxy:
        rules.append({"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get"]})
    admin.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                  "metadata": {"name": user, "namespace": namespace}, "rules": rules})  # fmt: skip
    admin.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": user, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
            "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": namespace}],
        }
    )
    kubeconfig = testbed.service_account_kubeconfig(namespace, user, tmp_path / f"{user}.kc")
    as_user = testbed.as_service_account(namespace, user)
    try:  # the binding in force (the authorizer's caches lag the writes a little)
        wait_for(lambda: as_user.get(f"/api/v1/namespaces/{namespace}/services"))
    finally:
        as_user.close()
    return kubeconfig


def test_the_agent_is_found_by_its_labels_and_reached_through_the_service_proxy(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    reader = namespace_user(testbed, admin, namespace, tmp_path, proxy=True)
    # no agent chart yet: listing every namespace is forbidden, this one has none
    line = one_line(*usage(reader, "-n", namespace))
    assert line.startswith(
        f"devstack usage: no devstack agent in namespace {namespace} (a Service labelled "
        "app.kubernetes.io/part-of=devstack, app.kubernetes.io/component=agent): install the "
        "agent chart"
    ), line

    values = {"scope": "namespaced", "replicaCount": 0}
    docs = documents(render(AGENT_CHART, values, name=namespace, namespace=namespace))
    for doc in docs:
        admin.apply(doc)
    (service,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"]
    wait_for(lambda: admin.maybe(f"/api/v1/namespaces/{namespace}/endpoints/{service}"))

    # found by its labels (in the context's namespace, -n), then by name: the
    # real service proxy says no pod is behind it
    want = (
        f"devstack usage: the agent's Service {namespace}/{service} (through the API server): "
        f"no agent pod is ready behind the Service; see `kubectl -n {namespace} get pods -l "
        "app.kubernetes.io/component=agent`"
    )
    assert one_line(*usage(reader, "-n", namespace, "--since", "2w")) == want
    assert one_line(*usage(testbed.admin_kubeconfig, "--agent-service",
                           f"{namespace}/{service}", "-o", "csv")) == want  # fmt: skip

    # a named Service that is not there
    line = one_line(*usage(testbed.admin_kubeconfig, "--agent-service", f"{namespace}/nothing"))
    assert line.startswith(
        f"devstack usage: no Service {namespace}/nothing (--agent-service): name the agent "
        "chart's Service"
    ), line

    # a user who may find the Service but not reach it through the API server
    plain = namespace_user(testbed, admin, namespace, tmp_path, proxy=False)
    line = one_line(*usage(plain, "-n", namespace))
    assert line == (
        f"devstack usage: the agent's Service {namespace}/{service} (through the API server): "
        "forbidden to reach the agent through the API server (services/proxy): "
        f"`kubectl -n {namespace} port-forward svc/{service} 8080`, then --agent-url "
        "http://127.0.0.1:8080"
    )


@pytest.fixture
def agent_url(testbed: Testbed, namespace: str, tmp_path: Path) -> Iterator[str]:
    """`devstack agent` as a process, watching ``namespace``, sampling every
    second, with prices and alice in team payments; its HTTP API's URL."""
    port = free_port()
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVSTACK_")}
    argv = [
        str(Path(sys.executable).parent / "devstack"), "agent",
        "--kubeconfig", str(testbed.admin_kubeconfig), "--namespace", namespace,
        "--lease-namespace", namespace, "--listen", f"127.0.0.1:{port}", "--no-sleep",
        "--usage-interval", "1s", "--team", "alice=payments",
        "--price-core-hour", "0.5", "--price-gib-hour", "0.25", "--currency", "EUR",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=90)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        print(f"agent log ({log}):\n{log.read_text(errors='replace')[-3000:]}")


def test_the_real_agents_report_in_every_format(
    testbed: Testbed, admin: Kube, namespace: str, agent_url: str
) -> None:
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web--alice", "namespace": namespace,
                         "labels": {OWNER_LABEL: "alice"}},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/never-pulled:1",
                     "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}]},
        }
    )  # fmt: skip

    def report() -> dict[str, Any] | None:
        code, out, err = usage(Path("/nonexistent"), "--agent-url", agent_url, "-o", "json")
        assert (code, err) == (0, ""), err
        doc: dict[str, Any] = json.loads(out)
        alice = [r for r in doc["rows"] if r.get("owner") == "alice"]
        return doc if alice and alice[0]["cpu_core_seconds"] > 0 else None

    doc = wait_for(report, timeout=90)
    (alice,) = [r for r in doc["rows"] if r["owner"] == "alice"]
    assert alice["team"] == "payments"  # from the agent's --team mapping
    assert doc["prices"]["currency"] == "EUR" and alice["cost"] > 0
    assert doc["actual_usage"]["available"] is False  # the testbed has no metrics-server

    # the table, on a narrow terminal: the row, its cost, the reason, the chart
    # (no kubeconfig: --agent-url needs nothing of the cluster; 100 columns)
    code, out, err = usage(Path("/nonexistent"), "--agent-url", agent_url)
    assert (code, err) == (0, ""), err
    assert all(len(line) <= 100 for line in out.splitlines())
    assert f"Actual usage is not available ({doc['actual_usage']['reason']})" in " ".join(
        out.split()
    )
    assert [ln for ln in out.splitlines() if ln.startswith("alice ") and "payments" in ln]
    chart = out.split("Cost by owner (EUR)\n")[1].splitlines()
    assert chart[0].startswith("alice ") and "█" in chart[0]

    # csv: the same owner and team; its numbers grow as the pod runs on
    code, out, err = usage(Path("/nonexistent"), "--agent-url", agent_url, "-o", "csv")
    assert (code, err) == (0, ""), err
    records = {r["owner"]: r for r in csv.DictReader(io.StringIO(out, newline=""))}
    assert records["alice"]["team"] == "payments" and records["alice"]["currency"] == "EUR"
    assert float(records["alice"]["cpu_core_seconds"]) >= alice["cpu_core_seconds"]
    assert records["alice"]["cpu_used_core_seconds"] == ""

    # --by team, and a bad span refused before the agent is asked
    code, out, err = usage(Path("/nonexistent"), "--agent-url", agent_url, "--by", "team",
                           "-o", "json")  # fmt: skip
    assert code == 0 and [r["team"] for r in json.loads(out)["rows"]] == ["payments"]
    line = one_line(*usage(Path("/nonexistent"), "--agent-url", agent_url, "--since", "7 days"))
    assert line.startswith("devstack usage: --since '7 days': give a span such as 30m")
