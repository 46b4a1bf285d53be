"""Test helpers for the Helm charts: prepare, render and validate them with Helm's own
engine (helm-python-sdk), kubernetes-validate and the Traefik CRD schemas.

Does I/O: copies charts into temporary directories and reads schema files.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
AGENT_CHART = REPO / "helm" / "devstack"
LIB_CHART = REPO / "helm" / "devstack-lib"
EXAMPLE_CHART = REPO / "examples" / "chart"
#: The hello service's own values (its AWS resources): the example chart declares none.
HELLO_VALUES = REPO / "examples" / "hello" / "devstack.yaml"
TRAEFIK_CRDS = REPO / "tests" / "data" / "traefik-crds"

#: The Kubernetes version rendered output is validated against (shipped by kubernetes-validate).
KUBE_VERSION = "1.33.0"

Manifest = dict[str, Any]


def prepare_example(root: Path) -> Path:
    """Copy the example chart and the library chart into ``root`` (keeping the relative
    ``file://`` dependency between them) and resolve the dependency with Helm, as
    `helm dependency update` would. Returns the example chart's directory."""
    chart = root / "examples" / "chart"
    shutil.copytree(EXAMPLE_CHART, chart, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    shutil.copytree(LIB_CHART, root / "helm" / "devstack-lib")
    helm_python.dependency_update(chart, skip_refresh=True)
    return chart


def hello_values(devstack: dict[str, Any] | None = None) -> dict[str, Any]:
    """examples/hello/devstack.yaml, with ``devstack`` settings over its
    ``devstack:`` block (as ``-f examples/hello/devstack.yaml --set ...``)."""
    values: dict[str, Any] = yaml.safe_load(HELLO_VALUES.read_text())
    values["devstack"] = {**values["devstack"], **(devstack or {})}
    return values


def render(
    chart: Path,
    values: dict[str, Any] | None = None,
    *,
    name: str = "hello",
    namespace: str = "dev",
) -> dict[str, str]:
    """Render a chart the way `helm install` would; returns {template path: YAML}."""
    loaded = helm_python.Chart.load(chart)
    return loaded.render(values=values or {}, name=name, namespace=namespace, is_install=True)


def documents(rendered: dict[str, str]) -> list[Manifest]:
    """Every non-empty YAML document of every manifest (NOTES.txt excluded)."""
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(TRAEFIK_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


_CRDS: dict[tuple[str, str], dict[str, Any]] | None = None


def validate(docs: Iterable[Manifest]) -> int:
    """Validate every manifest: Kubernetes kinds against the real OpenAPI schemas
    (strict: unknown fields fail), Traefik kinds against the CRD schemas. Returns
    how many were validated; raises on the first invalid one."""
    global _CRDS
    if _CRDS is None:
        _CRDS = _crd_schemas()
    count = 0
    for doc in docs:
        # Traefik 2's legacy group has the same v1alpha1 shapes as traefik.io.
        api_version = doc["apiVersion"].replace("traefik.containo.us/", "traefik.io/")
        key = (api_version, doc["kind"])
        if key in _CRDS:
            jsonschema.validate(doc, _CRDS[key])
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        count += 1
    return count


def lint_problems(chart: Path, values: dict[str, Any] | None = None) -> list[str]:
    """`helm lint --strict`: every warning or error (info messages are not problems)."""
    report = helm_python.lint(chart, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [str(e) for e in report.get("errors") or []]
    problems += [
        f"{m['path']}: {m['error']}" for m in report.get("messages") or [] if m["severity"] >= 2
    ]
    return problems
