"""Bad values fail with Helm's own schema error, naming the offending field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.helm.charts import AGENT_CHART, EXAMPLE_CHART, LIB_CHART, render

EXAMPLE_BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown reload strategy": (
        {"devstack": {"enabled": True, "sidecar": {"reload": "restart"}}},
        "/devstack/sidecar/reload",
    ),
    "misspelt key": ({"devstack": {"enabled": True, "sidecar": {"relaod": "exec"}}}, "relaod"),
    "owner not a label value": ({"devstack": {"enabled": True, "owner": "Alice Smith"}}, "owner"),
    "port out of range": ({"devstack": {"sidecar": {"port": 70000}}}, "/devstack/sidecar/port"),
    "enabled not a boolean": ({"devstack": {"enabled": "yes"}}, "/devstack/enabled"),
    "sync mode": ({"devstack": {"sidecar": {"mode": "mirror"}}}, "/devstack/sidecar/mode"),
    "endpoint not a URL": (
        {"devstack": {"provision": {"endpoint": "localstack:4566"}}},
        "/devstack/provision/endpoint",
    ),
}

AGENT_BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown scope": ({"scope": "global"}, "/scope"),
    "namespace name": ({"scope": "namespaced", "namespaces": ["Team_A"]}, "/namespaces/0"),
    "baggage style": ({"baggageStyle": "b3"}, "/baggageStyle"),
    "unknown key": ({"replicas": 2}, "replicas"),
}


@pytest.mark.parametrize(("values", "field"), EXAMPLE_BAD.values(), ids=EXAMPLE_BAD.keys())
def test_bad_app_values_name_the_field(
    example_chart: Path, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        render(example_chart, values)
    assert field in str(caught.value)


@pytest.mark.parametrize(("values", "field"), AGENT_BAD.values(), ids=AGENT_BAD.keys())
def test_bad_agent_values_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        render(AGENT_CHART, values)
    assert field in str(caught.value)


REQUIRED: dict[str, tuple[dict[str, Any], str]] = {
    "supervise without a command": ({"reload": "supervise"}, "devstack.sidecar.command"),
    "exec without a command": ({"reload": "exec"}, "devstack.sidecar.exec"),
    "signal without a target": ({"reload": "signal"}, "devstack.sidecar.signal.processName"),
}


@pytest.mark.parametrize(("sidecar", "field"), REQUIRED.values(), ids=REQUIRED.keys())
def test_incomplete_reload_settings_fail_naming_the_missing_value(
    example_chart: Path, sidecar: dict[str, Any], field: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(example_chart, {"devstack": {"enabled": True, "sidecar": sidecar}})
    assert field in str(caught.value)


def test_the_example_chart_uses_the_library_schema_for_devstack() -> None:
    lib = json.loads((LIB_CHART / "values.schema.json").read_text())
    app = json.loads((EXAMPLE_CHART / "values.schema.json").read_text())
    assert app["properties"]["devstack"] == lib["properties"]["devstack"]


def test_every_chart_has_a_values_schema_that_accepts_its_defaults() -> None:
    for chart in (AGENT_CHART, LIB_CHART, EXAMPLE_CHART):
        loaded = helm_python.Chart.load(chart)
        assert loaded.schema is not None, chart
        loaded.validate_schema(loaded.values)
