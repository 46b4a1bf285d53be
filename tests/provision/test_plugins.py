"""Loading `devstack.provisioners` entry points, through the `load(entry_points)` seam."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from devstack.core.errors import ConfigError
from devstack.provision import plugins, spec
from devstack.provision.errors import SpecError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "provisioner-plugin"


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "devstack_example_logs", raising=False)


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=plugins.GROUP)


def test_the_example_plugin_loads_and_its_schema_validates(example_on_path: None) -> None:
    loaded = plugins.load([ep("logGroups", "devstack_example_logs:LogGroups")])
    assert list(loaded.provisioners) == ["logGroups"]
    assert loaded.broken == {}
    s = spec.parse(
        {"logGroups": [{"name": "orders", "retentionDays": 7}]}, plugin_schemas=loaded.schemas()
    )
    assert s.extra == {"logGroups": ({"name": "orders", "retentionDays": 7},)}
    with pytest.raises(SpecError) as e:
        spec.parse({"logGroups": [{"name": "orders", "size": 1}]}, plugin_schemas=loaded.schemas())
    assert e.value.problems[0].startswith("devstack.aws.logGroups[0].size: unknown field")


def test_broken_plugins_only_matter_when_used(example_on_path: None) -> None:
    loaded = plugins.load(
        [
            ep("logGroups", "devstack_example_logs:LogGroups"),
            ep("queues2", "no_such_module_xyz:Thing"),
            ep("sqs", "devstack_example_logs:LogGroups"),
            ep("notAProvisioner", "json:JSONDecodeError"),
        ]
    )
    assert list(loaded.provisioners) == ["logGroups"]
    assert loaded.broken["queues2"].startswith("ModuleNotFoundError")
    assert loaded.broken["sqs"] == "'sqs' is built in; a plugin cannot replace it"
    assert "notAProvisioner" in loaded.broken
    loaded.require(["logGroups"])
    with pytest.raises(ConfigError, match="plugin 'queues2' failed to load: ModuleNotFoundError"):
        loaded.require(["queues2"])


def test_the_default_source_is_the_installed_entry_points(
    example_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed distribution (its dist-info on sys.path, as pip leaves it)
    registers a kind that `load()` with no arguments finds, and only entry points
    of the devstack group count."""
    dist = tmp_path / "devstack_example_logs-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: devstack-example-logs\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[{plugins.GROUP}]\nlogGroups = devstack_example_logs:LogGroups\n\n"
        "[console_scripts]\nnot-a-kind = devstack_example_logs:LogGroups\n"
    )
    assert "logGroups" not in {e.name for e in plugins.discover()}
    monkeypatch.syspath_prepend(str(tmp_path))
    found = {e.name: e for e in plugins.discover()}
    assert found["logGroups"].value == "devstack_example_logs:LogGroups"
    assert "not-a-kind" not in found
    loaded = plugins.load()
    assert "logGroups" in loaded.provisioners
    assert "not-a-kind" not in loaded.provisioners and "not-a-kind" not in loaded.broken
