"""The agent chart's Grafana dashboard: a ConfigMap Grafana's dashboard sidecar
loads, whose every query reads only metrics the agent exports."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from helm_python.errors import HelmValuesError
from prometheus_client.parser import text_string_to_metric_families

from devstack.agent.metrics import Metrics
from tests.helm.charts import AGENT_CHART, by_kind, documents, one, render, validate

DASHBOARD = AGENT_CHART / "dashboards" / "devstack-usage.json"

#: The usage and sleep metrics the agent's leader exports (issue 10's contract;
#: the usage ledger and the sleeper register them on ``Metrics.registry``).
USAGE_METRICS = frozenset(
    {
        "devstack_usage_cpu_request_core_seconds_total",
        "devstack_usage_memory_request_gib_seconds_total",
        "devstack_usage_pod_seconds_total",
        "devstack_usage_storage_gib_seconds_total",
        "devstack_usage_load_balancer_seconds_total",
        "devstack_usage_cpu_used_core_seconds_total",
        "devstack_usage_memory_used_gib_seconds_total",
        "devstack_usage_cost_total",
        "devstack_usage_actual_available",
        "devstack_sleep_seconds_total",
        "devstack_sleep_saved_core_seconds_total",
        "devstack_sleep_saved_gib_seconds_total",
        "devstack_sleep_copies",
    }
)

#: What the dashboard must show (the issue's panels).
MUST_SHOW = frozenset(
    {
        "devstack_usage_cost_total",
        "devstack_usage_cpu_request_core_seconds_total",
        "devstack_usage_memory_request_gib_seconds_total",
        "devstack_usage_pod_seconds_total",
        "devstack_usage_storage_gib_seconds_total",
        "devstack_sleep_seconds_total",
        "devstack_sleep_saved_core_seconds_total",
        "devstack_sleep_copies",
    }
)

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def scraped_names() -> set[str]:
    """Every series name a real agent's ``/metrics`` can hold: its families'
    names and their samples' (a labelled counter with no series yet has only
    its HELP/TYPE lines, hence the suffixes)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(Metrics().render()):
        names.add(family.name)
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


KNOWN = frozenset(scraped_names() | USAGE_METRICS)

_KEYWORDS = {
    *("and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"),
    *("by", "without", "on", "ignoring", "group_left", "group_right"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once
    strings, label matchers, ranges, grouping clauses and Grafana variables
    are taken out, that are not a function or aggregation (followed by ``(``)
    or a keyword."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    found = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue
        found.add(m.group())
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
        assert m, f"variable {var['name']}: {query}"
        out.append((f"variable {var['name']}", m.group(1)))
    return out


def unknown_metrics(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    return {
        where: unknown
        for where, expr in queries(dashboard)
        if (unknown := metric_names(expr) - KNOWN)
    }


def rendered(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return documents(render(AGENT_CHART, values, name="devstack", namespace="devstack-system"))


def test_the_chart_ships_the_dashboard_for_grafanas_sidecar() -> None:
    docs = rendered()
    validate(docs)
    config = one(docs, "ConfigMap", "devstack-dashboard")
    assert config["metadata"]["namespace"] == "devstack-system"
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in config["metadata"]
    (key,) = config["data"]
    assert key.endswith(".json")
    dashboard = json.loads(config["data"][key])
    assert dashboard == json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]


def test_every_query_reads_only_metrics_the_agent_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert unknown_metrics(dashboard) == {}
    used = set().union(*(metric_names(e) for _, e in queries(dashboard)))
    assert used >= MUST_SHOW, sorted(MUST_SHOW - used)
    assert "process_resident_memory_bytes" in KNOWN  # the scrape is a real registry's


def test_a_misspelt_metric_is_caught() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    target = dashboard["panels"][0]["targets"][0]
    name = next(iter(metric_names(target["expr"])))
    target["expr"] = target["expr"].replace(name, name.replace("_total", "_totl"))
    assert list(unknown_metrics(dashboard).values()) == [{name.replace("_total", "_totl")}]
    assert metric_names(
        'label_replace(sum by (team) (rate(devstack_sleep_copies{team=~"$team"}[5m])), '
        '"team", "unassigned", "team", "") / on (team) group_left devstack_sleep_copy'
    ) == {"devstack_sleep_copies", "devstack_sleep_copy"}


def test_every_panel_queries_the_chosen_prometheus_and_panels_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (panel["title"], cells[(x, y)])
                cells[(x, y)] = panel["title"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_labels_annotations_and_namespace_are_the_sidecars() -> None:
    values = {
        "dashboard": {
            "labels": {"grafana_dashboard": "devstack"},
            "annotations": {"grafana_folder": "Platform"},
            "namespace": "monitoring",
        }
    }
    config = one(rendered(values), "ConfigMap", "devstack-dashboard")
    assert config["metadata"]["namespace"] == "monitoring"
    assert config["metadata"]["labels"]["grafana_dashboard"] == "devstack"
    assert config["metadata"]["annotations"] == {"grafana_folder": "Platform"}


def test_disabled_renders_no_dashboard() -> None:
    docs = rendered({"dashboard": {"enabled": False}})
    assert [c["metadata"]["name"] for c in by_kind(docs, "ConfigMap")] == ["devstack"]


@pytest.mark.parametrize(
    "dashboard",
    [{"enabled": "yes"}, {"labels": {"grafana_dashboard": 1}}, {"namespace": "Mon"}, {"x": 1}],
)
def test_bad_dashboard_values_are_refused(dashboard: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError, match="dashboard"):
        rendered({"dashboard": dashboard})
