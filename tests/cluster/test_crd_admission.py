"""Every object the agent's desired state produces is admitted by the real
API server with Traefik's CRDs installed (the copies in
tests/data/traefik-crds): the server validates them against the structural
schemas, prunes unknown fields (so what it stores must equal what was sent)
and, with ``fieldValidation=Strict``, rejects unknown fields outright.

tests/agent/test_crd_schema.py checks the same objects with jsonschema; this
is the server's own verdict. As there, the ``traefik.containo.us`` group
(Traefik < 2.10) is served by the same CRDs with their group rewritten: that
proves group, kind and version, not a field only the older CRDs lack.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.agent.desired import AgentSettings, desired_state
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL, RouteSettings
from tests.support.testbed import (
    CRD_DIR,
    Kube,
    KubeError,
    Testbed,
    crds_established,
    install_crds,
    wait_for,
)

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def containo_us_crds(testbed: Testbed) -> Iterator[None]:
    """The same CRDs served as ``traefik.containo.us`` as well."""
    with testbed.admin() as kube:
        install_crds(kube, CRD_DIR, group="traefik.containo.us")
        wait_for(lambda: crds_established(kube, CRD_DIR, group="traefik.containo.us"))
    yield


def _services(admin: Kube, namespace: str) -> list[Obj]:
    """A baseline and two owners' copies, created on the server (real uids)."""
    out = []
    for name, owner in (("shop", None), ("shop-alice", "alice"), ("cart-bob", "bob")):
        labels = {SERVICE_LABEL: name.split("-")[0]}
        if owner:
            labels[OWNER_LABEL] = owner
        out.append(
            admin.create(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels},
                    "spec": {"ports": [{"name": "http", "port": 8080}]},
                }
            )
        )
    return out


def _create_strict(admin: Kube, obj: Obj) -> Obj:
    meta = obj["metadata"]
    return dict(
        admin.request(
            "POST",
            admin.path(obj["apiVersion"], obj["kind"], meta["namespace"]),
            obj,
            params={"fieldValidation": "Strict"},
        )
    )


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
def test_every_generated_object_is_admitted_as_it_was_sent(
    admin: Kube, namespace: str, containo_us_crds: None, settings: AgentSettings
) -> None:
    desired = desired_state(
        _services(admin, namespace), settings, datetime.datetime.now(datetime.UTC)
    )
    assert len(desired.objects) == 5
    assert desired.problems == ()
    admin.forget_discovery()
    for ref, obj in desired.objects.items():
        stored = _create_strict(admin, obj)
        assert stored["apiVersion"] == f"{settings.crd_group}/v1alpha1", ref
        assert stored["spec"] == obj["spec"], ref  # nothing pruned, nothing defaulted
        for key in ("labels", "annotations", "ownerReferences"):
            assert stored["metadata"].get(key) == obj["metadata"].get(key), (ref, key)


def test_the_server_rejects_what_the_schemas_forbid(admin: Kube, namespace: str) -> None:
    """The check above has teeth: a route without its required ``match`` is
    invalid, and an unknown field is refused under strict field validation."""
    path = admin.path("traefik.io/v1alpha1", "IngressRoute", namespace)
    bad = {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "IngressRoute",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": {"routes": [{"kind": "Rule"}]},
    }
    with pytest.raises(KubeError) as invalid:
        admin.post(path, bad)
    assert invalid.value.status == 422
    assert "match" in str(invalid.value)

    unknown = {**bad, "spec": {"routes": [{"kind": "Rule", "match": "Host(`a`)", "prio": 1}]}}
    with pytest.raises(KubeError) as strict:
        admin.request("POST", path, unknown, params={"fieldValidation": "Strict"})
    assert strict.value.status == 400
    assert "prio" in str(strict.value)


def test_deleting_the_services_deletes_their_routes_through_the_garbage_collector(
    admin: Kube, namespace: str
) -> None:
    """The owner references the agent writes are ones the real garbage
    collector follows: with no agent running, deleting the Services removes
    every IngressRoute and Middleware generated for them."""
    services = _services(admin, namespace)
    desired = desired_state(services, AgentSettings(), datetime.datetime.now(datetime.UTC))
    admin.forget_discovery()
    paths = []
    for obj in desired.objects.values():
        paths.append(admin.object_path(_create_strict(admin, obj)))
    for service in services:
        admin.delete(admin.object_path(service))
    wait_for(lambda: all(admin.maybe(p) is None for p in paths), timeout=90)
