"""Bad values fail with Helm's own schema error, naming the offending field."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.helm.charts import AGENT_CHART, EXAMPLE_CHART, LIB_CHART, REPO, render

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
    "owner that devstack provision would refuse": (
        {"devstack": {"owner": "alice_smith"}},
        "/devstack/owner",
    ),
    # devstack.aws is checked by the spec's own schema, embedded
    "aws: unknown key in a queue": (
        {"devstack": {"aws": {"sqs": [{"name": "jobs", "visibility": 30}]}}},
        "at '/devstack/aws/sqs/0': additional properties 'visibility' not allowed",
    ),
    "aws: fifo not a boolean": (
        {"devstack": {"aws": {"sqs": [{"name": "jobs", "fifo": "yes"}]}}},
        "at '/devstack/aws/sqs/0/fifo': got string, want boolean",
    ),
    "aws: maxReceiveCount out of range": (
        {"devstack": {"aws": {"sqs": [{"name": "jobs", "deadLetter": {"maxReceiveCount": 0}}]}}},
        "at '/devstack/aws/sqs/0/deadLetter/maxReceiveCount': minimum: got 0, want 1",
    ),
    "aws: bucket name": (
        {"devstack": {"aws": {"s3": [{"name": "Up_Loads"}]}}},
        "/devstack/aws/s3/0/name",
    ),
    "aws: table key type": (
        {
            "devstack": {
                "aws": {"dynamodb": [{"name": "t", "hashKey": {"name": "id", "type": "X"}}]}
            }
        },
        "/devstack/aws/dynamodb/0/hashKey/type",
    ),
}

AGENT_BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown scope": ({"scope": "global"}, "/scope"),
    "namespace name": ({"scope": "namespaced", "namespaces": ["Team_A"]}, "/namespaces/0"),
    "baggage style": ({"baggageStyle": "b3"}, "/baggageStyle"),
    "unknown key": ({"replicas": 2}, "replicas"),
    # a number: 2.10 would reach the agent as 2.1
    "traefik version as a number": ({"traefikVersion": 2.10}, "/traefikVersion"),
    "traefik version": ({"traefikVersion": "latest"}, "/traefikVersion"),
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


def test_the_generated_schemas_are_current() -> None:
    """`devstack.aws` in the library's schema is the spec's schema, and `devstack` in the
    example chart's is the library's: scripts/gen-chart-schema writes both copies."""
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-chart-schema"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    spec = json.loads(
        (REPO / "provision" / "devstack" / "provision" / "spec.schema.json").read_text()
    )
    lib = json.loads((LIB_CHART / "values.schema.json").read_text())
    app = json.loads((EXAMPLE_CHART / "values.schema.json").read_text())
    embedded = dict(lib["properties"]["devstack"]["properties"]["aws"])
    assert embedded.pop("$comment").startswith("generated by scripts/gen-chart-schema")
    assert embedded == {k: v for k, v in spec.items() if k != "$schema"}
    fragment = dict(app["properties"]["devstack"])
    assert fragment.pop("$comment").startswith("generated by scripts/gen-chart-schema")
    assert fragment == lib["properties"]["devstack"]


def test_gen_chart_schema_writes_an_app_chart_schema(tmp_path: Path) -> None:
    """What docs/helm.md tells app teams to run for their own chart."""
    schema = tmp_path / "values.schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"image": {"type": "object"}}}))
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-chart-schema"), str(schema)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    written = json.loads(schema.read_text())
    assert written["properties"]["image"] == {"type": "object"}
    lib = json.loads((LIB_CHART / "values.schema.json").read_text())
    assert (
        written["properties"]["devstack"]["properties"]
        == lib["properties"]["devstack"]["properties"]
    )


def test_the_agent_and_example_charts_accept_their_defaults() -> None:
    for chart in (AGENT_CHART, EXAMPLE_CHART):
        loaded = helm_python.Chart.load(chart)
        assert loaded.schema is not None, chart
        loaded.validate_schema(loaded.values)


def _library_defaults(tmp_path: Path) -> dict[str, Any]:
    """`devstack-lib.config` with nothing set: the library's defaults, as an app chart
    that depends on it sees them."""
    probe = tmp_path / "probe"
    (probe / "templates").mkdir(parents=True)
    shutil.copytree(LIB_CHART, tmp_path / "devstack-lib")
    (probe / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "probe",
                "version": "0.1.0",
                "dependencies": [
                    {
                        "name": "devstack-lib",
                        "version": "0.1.0",
                        "repository": "file://../devstack-lib",
                    }
                ],
            }
        )
    )
    (probe / "templates" / "config.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n"
        '  config: {{ include "devstack-lib.config" . | quote }}\n'
    )
    helm_python.dependency_update(probe, skip_refresh=True)
    rendered = render(probe, {})
    doc = yaml.safe_load(rendered["probe/templates/config.yaml"])
    config: dict[str, Any] = yaml.safe_load(doc["data"]["config"])
    return config


def _closed_keys(schema: dict[str, Any], value: Any, at: str = "devstack") -> list[str]:
    """Keys of closed objects (additionalProperties: false) that the schema and the
    defaults do not share."""
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        return []
    props = schema.get("properties", {})
    out = [f"{at}.{k}: no default" for k in props if k not in value]
    out += [f"{at}.{k}: not in the schema" for k in value if k not in props]
    for k, sub in props.items():
        if k in value and isinstance(value[k], dict):
            out += _closed_keys(sub, value[k], f"{at}.{k}")
    return out


def test_the_library_defaults_and_schema_are_in_step(tmp_path: Path) -> None:
    """The library's schema is the source of truth for `devstack:` (its values.yaml is
    empty: the defaults live in templates/_defaults.tpl). Every default is valid, and
    every setting the schema names has a default."""
    defaults = _library_defaults(tmp_path)
    lib = json.loads((LIB_CHART / "values.schema.json").read_text())
    fragment = lib["properties"]["devstack"]
    jsonschema.Draft7Validator(fragment).validate(defaults)
    assert _closed_keys(fragment, defaults) == []
