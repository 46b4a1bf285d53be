"""A Kubernetes API for tests: kmock 0.8's emulator with a compatibility layer.

kmock serves discovery and request parsing; this subclass keeps the objects
itself so it can behave like a real API server where 0.8 does not (see
../shared/TESTBED.md):

- objects get ``uid``, ``resourceVersion``, ``creationTimestamp``,
  ``generation``; lists carry ``kind``, ``apiVersion`` and a
  ``resourceVersion``; core discovery says ``groupVersion: v1``;
- watches accept ``watch=True`` and ``watch=true``, start from a
  ``resourceVersion`` (replaying what happened since), answer ``410 Gone``
  (an ``ERROR`` event) for a version older than the retained history
  (``history_limit``), honour
  ``timeoutSeconds``, ``labelSelector``, ``fieldSelector`` and
  ``sendInitialEvents`` with the ``k8s.io/initial-events-end`` bookmark that
  client-go (Traefik, Helm, kubectl) waits for;
- PUT replaces (404 when missing, 409 on a stale ``resourceVersion``);
  PATCH speaks merge-patch, JSON-patch, strategic merge (approximated: lists
  of objects merge by ``name``) and server-side apply (approximated: creates
  when missing, else merges; no field managers);
- a list's ``resourceVersion`` is read with its items, under one lock, so
  a watch from it misses nothing;
- DELETE honours finalizers and ``preconditions``; the garbage collector
  deletes dependents whose owners (``ownerReferences``) are all gone
  (``garbage_collect=False`` turns it off, so a test sees what the agent
  itself deletes);
- objects of a resource with a known CRD schema are validated (422).

What is left of it serves only the tests that need what no real server
does on demand (injected failures, a request log) and the agent benchmarks;
everything else runs on the real API server (docs/testing.md, "What still
runs on the emulator").

It runs in its own thread with its own event loop (:class:`EmulatorThread`),
so a test or a benchmark can drive it from sync code or async code
alike; its methods (``create``, ``get``, ``patch``, ``delete``, ``objects``)
are thread-safe. It records every request (:attr:`KubeEmulator.log`)
and can be told to fail some (:meth:`KubeEmulator.fail`), advertising a
``Retry-After`` header and ``details.retryAfterSeconds`` as a real API
server does.

Import :func:`running_emulator` or use the ``kube`` fixture
(``tests/agent/conftest.py`` shows how to expose it).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import datetime
import json
import math
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import pytest
import yaml
from kmock._internal import parsing as kmock_parsing

Obj = dict[str, Any]

CRD_DIR = Path(__file__).resolve().parent.parent / "data" / "traefik-crds"


@dataclass(frozen=True)
class ResourceDef:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


_TRAEFIK_KINDS = {
    "ingressroutes": "IngressRoute",
    "ingressroutetcps": "IngressRouteTCP",
    "ingressrouteudps": "IngressRouteUDP",
    "middlewares": "Middleware",
    "middlewaretcps": "MiddlewareTCP",
    "serverstransports": "ServersTransport",
    "serverstransporttcps": "ServersTransportTCP",
    "tlsoptions": "TLSOption",
    "tlsstores": "TLSStore",
    "traefikservices": "TraefikService",
}

DEFAULT_RESOURCES: tuple[ResourceDef, ...] = (
    ResourceDef("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceDef("", "v1", "nodes", "Node", namespaced=False),
    ResourceDef("", "v1", "services", "Service"),
    ResourceDef("", "v1", "endpoints", "Endpoints"),
    ResourceDef("", "v1", "pods", "Pod"),
    ResourceDef("", "v1", "configmaps", "ConfigMap"),
    ResourceDef("", "v1", "secrets", "Secret"),
    ResourceDef("", "v1", "serviceaccounts", "ServiceAccount"),
    ResourceDef("", "v1", "events", "Event"),
    ResourceDef("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    ResourceDef("apps", "v1", "deployments", "Deployment"),
    ResourceDef("apps", "v1", "replicasets", "ReplicaSet"),
    ResourceDef("apps", "v1", "statefulsets", "StatefulSet"),
    ResourceDef("apps", "v1", "daemonsets", "DaemonSet"),
    ResourceDef("batch", "v1", "jobs", "Job"),
    ResourceDef("batch", "v1", "cronjobs", "CronJob"),
    ResourceDef("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceDef("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceDef("networking.k8s.io", "v1", "ingresses", "Ingress"),
    ResourceDef("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False),
    ResourceDef("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceDef("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceDef("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    ResourceDef(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
    ),
    ResourceDef("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ResourceDef(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
    ),
    *(ResourceDef("traefik.io", "v1alpha1", p, k) for p, k in _TRAEFIK_KINDS.items()),
    *(ResourceDef("traefik.containo.us", "v1alpha1", p, k) for p, k in _TRAEFIK_KINDS.items()),
)


def crd_schemas(directory: Path = CRD_DIR) -> dict[tuple[str, str, str], Obj]:
    """``(group, version, plural) -> openAPIV3Schema`` from CRD YAML files."""
    out: dict[tuple[str, str, str], Obj] = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                out[(spec["group"], version["name"], spec["names"]["plural"])] = schema
    return out


_VALIDATORS: dict[int, tuple[Obj, Any]] = {}


def validate_against_crd(obj: Obj, schema: Obj) -> list[str]:
    """Schema errors of ``obj`` (empty: valid). ``metadata`` is checked by
    the API server's own rules, not the CRD's, as in a real cluster."""
    cached = _VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        trimmed = copy.deepcopy(schema)
        trimmed.setdefault("properties", {})["metadata"] = {"type": "object"}
        cached = (schema, jsonschema.Draft7Validator(trimmed))
        _VALIDATORS[id(schema)] = cached
    validator = cached[1]
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


# --- selectors and patches (pure) ---------------------------------------------


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    for term in _split_selector(selector or ""):
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and key in labels and labels[key] in values:
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in re.split(r"==?", term, maxsplit=1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: Obj) -> bool:
    for term in _split_selector(selector or ""):
        negate = "!=" in term
        path, value = (s.strip() for s in re.split(r"!=|==?", term, maxsplit=1))
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if (str(cur) == value) == negate:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of strategic merge: merge patch, except that lists of
    objects that all have a ``name`` merge element-wise by name."""
    if isinstance(patch, list) and isinstance(target, list):
        named = all(isinstance(x, dict) and "name" in x for x in [*patch, *target])
        if named and patch:
            out = [copy.deepcopy(x) for x in target]
            for item in patch:
                for i, existing in enumerate(out):
                    if existing["name"] == item["name"]:
                        out[i] = strategic_merge_patch(existing, item)
                        break
                else:
                    out.append(copy.deepcopy(item))
            return out
        return copy.deepcopy(patch)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(target: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902 (add, remove, replace, test, copy, move)."""
    doc = copy.deepcopy(target)

    def parent(path: str) -> tuple[Any, str]:
        parts = _pointer(path)
        cur: Any = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def read(path: str) -> Any:
        cur: Any = doc
        for p in _pointer(path):
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    for op in ops:
        kind, path = op["op"], op["path"]
        if kind == "test":
            if read(path) != op["value"]:
                raise ValueError(f"test failed at {path}")
            continue
        if kind in ("copy", "move"):
            value = copy.deepcopy(read(op["from"]))
            if kind == "move":
                c, k = parent(op["from"])
                del c[int(k) if isinstance(c, list) else k]
            kind, op = "add", {"path": path, "value": value}
        c, k = parent(path)
        if kind == "add":
            if isinstance(c, list):
                c.insert(len(c) if k == "-" else int(k), copy.deepcopy(op["value"]))
            else:
                c[k] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del c[int(k) if isinstance(c, list) else k]
        elif kind == "replace":
            if isinstance(c, list):
                c[int(k)] = copy.deepcopy(op["value"])
            else:
                if k not in c:
                    raise ValueError(f"replace: no {path}")
                c[k] = copy.deepcopy(op["value"])
        else:
            raise ValueError(f"unknown op {kind}")
    return doc


def _apply_merge(target: Any, patch: Any) -> Any:
    if isinstance(patch, dict) and isinstance(target, dict):
        out = dict(target)
        for k, v in patch.items():
            out[k] = _apply_merge(target.get(k), v)
        return out
    return copy.deepcopy(patch)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the store ------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self, status: int, reason: str, message: str, *, retry_after_seconds: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.retry_after_seconds = retry_after_seconds

    def status_object(self) -> Obj:
        status: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "code": self.status,
            "reason": self.reason,
            "message": self.message,
        }
        if self.retry_after_seconds is not None:
            status["details"] = {"retryAfterSeconds": self.retry_after_seconds}
        return status


@dataclass
class _Watcher:
    rdef: ResourceDef
    namespace: str | None
    label_selector: str | None
    field_selector: str | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Obj | None]

    def deliver(self, event: Obj) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def translate(self, kind: str, obj: Obj, old: Obj | None) -> Obj | None:
        """The event this watcher sees, if any (selectors may turn a MODIFIED
        into an ADDED or DELETED, as in a real API server)."""
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return None

        def sees(o: Obj | None) -> bool:
            if o is None:
                return False
            labels = o["metadata"].get("labels") or {}
            return label_selector_matches(self.label_selector, labels) and field_selector_matches(
                self.field_selector, o
            )

        now, before = sees(obj), sees(old)
        if kind == "MODIFIED":
            if now and before:
                return {"type": "MODIFIED", "object": obj}
            if now:
                return {"type": "ADDED", "object": obj}
            if before:
                return {"type": "DELETED", "object": obj}
            return None
        return {"type": kind, "object": obj} if now else None


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    user_agent: str
    verb: str
    plural: str | None
    namespace: str | None
    name: str | None
    status: int = 0


@dataclass
class Fault:
    """Answer the next ``times`` matching requests with ``status``.

    ``retry_after`` in seconds is sent as a real API server sends it: the
    header ``Retry-After`` (delay-seconds, an integer, rounded up so a
    client never waits less than asked) and ``details.retryAfterSeconds``
    in the ``Status`` body (also in a watch's ``ERROR`` event);
    ``retry_after_in`` picks which of the two. A string is sent verbatim as
    the header (an HTTP-date, say) and not in the body.
    """

    status: int
    verbs: frozenset[str] | None = None
    plural: str | None = None
    times: int = 1
    retry_after: float | str | None = None
    in_stream: bool = False  # for watches: send an ERROR event instead of a status
    retry_after_in: frozenset[str] = frozenset({"header", "details"})

    def matches(self, verb: str, plural: str | None) -> bool:
        if self.times <= 0:
            return False
        if self.verbs is not None and verb not in self.verbs:
            return False
        return self.plural is None or self.plural == plural

    def headers(self) -> dict[str, str]:
        if self.retry_after is None or "header" not in self.retry_after_in:
            return {}
        if isinstance(self.retry_after, str):
            return {"Retry-After": self.retry_after}
        return {"Retry-After": str(math.ceil(self.retry_after))}

    def error(self, message: str) -> ApiError:
        seconds = None
        if isinstance(self.retry_after, int | float) and "details" in self.retry_after_in:
            seconds = math.ceil(self.retry_after)
        reason = "Expired" if self.status == 410 else "InjectedFault"
        return ApiError(self.status, reason, message, retry_after_seconds=seconds)


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator with the compatibility layer described above."""

    history_limit: int = 100_000
    garbage_collect: bool = True
    validate_crds: bool = True
    crd_dir: Path = CRD_DIR

    _defs: dict[tuple[str, str, str], ResourceDef] = attrs.field(factory=dict, init=False)
    _store: dict[tuple[str, str, str, str], Obj] = attrs.field(factory=dict, init=False)
    _history: dict[tuple[str, str], deque[tuple[int, Obj, Obj | None]]] = attrs.field(
        factory=dict, init=False
    )
    _oldest: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    _watchers: list[_Watcher] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=1, init=False)
    _mutex: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _schemas: dict[tuple[str, str, str], Obj] = attrs.field(factory=dict, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    log: list[LoggedRequest] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for rdef in DEFAULT_RESOURCES:
            self.add_resource(rdef)
        if self.validate_crds and self.crd_dir.is_dir():
            self._schemas = crd_schemas(self.crd_dir)

    # -- setup ------------------------------------------------------------------

    def add_resource(self, rdef: ResourceDef) -> None:
        self._defs[(rdef.group, rdef.version, rdef.plural)] = rdef
        verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
        key = f"{rdef.group}/{rdef.version}/{rdef.plural}" if rdef.group else f"v1/{rdef.plural}"
        self.resources[key] = kmock.ResourceInfo(
            kind=rdef.kind,
            namespaced=rdef.namespaced,
            verbs=verbs,
            singular=rdef.kind.lower(),
            subresources={"status"},
        )

    def resource(self, api_version: str, plural: str) -> ResourceDef:
        group, _, version = api_version.rpartition("/")
        return self._defs[(group, version, plural)]

    def fail(
        self,
        status: int,
        *,
        verbs: set[str] | None = None,
        plural: str | None = None,
        times: int = 1,
        retry_after: float | str | None = None,
        in_stream: bool = False,
        retry_after_in: set[str] | None = None,
    ) -> Fault:
        """Make the next ``times`` requests (of ``verbs`` on ``plural``) fail
        (see :class:`Fault` for how ``retry_after`` is sent)."""
        fault = Fault(
            status,
            frozenset(verbs) if verbs else None,
            plural,
            times,
            retry_after,
            in_stream,
            frozenset(retry_after_in) if retry_after_in is not None else Fault.retry_after_in,
        )
        with self._mutex:
            self.faults.append(fault)
        return fault

    def drop_watches(self) -> None:
        """End every open watch stream (as an API server restart would)."""
        with self._mutex:
            for w in self._watchers:
                w.loop.call_soon_threadsafe(w.queue.put_nowait, None)

    # -- the object API (thread-safe) -----------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _record(self, rdef: ResourceDef, kind: str, obj: Obj, old: Obj | None) -> None:
        hkey = (rdef.group, rdef.plural)
        history = self._history.setdefault(hkey, deque())
        history.append(
            (int(obj["metadata"]["resourceVersion"]), {"type": kind, "object": obj}, old)
        )
        while len(history) > self.history_limit:
            dropped = history.popleft()
            self._oldest[hkey] = dropped[0]
        for w in self._watchers:
            if w.rdef.group == rdef.group and w.rdef.plural == rdef.plural:
                event = w.translate(kind, copy.deepcopy(obj), old)
                if event is not None:
                    w.deliver(event)

    def _validate(self, rdef: ResourceDef, obj: Obj) -> None:
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise ApiError(422, "Invalid", "metadata is required")
        name = meta.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
            raise ApiError(422, "Invalid", f"metadata.name {name!r} is not a valid name")
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63:
                raise ApiError(422, "Invalid", f"label {key}: invalid value {value!r}")
        schema = self._schemas.get((rdef.group, rdef.version, rdef.plural))
        if schema is None and rdef.group == "traefik.containo.us":
            schema = self._schemas.get(("traefik.io", rdef.version, rdef.plural))
        if schema is not None:
            errors = validate_against_crd(obj, schema)
            if errors:
                raise ApiError(422, "Invalid", f"{rdef.kind} {name} is invalid: {errors[0]}")

    def create(self, rdef: ResourceDef, obj: Obj, *, namespace: str | None = None) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if rdef.namespaced:
            ns = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, ns):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        obj["apiVersion"], obj["kind"] = rdef.api_version, rdef.kind
        self._validate(rdef, obj)
        with self._mutex:
            key = (rdef.group, rdef.plural, meta.get("namespace", ""), meta["name"])
            if key in self._store:
                raise ApiError(
                    409, "AlreadyExists", f'{rdef.plural} "{meta["name"]}" already exists'
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta["resourceVersion"] = self._bump()
            for k in ("deletionTimestamp", "selfLink"):
                meta.pop(k, None)
            self._store[key] = obj
            self._record(rdef, "ADDED", copy.deepcopy(obj), None)
            return copy.deepcopy(obj)

    def get(self, rdef: ResourceDef, namespace: str | None, name: str) -> Obj | None:
        with self._mutex:
            obj = self._store.get((rdef.group, rdef.plural, namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def count(self, rdef: ResourceDef) -> int:
        """How many objects of ``rdef`` exist (cheap, for polling)."""
        with self._mutex:
            return sum(1 for k in self._store if k[:2] == (rdef.group, rdef.plural))

    def objects(
        self,
        rdef: ResourceDef,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 0,
    ) -> list[Obj]:
        """The matching objects in (namespace, name) order; with ``after``,
        only those past that key, and with ``limit``, at most that many
        (only those are copied)."""
        with self._mutex:
            out: list[Obj] = []
            kind = (rdef.group, rdef.plural)
            keys = sorted(k for k in self._store if k[:2] == kind)
            first = 0 if after is None else bisect.bisect_right(keys, (*kind, *after))
            for key in keys[first:]:
                ns = key[2]
                if namespace is not None and ns != namespace:
                    continue
                if limit and len(out) >= limit:
                    break
                obj = self._store[key]
                labels = obj["metadata"].get("labels") or {}
                if not label_selector_matches(label_selector, labels):
                    continue
                if not field_selector_matches(field_selector, obj):
                    continue
                out.append(copy.deepcopy(obj))
            return out

    def list_objects(
        self,
        rdef: ResourceDef,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 0,
    ) -> tuple[list[Obj], str]:
        """What a list answers: the objects and the ``resourceVersion`` they
        are the state at, read together under the lock (a watch from that
        version must miss nothing and replay nothing the items include)."""
        with self._mutex:
            items = self.objects(
                rdef,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                after=after,
                limit=limit,
            )
            return items, str(self._rv)

    def _replace_locked(
        self, rdef: ResourceDef, key: tuple[str, str, str, str], new: Obj, *, status_only: bool
    ) -> Obj:
        old = self._store[key]
        meta_old = old["metadata"]
        if status_only:
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = copy.deepcopy(new["status"])
            new = merged
        new = copy.deepcopy(new)
        new["apiVersion"], new["kind"] = rdef.api_version, rdef.kind
        meta = new.setdefault("metadata", {})
        if meta.get("name", meta_old["name"]) != meta_old["name"]:
            raise ApiError(400, "BadRequest", "the name of the object does not match")
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if k in meta_old:
                meta[k] = meta_old[k]
            else:
                meta.pop(k, None)
        self._validate(rdef, new)
        strip = ("resourceVersion", "generation", "managedFields")
        same = {k: v for k, v in new.items() if k != "metadata"} == {
            k: v for k, v in old.items() if k != "metadata"
        } and {k: v for k, v in meta.items() if k not in strip} == {
            k: v for k, v in meta_old.items() if k not in strip
        }
        if same:  # a no-op write changes nothing, not even the resourceVersion
            return copy.deepcopy(old)
        generation = int(meta_old.get("generation", 1))
        if new.get("spec") != old.get("spec"):
            generation += 1
        meta["generation"] = generation
        meta["resourceVersion"] = self._bump()
        self._store[key] = new
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove_locked(rdef, key)
        self._record(rdef, "MODIFIED", copy.deepcopy(new), copy.deepcopy(old))
        return copy.deepcopy(new)

    def _key(
        self, rdef: ResourceDef, namespace: str | None, name: str
    ) -> tuple[str, str, str, str]:
        return (rdef.group, rdef.plural, (namespace or "") if rdef.namespaced else "", name)

    def _existing(self, rdef: ResourceDef, namespace: str | None, name: str) -> tuple[Any, Obj]:
        key = self._key(rdef, namespace, name)
        if key not in self._store:
            raise ApiError(404, "NotFound", f'{rdef.plural} "{name}" not found')
        return key, self._store[key]

    @staticmethod
    def _check_rv(current: Obj, wanted: Any) -> None:
        if wanted and str(wanted) != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; "
                "please apply your changes to the latest version and try again",
            )

    def replace(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        obj: Obj,
        *,
        status_only: bool = False,
    ) -> Obj:
        with self._mutex:
            key, current = self._existing(rdef, namespace, name)
            self._check_rv(current, (obj.get("metadata") or {}).get("resourceVersion"))
            return self._replace_locked(rdef, key, obj, status_only=status_only)

    def patch(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = "application/merge-patch+json",
        status_only: bool = False,
    ) -> Obj:
        with self._mutex:
            if "apply-patch" in content_type and (
                self._key(rdef, namespace, name) not in self._store
            ):
                body = copy.deepcopy(patch)
                body.setdefault("metadata", {})["name"] = name
                return self.create(rdef, body, namespace=namespace)
            key, current = self._existing(rdef, namespace, name)
            try:
                if "json-patch" in content_type:
                    new = json_patch(current, patch)
                elif "strategic" in content_type:
                    self._check_rv(
                        current, ((patch or {}).get("metadata") or {}).get("resourceVersion")
                    )
                    new = strategic_merge_patch(current, patch)
                elif "apply-patch" in content_type:
                    new = _apply_merge(current, patch)
                else:
                    self._check_rv(
                        current, ((patch or {}).get("metadata") or {}).get("resourceVersion")
                    )
                    new = merge_patch(current, patch)
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise ApiError(422, "Invalid", f"the patch cannot be applied: {e}") from e
            new.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
                "resourceVersion"
            ]
            return self._replace_locked(rdef, key, new, status_only=status_only)

    def _remove_locked(self, rdef: ResourceDef, key: tuple[str, str, str, str]) -> Obj:
        obj = self._store.pop(key)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._record(rdef, "DELETED", copy.deepcopy(obj), None)
        return obj

    def delete(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        *,
        options: Obj | None = None,
    ) -> Obj:
        options = options or {}
        with self._mutex:
            key, current = self._existing(rdef, namespace, name)
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != current["metadata"]["uid"]:
                raise ApiError(409, "Conflict", "Precondition failed: UID in precondition")
            self._check_rv(current, pre.get("resourceVersion"))
            meta = current["metadata"]
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    marked = copy.deepcopy(current)
                    marked["metadata"]["deletionTimestamp"] = _now()
                    return self._replace_locked(rdef, key, marked, status_only=False)
                return copy.deepcopy(current)
            gone = self._remove_locked(rdef, key)
            if self.garbage_collect and options.get("propagationPolicy") != "Orphan":
                self._collect_garbage_locked()
            return gone

    def _collect_garbage_locked(self) -> None:
        """Delete dependents all of whose owners are gone (cascading)."""
        while True:
            live = {o["metadata"]["uid"] for o in self._store.values()}
            orphans = [
                key
                for key, o in self._store.items()
                if (refs := o["metadata"].get("ownerReferences"))
                and not o["metadata"].get("finalizers")
                and not any(r.get("uid") in live for r in refs)
            ]
            if not orphans:
                return
            for key in orphans:
                rdef = next(d for d in self._defs.values() if (d.group, d.plural) == key[:2])
                self._remove_locked(rdef, key)

    # -- convenience for tests -----------------------------------------------------------

    def register_service(
        self,
        *,
        namespace: str,
        name: str,
        port: int,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        service_port: int = 80,
        host: str = "127.0.0.1",
    ) -> Obj:
        """A Service (``service_port`` -> ``port``) and its EndpointSlice
        pointing at ``host:port``: how a test registers a real upstream."""
        services = self.resource("v1", "services")
        slices = self.resource("discovery.k8s.io/v1", "endpointslices")
        svc = self.create(
            services,
            {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": labels or {},
                    "annotations": annotations or {},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": host,
                    "ports": [
                        {
                            "name": "http",
                            "port": service_port,
                            "targetPort": port,
                            "protocol": "TCP",
                        }
                    ],
                },
            },
        )
        self.create(
            slices,
            {
                "metadata": {
                    "name": f"{name}-slice",
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name},
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": name,
                            "uid": svc["metadata"]["uid"],
                        }
                    ],
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            },
        )
        return svc

    # -- HTTP -------------------------------------------------------------------------------

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        raw: aiohttp.web.BaseRequest = request._raw_request
        parsed = kmock_parsing.parse_path(raw.path)
        rdef = None
        if parsed.group is not None and parsed.plural is not None and parsed.version is not None:
            rdef = self._defs.get((parsed.group, parsed.version, parsed.plural))
        if rdef is None:
            return await kmock.RawHandler._handle(self, request)  # discovery, user reactions
        return await self._serve(raw, rdef, parsed, request.data)

    async def _serve(
        self, raw: aiohttp.web.BaseRequest, rdef: ResourceDef, parsed: Any, data: Any
    ) -> aiohttp.web.StreamResponse:
        query = dict(raw.query)
        watching = query.get("watch", "").lower() in ("true", "1")
        verb = {
            "GET": "watch" if watching else ("get" if parsed.name else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if parsed.name else "deletecollection",
        }.get(raw.method, raw.method.lower())
        log = LoggedRequest(
            raw.method,
            raw.path,
            query,
            raw.headers.get("User-Agent", ""),
            verb,
            rdef.plural,
            parsed.namespace,
            parsed.name,
        )
        with self._mutex:
            self.log.append(log)
            fault = next((f for f in self.faults if f.matches(verb, rdef.plural)), None)
            if fault is not None:
                fault.times -= 1
        try:
            if fault is not None and not (fault.in_stream and verb == "watch"):
                raise fault.error(f"injected {fault.status}") from None
            if verb == "watch":
                log.status = 200
                return await self._watch(raw, rdef, parsed.namespace, query, fault)
            status, body = 200, self._dispatch(raw, verb, rdef, parsed, data, query)
            if verb == "create":
                status = 201
            log.status = status
            return aiohttp.web.json_response(body, status=status)
        except ApiError as e:
            log.status = e.status
            headers = fault.headers() if fault is not None else {}
            return aiohttp.web.json_response(e.status_object(), status=e.status, headers=headers)

    def _dispatch(
        self,
        raw: aiohttp.web.BaseRequest,
        verb: str,
        rdef: ResourceDef,
        parsed: Any,
        data: Any,
        query: dict[str, str],
    ) -> Obj:
        ns, name = parsed.namespace, parsed.name
        status_only = parsed.subresource == "status"
        if verb == "list":
            limit = max(0, int(query.get("limit") or 0))
            after, snapshot = _continue_from(query.get("continue"))
            items, rv = self.list_objects(
                rdef,
                ns,
                label_selector=query.get("labelSelector"),
                field_selector=query.get("fieldSelector"),
                after=after,
                limit=limit + 1 if limit else 0,
            )
            meta: dict[str, Any] = {"resourceVersion": snapshot or rv}
            if limit and len(items) > limit:
                items = items[:limit]
                last = items[-1]["metadata"]
                meta["continue"] = _continue_token(
                    (str(last.get("namespace") or ""), str(last["name"])), meta["resourceVersion"]
                )
            return {
                "kind": f"{rdef.kind}List",
                "apiVersion": rdef.api_version,
                "metadata": meta,
                "items": items,
            }
        if verb == "get":
            obj = self.get(rdef, ns, name)
            if obj is None:
                raise ApiError(404, "NotFound", f'{rdef.plural} "{name}" not found')
            return obj
        content_type = raw.headers.get("Content-Type", "application/json")
        if "yaml" in content_type and isinstance(data, type(None)):
            data = None
        if data is None and raw.method in ("POST", "PUT", "PATCH"):
            raise ApiError(400, "BadRequest", "the request has no JSON body")
        if verb == "create":
            return self.create(rdef, data, namespace=ns)
        if verb == "update":
            return self.replace(rdef, ns, name, data, status_only=status_only)
        if verb == "patch":
            return self.patch(
                rdef, ns, name, data, content_type=content_type, status_only=status_only
            )
        if verb == "delete":
            return self.delete(rdef, ns, name, options=data if isinstance(data, dict) else None)
        if verb == "deletecollection":
            for obj in self.objects(rdef, ns, label_selector=query.get("labelSelector")):
                with contextlib.suppress(ApiError):
                    self.delete(rdef, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            return {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
        raise ApiError(405, "MethodNotAllowed", f"{raw.method} is not supported here")

    async def _watch(
        self,
        raw: aiohttp.web.BaseRequest,
        rdef: ResourceDef,
        namespace: str | None,
        query: dict[str, str],
        fault: Fault | None,
    ) -> aiohttp.web.StreamResponse:
        loop = asyncio.get_running_loop()
        watcher = _Watcher(
            rdef,
            namespace,
            query.get("labelSelector"),
            query.get("fieldSelector"),
            loop,
            asyncio.Queue(),
        )
        if query.get("fieldSelector", "").startswith("metadata.name="):
            pass  # handled by field_selector_matches
        rv = query.get("resourceVersion", "")
        initial: list[Obj] = []
        gone = False
        with self._mutex:
            hkey = (rdef.group, rdef.plural)
            send_initial = query.get("sendInitialEvents") == "true"
            if send_initial or rv in ("", "0"):
                for obj in self.objects(
                    rdef,
                    namespace,
                    label_selector=watcher.label_selector,
                    field_selector=watcher.field_selector,
                ):
                    initial.append({"type": "ADDED", "object": obj})
                if send_initial:
                    initial.append(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": rdef.kind,
                                "apiVersion": rdef.api_version,
                                "metadata": {
                                    "resourceVersion": str(self._rv),
                                    "annotations": {"k8s.io/initial-events-end": "true"},
                                },
                            },
                        }
                    )
            else:
                try:
                    since = int(rv)
                except ValueError:
                    since = -1
                if since < self._oldest.get(hkey, 0) or since < 0:
                    gone = True
                else:
                    for event_rv, event, old in self._history.get(hkey, ()):
                        if event_rv > since:
                            seen = watcher.translate(event["type"], event["object"], old)
                            if seen is not None:
                                initial.append(copy.deepcopy(seen))
            if not gone:
                self._watchers.append(watcher)
        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        await response.prepare(raw)
        try:
            if fault is not None or gone:
                message = f"too old resource version: {rv}"
                err = (
                    fault.error(message) if fault is not None else ApiError(410, "Expired", message)
                )
                await response.write(
                    json.dumps({"type": "ERROR", "object": err.status_object()}).encode() + b"\n"
                )
                return response
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            timeout = float(query.get("timeoutSeconds") or 1800)
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self._mutex:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    # -- discovery fixes -------------------------------------------------------------------------

    async def _serve_version(self, request: Any) -> Any:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and payload.get("groupVersion", "").startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]
        return payload


