"""Every object the agent generates validates against Traefik's CRD schemas
(the copies in tests/data/traefik-crds, from Traefik's Helm chart, v3.7
era: group ``traefik.io``).

What this does and does not prove, honestly:

- ``traefik.io/v1alpha1`` objects (Traefik 3 and 2.10+) are checked against
  those CRDs as they are.
- There is no copy of the ``traefik.containo.us`` CRDs that Traefik < 2.10
  reads. Their ``v1alpha1`` IngressRoute and Middleware have the same shape,
  so the 2.9 case checks its objects against the same CRDs with the group
  rewritten to ``traefik.containo.us``: that catches a wrong group, kind or
  version and any field the v3-era schema lacks, but not a field that only
  the older CRDs lack (a field added to the schema after 2.9).
- The schema does not read rule strings: whether Traefik accepts them is
  checked by running the real Traefik (tests/scenarios/test_routing_traefik.py,
  v3 syntax and, on the same v3 binary, ``defaultRuleSyntax: v2``).
"""

from __future__ import annotations

import copy
import datetime
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.agent.desired import AgentSettings, desired_state
from devstack.core.routing import RouteSettings
from tests.support.kube import CRD_DIR, validate_against_crd

PLURALS = {"IngressRoute": "ingressroutes", "Middleware": "middlewares"}


@functools.cache
def crds(group: str) -> dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, Any]]]:
    """``(group, version, plural) -> (CRD, openAPIV3Schema)`` for the CRD
    copies, with their group rewritten to ``group``."""
    out = {}
    for path in sorted(Path(CRD_DIR).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            crd = copy.deepcopy(doc)
            crd["spec"]["group"] = group
            crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
            for version in crd["spec"]["versions"]:
                key = (group, version["name"], crd["spec"]["names"]["plural"])
                out[key] = (crd, version["schema"]["openAPIV3Schema"])
    return out


def problems(obj: dict[str, Any], group: str) -> list[str]:
    """What is wrong with ``obj`` for the CRD it names (empty: valid)."""
    api_group, _, version = obj["apiVersion"].rpartition("/")
    if api_group != group:
        return [f"apiVersion {obj['apiVersion']}: not in group {group}"]
    found = crds(group).get((group, version, PLURALS.get(obj["kind"], "?")))
    if found is None:
        return [f"no CRD serves {obj['apiVersion']} {obj['kind']}"]
    crd, schema = found
    if crd["spec"]["names"]["kind"] != obj["kind"]:
        return [f"kind {obj['kind']} is not {crd['spec']['names']['kind']}"]
    return validate_against_crd(obj, schema)


def services() -> list[dict[str, object]]:
    out = []
    for name, owner in (("shop", None), ("shop-alice", "alice"), ("cart-bob", "bob")):
        labels = {"devstack.dev/service": name.split("-")[0]}
        if owner:
            labels["devstack.dev/owner"] = owner
        out.append(
            {
                "metadata": {
                    "name": name,
                    "namespace": "dev",
                    "uid": f"u-{name}",
                    "labels": labels,
                },
                "spec": {"ports": [{"name": "http", "port": 8080}]},
            }
        )
    return out


@pytest.mark.parametrize(
    ("settings", "group"),
    [
        pytest.param(AgentSettings(), "traefik.io", id="v3-w3c"),
        pytest.param(
            AgentSettings(entry_points=("web", "websecure")), "traefik.io", id="two-entry-points"
        ),
        pytest.param(
            AgentSettings(route=RouteSettings(baggage_style="jaeger")), "traefik.io", id="jaeger"
        ),
        pytest.param(AgentSettings(traefik_version="2.10"), "traefik.io", id="v2.10"),
        # Same schemas, group rewritten: see the module docstring.
        pytest.param(
            AgentSettings(traefik_version="2.9"), "traefik.containo.us", id="v2.9-containo-us"
        ),
    ],
)
def test_generated_objects_validate(settings: AgentSettings, group: str) -> None:
    d = desired_state(services(), settings, datetime.datetime.now(datetime.UTC))
    assert len(d.objects) == 5
    for ref, obj in d.objects.items():
        assert problems(obj, group) == [], ref


def test_the_check_rejects_a_bad_object_and_a_wrong_group() -> None:
    bad = {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRoute",
        "metadata": {},
        "spec": {"routes": [{"kind": "Rule"}]},
    }
    assert problems(bad, "traefik.io") != []
    good = desired_state(services(), AgentSettings(), datetime.datetime.now(datetime.UTC))
    obj = next(iter(good.objects.values()))
    assert problems(obj, "traefik.io") == []
    # A traefik.io object is not valid where traefik.containo.us is served.
    assert problems(obj, "traefik.containo.us") != []
    assert problems({**obj, "apiVersion": "traefik.io/v1beta1"}, "traefik.io") != []
