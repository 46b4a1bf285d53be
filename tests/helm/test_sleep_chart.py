"""The agent chart's ``sleep:`` values, rendered by Helm's engine, become the
agent's environment (read back by the agent's own flag parser), and its
roles grant what sleep calls, where it calls it (which verbs are used:
tests/cluster/test_rbac.py compares them with the audit log)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from helm_python.errors import HelmValuesError

from devstack.agent import command
from devstack.agent.sleep import SleepSettings
from tests.helm.charts import AGENT_CHART, documents, one, render


def _docs(values: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    return documents(render(AGENT_CHART, values, name="devstack", namespace="ops", **kw))


def _sleep_settings(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> SleepSettings:
    deployment = one(docs, "Deployment")
    (source,) = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    env = dict(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.config_from_args(parser.parse_args([]), env).sleep


def test_the_sleep_values_reach_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "sleep": {
            "enabled": False,
            "idleAfter": "30m",
            "checkInterval": "15s",
            "traefikMetricsUrls": [
                "http://traefik-a:9100/metrics",
                "http://traefik-b:9100/metrics",
            ],
        }
    }
    assert _sleep_settings(_docs(values), monkeypatch) == SleepSettings(
        enabled=False,
        idle_after=1800.0,
        check_interval=15.0,
        traefik_metrics_urls=("http://traefik-a:9100/metrics", "http://traefik-b:9100/metrics"),
    )


def test_by_default_copies_sleep_after_two_idle_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _sleep_settings(_docs({}), monkeypatch) == SleepSettings(
        enabled=True, idle_after=7200.0, check_interval=60.0, traefik_metrics_urls=()
    )


@pytest.mark.parametrize(
    "sleep",
    [{"idleAfter": "two hours"}, {"traefikMetricsUrls": ["traefik:9100"]}, {"nap": True}],
)
def test_bad_sleep_values_are_refused(sleep: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        _docs({"sleep": sleep})


def test_the_roles_grant_what_sleep_calls() -> None:
    docs = _docs({})
    rules = one(docs, "ClusterRole", "devstack")["rules"]
    assert {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["list", "watch"],
    } in rules
    assert {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]} in rules
    # The record: one ConfigMap, by name, in the release namespace.
    role = one(docs, "Role", "devstack-sleep")
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["devstack-agent-sleep"],
            "verbs": ["get", "update"],
        },
    ]
    binding = one(docs, "RoleBinding", "devstack-sleep")
    assert binding["roleRef"]["name"] == "devstack-sleep"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "devstack", "namespace": "ops"}
    ]


def test_namespaced_scope_grants_the_deployments_in_each_namespace() -> None:
    docs = _docs({"scope": "namespaced", "namespaces": ["team-a"]})
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == "team-a"]
    assert {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]} in role[
        "rules"
    ]