# --- running it ---------------------------------------------------------------------------


@dataclass
class EmulatorThread:
    """A :class:`KubeEmulator` served on 127.0.0.1 from its own thread."""

    emulator: KubeEmulator
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmulatorThread:
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator failed") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.emulator:
            server = aiohttp.web.Server(self.emulator)
            runner = aiohttp.web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", self.port)
            await site.start()
            sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
            self.port = sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            self.emulator.drop_watches()
            await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)

    def kubeconfig(
        self, path: Path, *, context: str = "emulator", namespace: str = "default"
    ) -> Path:
        """Write a kubeconfig for this emulator (token auth, no TLS)."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": context, "cluster": {"server": self.url}}],
                    "users": [{"name": context, "user": {"token": "emulator-token"}}],
                    "contexts": [
                        {
                            "name": context,
                            "context": {
                                "cluster": context,
                                "user": context,
                                "namespace": namespace,
                            },
                        }
                    ],
                    "current-context": context,
                }
            )
        )
        return path


def _continue_token(last: tuple[str, str], rv: str) -> str:
    """A list's ``continue``: the last key given and the first page's version.

    Unlike a real API server's, later pages are read from the objects as
    they are then, not from the first page's snapshot (every page reports
    the first page's ``resourceVersion``): enough for an informer, whose
    watch from that version replays what changed since."""
    state = {"ns": last[0], "name": last[1], "rv": rv}
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode()


def _continue_from(token: str | None) -> tuple[tuple[str, str] | None, str | None]:
    if not token:
        return None, None
    try:
        state = json.loads(base64.urlsafe_b64decode(token.encode()))
        return (str(state["ns"]), str(state["name"])), str(state["rv"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "BadRequest", "continue: not a token of this server") from None


@contextlib.contextmanager
def running_emulator(**kwargs: Any) -> Iterator[EmulatorThread]:
    """``with running_emulator() as kube:``: ``kube.emulator`` is the
    :class:`KubeEmulator`, ``kube.url`` its address, ``kube.kubeconfig(p)``
    writes a kubeconfig. Keyword arguments go to :class:`KubeEmulator`."""
    thread = EmulatorThread(KubeEmulator(**kwargs)).start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    """A fresh Kubernetes emulator for one test."""
    with running_emulator() as thread:
        yield thread
