"""The planner: only what differs is written, in a safe order."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.agent.desired import ObjectRef
from devstack.agent.plan import Verb, merge_diff, plan

IR = ObjectRef(kind="IngressRoute", namespace="dev", name="devstack-shop")
MW = ObjectRef(kind="Middleware", namespace="dev", name="devstack-shop--a-route")
IR2 = ObjectRef(kind="IngressRoute", namespace="dev", name="devstack-shop--a")
MANAGED = {"app.kubernetes.io/managed-by": "devstack", "devstack.dev/service": "shop"}


def obj(
    spec: dict[str, Any], *, labels: dict[str, str] | None = None, uid: str = "u1", rv: str = "5"
) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": dict(MANAGED if labels is None else labels),
            "ownerReferences": [{"uid": "svc"}],
            "uid": uid,
            "resourceVersion": rv,
        },
        "spec": spec,
    }


def want(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(MANAGED), "ownerReferences": [{"uid": "svc"}]},
        "spec": spec,
    }


CASES = [
    pytest.param({}, {}, [], id="nothing"),
    pytest.param({IR: want({"a": 1})}, {}, [("create", IR)], id="create"),
    pytest.param({IR: want({"a": 1})}, {IR: obj({"a": 1})}, [], id="equal-no-write"),
    pytest.param(
        {IR: want({"a": 1})},
        {IR: obj({"a": 1}, labels={**MANAGED, "team": "x"})},
        [],
        id="foreign-label-left-alone",
    ),
    pytest.param({IR: want({"a": 1})}, {IR: obj({"a": 2})}, [("patch", IR)], id="spec-drift"),
    pytest.param(
        {IR: want({"a": 1})},
        {IR: obj({"a": 1}, labels={"app.kubernetes.io/managed-by": "devstack"})},
        [("patch", IR)],
        id="label-drift",
    ),
    pytest.param({}, {IR: obj({"a": 1})}, [("delete", IR)], id="delete-managed"),
    pytest.param({}, {IR: obj({"a": 1}, labels={})}, [], id="never-delete-unmanaged"),
    pytest.param(
        {IR2: want({}), MW: want({})},
        {},
        [("create", MW), ("create", IR2)],
        id="middleware-before-route",
    ),
    pytest.param(
        {},
        {IR2: obj({}), MW: obj({})},
        [("delete", IR2), ("delete", MW)],
        id="route-deleted-before-middleware",
    ),
]


@pytest.mark.parametrize(("desired", "actual", "steps"), CASES)
def test_plan(
    desired: dict[ObjectRef, Any], actual: dict[ObjectRef, Any], steps: list[tuple[str, ObjectRef]]
) -> None:
    assert [(s.verb.value, s.ref) for s in plan(desired, actual)] == steps


def test_a_patch_carries_preconditions_and_only_the_difference() -> None:
    (step,) = plan(
        {IR: want({"a": 1, "b": {"c": 1}})},
        {IR: obj({"a": 1, "b": {"c": 2, "d": 3}}, uid="u9", rv="42")},
    )
    assert step.verb is Verb.PATCH
    assert step.body == {"spec": {"b": {"c": 1, "d": None}}}
    assert (step.uid, step.resource_version) == ("u9", "42")


def test_a_delete_carries_the_uid() -> None:
    (step,) = plan({}, {IR: obj({}, uid="u7")})
    assert (step.verb, step.uid) == (Verb.DELETE, "u7")


@pytest.mark.parametrize(
    ("actual", "desired", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1}, {}, {"a": None}),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}, {"a": {"c": None}}),
        ({"a": [1, 2]}, {"a": [2]}, {"a": [2]}),
        ({}, {"a": {"b": 1}}, {"a": {"b": 1}}),
    ],
)
def test_merge_diff(actual: dict[str, Any], desired: dict[str, Any], patch: dict[str, Any]) -> None:
    assert merge_diff(actual, desired) == patch
