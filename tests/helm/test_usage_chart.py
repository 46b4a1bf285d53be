"""The charts' usage settings, rendered by Helm's engine: the agent chart's
``usage:`` values become the agent's environment (read back by the agent's
own flag parser), its roles grant what usage attribution calls, and the
library chart's ``devstack.team`` labels a copy's objects."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from helm_python.errors import HelmValuesError

from devstack.agent import command
from devstack.agent.usage.ledger import Prices
from devstack.core.routing import TEAM_LABEL
from tests.helm.charts import AGENT_CHART, documents, hello_values, one, render


def _agent_docs(values: dict[str, Any]) -> list[dict[str, Any]]:
    return documents(render(AGENT_CHART, values, name="devstack", namespace="ops"))


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    deployment = one(docs, "Deployment")
    (source,) = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    return dict(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """What `devstack agent` makes of that environment (flags read their
    defaults from it)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.usage_settings(parser.parse_args([]), env)


def test_the_usage_values_reach_the_agent_as_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _agent_docs(
        {
            "usage": {
                "interval": "15s",
                "retentionDays": 10,
                "teams": {"alice": "payments", "bob": "search"},
                "prices": {"coreHour": 0.031, "gibHour": 0.004, "currency": "EUR"},
            }
        }
    )
    settings = _settings(_env(docs), monkeypatch)
    assert settings.interval == 15.0
    assert settings.retention_days == 10
    assert dict(settings.teams) == {"alice": "payments", "bob": "search"}
    assert settings.prices == Prices(core_hour=0.031, gib_hour=0.004, currency="EUR")


def test_by_default_there_are_no_prices_and_a_minute_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(_env(_agent_docs({})), monkeypatch)
    assert settings.prices is None
    assert (settings.interval, settings.retention_days, settings.teams) == (60.0, 35, ())


def _rules(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one(docs, kind, name)["rules"]
    return rules


@pytest.mark.parametrize("actual", [True, False])
def test_the_roles_grant_what_usage_calls(actual: bool) -> None:
    docs = _agent_docs({"usage": {"actualUsage": actual}})
    rules = _rules(docs, "ClusterRole", "devstack")
    assert {"apiGroups": [""], "resources": ["services", "pods", "persistentvolumeclaims"],
            "verbs": ["list", "watch"]} in rules  # fmt: skip
    metrics = {"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["list"]}
    assert (metrics in rules) is actual
    (record_rule,) = _rules(docs, "Role", "devstack-usage")
    assert record_rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["list", "create", "update", "delete"],
    }
    assert one(docs, "Role", "devstack-usage")["metadata"]["namespace"] == "ops"
    binding = one(docs, "RoleBinding", "devstack-usage")
    assert binding["roleRef"]["name"] == "devstack-usage"


def test_namespaced_scope_grants_pods_and_pvcs_in_each_watched_namespace() -> None:
    docs = _agent_docs({"scope": "namespaced", "namespaces": ["dev", "qa"]})
    for ns in ("dev", "qa"):
        (role,) = [
            d
            for d in docs
            if d["kind"] == "Role"
            and d["metadata"]["name"] == "devstack"
            and d["metadata"]["namespace"] == ns
        ]
        assert any("pods" in r["resources"] for r in role["rules"])


def test_a_bad_usage_value_is_refused_by_the_schema() -> None:
    with pytest.raises(HelmValuesError, match="/usage/retentionDays"):
        _agent_docs({"usage": {"retentionDays": 0}})


@pytest.mark.parametrize("team", ["payments", ""])
def test_the_library_labels_a_copys_objects_with_its_team(example_chart: Path, team: str) -> None:
    values = hello_values({"enabled": True, "owner": "alice", "team": team})
    docs = documents(render(example_chart, values))
    deployment = one(docs, "Deployment")
    (service,) = [
        d
        for d in docs
        if d["kind"] == "Service" and "devstack.dev/service" in d["metadata"].get("labels", {})
    ]
    labelled = [
        deployment["metadata"]["labels"],
        deployment["spec"]["template"]["metadata"]["labels"],
        service["metadata"]["labels"],
    ]
    for labels in labelled:
        assert labels.get(TEAM_LABEL) == (team or None)
    assert TEAM_LABEL not in deployment["spec"]["selector"]["matchLabels"]
