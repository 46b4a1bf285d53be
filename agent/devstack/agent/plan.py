"""Plan: desired objects and actual objects in, the writes that differ out (pure).

Only what the agent owns is compared: the labels it sets, the owner
references and ``spec``. Labels or annotations someone else added are left
alone, and an object that already matches produces no write at all, so a
restart or a resync causes no churn. Only objects labelled
``app.kubernetes.io/managed-by: devstack`` are ever deleted.

Order: Middlewares are written before the IngressRoutes that use them and
deleted after them.

What the controller caches of each object it manages is :func:`summary`:
identity, labels, preconditions, and digests of ``spec`` and the owner
references instead of the values themselves (a few hundred bytes an object,
not kilobytes, at tens of thousands of objects). Equal digests are equal
values; an owner-reference drift is patched whole, and a ``spec`` that
differs needs the object as it is (a merge patch removes what it must not
hold): :func:`spec_drifted` names those objects, the controller reads each
from the API and plans with it.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sys
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

#: In a :func:`summary`: the digests of ``spec`` and ``metadata.ownerReferences``.
SPEC_DIGEST = "specDigest"
OWNERS_DIGEST = "ownerReferencesDigest"
#: The metadata a summary keeps.
_SUMMARY_METADATA = ("name", "namespace", "uid", "resourceVersion")


def digest(value: Any) -> bytes:
    """A digest of a JSON value: equal for equal values (keys in any order)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def own(value: Any) -> Any:
    """A string copied out of the document it was parsed from (anything
    else as it is). A cache that keeps a few strings of each API response
    would otherwise keep the allocator's pages of the whole response: the
    process's memory would stay what the largest list needed."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    return value


def interned(value: Any) -> str:
    """:func:`own`, interned (a value that recurs on every object)."""
    return sys.intern(own(str(value)))


def summary(obj: Mapping[str, Any]) -> RawObject:
    """What the agent keeps of an object it manages: name, namespace, uid,
    resourceVersion, labels (keys and values interned: the same few
    recur on every object), and the digests of ``spec`` and the owner
    references. Its strings are its own (see :func:`own`)."""
    meta = obj.get("metadata") or {}
    kept: RawObject = {k: own(meta[k]) for k in _SUMMARY_METADATA if k in meta}
    if "namespace" in kept:
        kept["namespace"] = interned(kept["namespace"])
    labels = meta.get("labels")
    if labels:
        kept["labels"] = {interned(k): interned(v) for k, v in labels.items()}
    return {
        "metadata": kept,
        OWNERS_DIGEST: digest(meta.get("ownerReferences") or []),
        SPEC_DIGEST: digest(obj.get("spec")),
    }


def spec_drifted(
    desired: Mapping[ObjectRef, RawObject], actual: Mapping[ObjectRef, RawObject]
) -> list[ObjectRef]:
    """The objects whose cached :func:`summary` says their ``spec`` is not
    the desired one: :func:`plan` needs them as they are."""
    return sorted(
        ref
        for ref, want in desired.items()
        if (have := actual.get(ref)) is not None
        and SPEC_DIGEST in have
        and have[SPEC_DIGEST] != digest(want.get("spec"))
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
    want_owners = d_meta.get("ownerReferences") or []
    if OWNERS_DIGEST in actual:
        owners_differ = actual[OWNERS_DIGEST] != digest(want_owners)
    else:
        owners_differ = (a_meta.get("ownerReferences") or []) != want_owners
    if owners_differ:
        meta_patch["ownerReferences"] = want_owners
    if meta_patch:
        patch["metadata"] = meta_patch
    if SPEC_DIGEST in actual and "spec" not in actual:
        if actual[SPEC_DIGEST] != digest(desired.get("spec")):
            raise ValueError("a spec that drifted needs the object itself (see spec_drifted)")
    elif actual.get("spec") != desired.get("spec"):
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
