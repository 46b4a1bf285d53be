"""Every name and label value the charts render fits Kubernetes' limits (63
characters), for any release name Helm accepts and any owner `devstack provision`
accepts: object names, label values (a Job's name also becomes its pods'
`job-name` label) and the DNS labels of the sync host."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devstack.provision import names
from tests.helm.charts import AGENT_CHART, documents, render

#: Helm's release names: DNS-1123 labels, at most 53 characters.
RELEASES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?", fullmatch=True)
OWNERS = st.one_of(
    st.just(""),
    st.from_regex(names.OWNER_RE, fullmatch=True).filter(lambda o: names.check_owner(o) is None),
)
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def _label_maps(doc: dict[str, Any]) -> list[dict[str, str]]:
    spec = doc.get("spec") or {}
    maps = [doc["metadata"].get("labels") or {}]
    template = spec.get("template") or {}
    maps.append((template.get("metadata") or {}).get("labels") or {})
    selector = spec.get("selector") or {}
    maps.append(selector.get("matchLabels") or (selector if doc["kind"] == "Service" else {}))
    return maps


def problems(docs: list[dict[str, Any]]) -> list[str]:
    out = []
    for doc in docs:
        what = f"{doc['kind']} {doc['metadata']['name']}"
        name = doc["metadata"]["name"]
        if len(name) > 63 or not NAME.fullmatch(name):
            out.append(f"{what}: name of {len(name)} characters")
        for labels in _label_maps(doc):
            for key, value in labels.items():
                if len(value) > 63 or not LABEL_VALUE.fullmatch(value):
                    out.append(f"{what}: label {key}={value!r} ({len(value)} characters)")
        if doc["kind"] == "IngressRoute":
            for route in doc["spec"]["routes"]:
                for host in re.findall(r"Host\(`([^`]*)`\)", route["match"]):
                    if any(len(part) > 63 for part in host.split(".")):
                        out.append(f"{what}: host {host}")
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(release=RELEASES, owner=OWNERS)
@example(release="checkout-service-alice-feature-branch", owner="alice")
@example(release="x" * 53, owner="o" * 20)
def test_app_chart_names_fit(example_chart: Path, release: str, owner: str) -> None:
    values = {"devstack": {"enabled": True, "owner": owner}}
    docs = documents(render(example_chart, values, name=release))
    assert {d["kind"] for d in docs} >= {"Job", "Deployment", "IngressRoute", "Secret"}
    assert problems(docs) == []


@settings(max_examples=15, deadline=None)
@given(release=RELEASES)
@example(release="x" * 53)
def test_agent_chart_names_fit(release: str) -> None:
    docs = documents(render(AGENT_CHART, {"scope": "namespaced"}, name=release))
    assert problems(docs) == []
