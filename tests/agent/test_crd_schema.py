"""Every object the agent generates validates against Traefik's CRD schemas
(the copies in tests/data/traefik-crds, from Traefik's Helm chart)."""

from __future__ import annotations

import datetime

import pytest

from devstack.agent.desired import AgentSettings, desired_state
from devstack.core.routing import RouteSettings
from tests.support.kube import crd_schemas, validate_against_crd

SCHEMAS = crd_schemas()
PLURALS = {"IngressRoute": "ingressroutes", "Middleware": "middlewares"}


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
    "settings",
    [
        pytest.param(AgentSettings(), id="v3-w3c"),
        pytest.param(AgentSettings(entry_points=("web", "websecure")), id="two-entry-points"),
        pytest.param(AgentSettings(route=RouteSettings(baggage_style="jaeger")), id="jaeger"),
        pytest.param(AgentSettings(traefik_version="2.10"), id="v2.10"),
        pytest.param(AgentSettings(traefik_version="2.9"), id="v2.9-containo-us"),
    ],
)
def test_generated_objects_validate(settings: AgentSettings) -> None:
    d = desired_state(services(), settings, datetime.datetime.now(datetime.UTC))
    assert len(d.objects) == 5
    for ref, obj in d.objects.items():
        # The traefik.containo.us CRDs of Traefik < 2.10 share these schemas.
        schema = SCHEMAS[("traefik.io", "v1alpha1", PLURALS[ref.kind])]
        assert validate_against_crd(obj, schema) == [], ref


def test_the_validator_rejects_a_bad_object() -> None:
    schema = SCHEMAS[("traefik.io", "v1alpha1", "ingressroutes")]
    bad = {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRoute",
        "metadata": {},
        "spec": {"routes": [{"kind": "Rule"}]},
    }
    assert validate_against_crd(bad, schema) != []
