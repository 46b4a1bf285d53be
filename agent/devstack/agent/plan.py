"""Plan: desired objects and actual objects in, the writes that differ out (pure).

Only what the agent owns is compared: the labels it sets, the owner
references and ``spec``. Labels or annotations someone else added are left
alone, and an object that already matches produces no write at all, so a
restart or a resync causes no churn. Only objects labelled
``app.kubernetes.io/managed-by: devstack`` are ever deleted.

Order: Middlewares are written before the IngressRoutes that use them and
deleted after them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devstack.agent.desired import (
    INGRESS_ROUTE,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MIDDLEWARE,
    ObjectRef,
    RawObject,
)


class Verb(enum.Enum):
    CREATE = "create"
    PATCH = "patch"
    DELETE = "delete"


@dataclass(frozen=True, kw_only=True)
class Step:
    """One write. ``body``: the object (create) or a JSON merge patch (patch).
    ``uid``/``resource_version``: preconditions so that we only change the
    object we looked at."""

    verb: Verb
    ref: ObjectRef
    body: RawObject | None = None
    uid: str | None = None
    resource_version: str | None = None


def merge_diff(actual: Any, desired: Any) -> Any:
    """The RFC 7386 merge patch that turns ``actual`` into ``desired``
    (``None`` values delete keys; lists are replaced whole)."""
    if not isinstance(actual, dict) or not isinstance(desired, dict):
        return desired
    patch: dict[str, Any] = {}
    for key in actual:
        if key not in desired:
            patch[key] = None
    for key, value in desired.items():
        if key not in actual:
            patch[key] = value
        elif actual[key] != value:
            if isinstance(value, dict) and isinstance(actual[key], dict):
                patch[key] = merge_diff(actual[key], value)
            else:
                patch[key] = value
    return patch


def _drift(actual: Mapping[str, Any], desired: Mapping[str, Any]) -> RawObject | None:
    """The merge patch that makes ``actual`` hold what we manage, or None."""
    a_meta = actual.get("metadata") or {}
    d_meta = desired.get("metadata") or {}
    patch: RawObject = {}
    meta_patch: RawObject = {}
    a_labels = a_meta.get("labels") or {}
    changed_labels = {k: v for k, v in (d_meta.get("labels") or {}).items() if a_labels.get(k) != v}
    if changed_labels:
        meta_patch["labels"] = changed_labels
    if (a_meta.get("ownerReferences") or []) != (d_meta.get("ownerReferences") or []):
        meta_patch["ownerReferences"] = d_meta.get("ownerReferences") or []
    if meta_patch:
        patch["metadata"] = meta_patch
    if actual.get("spec") != desired.get("spec"):
        patch["spec"] = merge_diff(actual.get("spec") or {}, desired.get("spec") or {})
    return patch or None


def is_managed(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY


_WRITE_ORDER = {MIDDLEWARE: 0, INGRESS_ROUTE: 1}
_DELETE_ORDER = {INGRESS_ROUTE: 0, MIDDLEWARE: 1}


def plan(
    desired: Mapping[ObjectRef, RawObject], actual: Mapping[ObjectRef, RawObject]
) -> list[Step]:
    """The writes that make ``actual`` match ``desired``, in a safe order."""
    writes: list[Step] = []
    for ref, want in desired.items():
        have = actual.get(ref)
        if have is None:
            writes.append(Step(verb=Verb.CREATE, ref=ref, body=want))
            continue
        patch = _drift(have, want)
        if patch is not None:
            meta = have.get("metadata") or {}
            writes.append(
                Step(
                    verb=Verb.PATCH,
                    ref=ref,
                    body=patch,
                    uid=meta.get("uid"),
                    resource_version=meta.get("resourceVersion"),
                )
            )
    deletes = [
        Step(
            verb=Verb.DELETE,
            ref=ref,
            uid=(have.get("metadata") or {}).get("uid"),
        )
        for ref, have in actual.items()
        if ref not in desired and is_managed(have)
    ]
    writes.sort(key=lambda s: (_WRITE_ORDER.get(s.ref.kind, 9), s.ref))
    deletes.sort(key=lambda s: (_DELETE_ORDER.get(s.ref.kind, 9), s.ref))
    return writes + deletes
