"""The planner: only what differs is written, in a safe order."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devstack.agent.desired import ObjectRef
from devstack.agent.plan import Verb, digest, merge_diff, plan, spec_drifted, summary

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


@pytest.mark.parametrize(("desired", "actual", "steps"), CASES)
def test_a_plan_over_the_cached_summaries_is_the_plan_over_the_objects(
    desired: dict[ObjectRef, Any], actual: dict[ObjectRef, Any], steps: list[tuple[str, ObjectRef]]
) -> None:
    """The controller caches summaries (digests, no spec): the plan is the
    same, except that a spec which drifted is named for a read first."""
    cached = {ref: summary(o) for ref, o in actual.items()}
    assert all("spec" not in o and "ownerReferences" not in o["metadata"] for o in cached.values())
    drifted = spec_drifted(desired, cached)
    assert drifted == [
        r for r in desired if r in actual and desired[r]["spec"] != actual[r]["spec"]
    ]
    # the controller replaces those with the objects it reads
    cached.update({ref: actual[ref] for ref in drifted})
    assert plan(desired, cached) == plan(desired, actual)
    assert [(s.verb.value, s.ref) for s in plan(desired, cached)] == steps


def test_a_summary_without_its_spec_cannot_be_planned_when_the_spec_drifted() -> None:
    with pytest.raises(ValueError, match="spec_drifted"):
        plan({IR: want({"a": 1})}, {IR: summary(obj({"a": 2}))})


def test_owner_references_that_drifted_are_patched_whole_from_the_summary() -> None:
    have = obj({"a": 1})
    have["metadata"]["ownerReferences"] = [{"uid": "old"}, {"uid": "other"}]
    (step,) = plan({IR: want({"a": 1})}, {IR: summary(have)})
    assert step.verb is Verb.PATCH
    assert step.body == {"metadata": {"ownerReferences": [{"uid": "svc"}]}}
    assert (step.uid, step.resource_version) == ("u1", "5")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"x": 1, "y": [1, 2]}, {"y": [1, 2], "x": 1}, True),
        ({"x": [1, 2]}, {"x": [2, 1]}, False),
        ({"x": 1}, {"x": "1"}, False),
        ({"x": None}, {}, False),
        (None, None, True),
    ],
)
def test_digests_are_equal_for_equal_values_only(a: Any, b: Any, same: bool) -> None:
    assert (digest(a) == digest(b)) is same


def test_a_summary_shares_no_string_with_the_response_it_came_from() -> None:
    """A cache entry that kept strings of a parsed response would keep the
    allocator's pages of the whole response (see plan.own)."""
    response = json.loads(json.dumps(obj({"a": "x" * 100}, uid="u" * 36, rv="12345")))
    response["metadata"]["name"] = "devstack-shop--alice"
    response["metadata"]["namespace"] = "team-" + "a" * 20
    kept = summary(response)
    originals = {id(v) for v in response["metadata"].values()}
    originals |= {id(s) for kv in response["metadata"]["labels"].items() for s in kv}
    mine = {id(v) for v in kept["metadata"].values() if isinstance(v, str)}
    mine |= {id(s) for kv in kept["metadata"]["labels"].items() for s in kv}
    assert not mine & originals
    assert kept["metadata"] == {
        "name": "devstack-shop--alice",
        "namespace": "team-" + "a" * 20,
        "uid": "u" * 36,
        "resourceVersion": "12345",
        "labels": MANAGED,
    }
