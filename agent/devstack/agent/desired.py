"""Desired state: which Traefik objects should exist, given the Services (pure).

Input: the Services that carry ``devstack.dev/service`` (raw JSON), the
settings, and the time. Output: the IngressRoutes and Middlewares that make
routing true, what to show at ``/v1/routes``, the problems found, and which
personal copies have expired. No I/O: the controller feeds it from its
caches and hands the result to the planner.

For each logical service ``S`` (on host ``S.<domain>``):

- the baseline (the Service without an owner label) gets IngressRoute
  ``devstack-S`` with a route on ``S.<domain>`` and one on its preview host
  ``S.<preview domain>``;
- each owner ``O`` with a copy gets IngressRoute ``devstack-S--O`` with a
  route that matches ``O`` in the baggage header (priority 3000), one that
  matches ``O`` in the plain header (2000), and the preview host
  ``S--O.<preview domain>`` (1000), whose Middleware ``devstack-S--O-route``
  injects the routing key so the services it calls route the same way.

While ``O``'s copy of ``S`` sleeps (the ``asleep`` input: the sleeper scaled
it to zero), ``devstack-S--O`` goes and the baseline's IngressRoute carries
``O``'s three routes instead, to the baseline Service, each with a headers
Middleware (``devstack-S--O-asleep``; on the preview host
``devstack-S--O-asleep-route``, which injects the routing key too) that adds
the response header ``X-Devstack-Asleep`` saying so. They live with the
baseline (its namespace, owned by it), so no route crosses namespaces.

Every object lives in the namespace of the Service it routes to and is owned
by it (``ownerReferences``), so deleting the Service deletes its routes.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from devstack.agent.sleep import ASLEEP_HEADER, asleep_message, format_time
from devstack.core.owner import check_owner
from devstack.core.routing import (
    EXPIRES_AT_ANNOTATION,
    OWNER_LABEL,
    PORT_ANNOTATION,
    SERVICE_LABEL,
    TTL_ANNOTATION,
    Owner,
    RouteSettings,
    ServiceName,
    TraefikSyntax,
    baggage_rule,
    crd_group_for,
    host_rule,
    is_dns_label,
    plain_header_rule,
    route_headers,
    syntax_for,
)

RawObject = dict[str, Any]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "devstack"

BASELINE_PRIORITY = 1000
HEADER_PRIORITY = 2000
BAGGAGE_PRIORITY = 3000
PREVIEW_PRIORITY = 1000

INGRESS_ROUTE = "IngressRoute"
MIDDLEWARE = "Middleware"

#: On the Middlewares of a sleeping copy's fallback routes: whose copy sleeps.
ASLEEP_OWNER_LABEL = "devstack.dev/asleep-owner"

#: (service label, owner) -> since when that copy sleeps.
Asleep = Mapping[tuple[str, str], datetime.datetime]


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """What the agent generates: hosts, entry points, headers, Traefik flavour."""

    domain: str = "localtest.me"
    preview_domain: str = "preview.localtest.me"
    entry_points: tuple[str, ...] = ("web",)
    traefik_version: str = "3"
    route: RouteSettings = field(default_factory=RouteSettings)

    @property
    def syntax(self) -> TraefikSyntax:
        return syntax_for(self.traefik_version)

    @property
    def crd_group(self) -> str:
        return crd_group_for(self.traefik_version)

    @property
    def api_version(self) -> str:
        return f"{self.crd_group}/v1alpha1"

    @property
    def scheme(self) -> str:
        return "https" if "websecure" in self.entry_points else "http"


@dataclass(frozen=True, kw_only=True, order=True)
class ObjectRef:
    """Which object: kind, namespace, name."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, kw_only=True)
class Copy:
    """One Kubernetes Service that is a copy of a logical service."""

    service: ServiceName
    owner: Owner | None
    namespace: str
    name: str
    uid: str
    port: int
    created_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None

    def expired(self, now: datetime.datetime) -> bool:
        return self.owner is not None and self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, kw_only=True)
class Problem:
    """Something the agent will not route, with a stable reason."""

    reason: str
    namespace: str
    name: str
    message: str
    service: str = ""


@dataclass(frozen=True, kw_only=True)
class OwnerRoutes:
    owner: str
    namespace: str
    name: str
    preview_url: str
    expires_at: str | None
    expired: bool
    asleep_since: str | None = None


@dataclass(frozen=True, kw_only=True)
class ServiceRoutes:
    """One line of ``/v1/routes``."""

    service: str
    host: str
    baseline: RawObject | None
    preview_url: str | None
    owners: tuple[OwnerRoutes, ...]

    def as_json(self) -> RawObject:
        return {
            "service": self.service,
            "host": self.host,
            "baseline": self.baseline,
            "preview_url": self.preview_url,
            "owners": [
                {
                    "owner": o.owner,
                    "namespace": o.namespace,
                    "name": o.name,
                    "preview_url": o.preview_url,
                    "expires_at": o.expires_at,
                    "expired": o.expired,
                    "asleep_since": o.asleep_since,
                }
                for o in self.owners
            ],
        }


@dataclass(frozen=True, kw_only=True)
class Desired:
    """The desired state of one logical service (or of all of them)."""

    objects: dict[ObjectRef, RawObject]
    routes: tuple[ServiceRoutes, ...]
    problems: tuple[Problem, ...]
    expired: tuple[Copy, ...]
    next_expiry: datetime.datetime | None


# --- reading Services -----------------------------------------------------------------


def _parse_time(value: str) -> datetime.datetime:
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


def _port(spec: Mapping[str, Any], wanted: str | None) -> int | None:
    ports = [p for p in (spec.get("ports") or []) if isinstance(p, dict) and "port" in p]
    if not ports:
        return None
    if wanted:
        for p in ports:
            if p.get("name") == wanted or str(p.get("port")) == wanted:
                return int(p["port"])
        return None
    for p in ports:
        if p.get("name") == "http":
            return int(p["port"])
    return int(ports[0]["port"])


def copy_from_service(raw: Mapping[str, Any]) -> Copy | Problem:
    """Read a Service into a :class:`Copy`, or say why it cannot be routed."""
    meta = raw.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    service = str(labels.get(SERVICE_LABEL, ""))

    def problem(reason: str, message: str) -> Problem:
        return Problem(
            reason=reason, namespace=namespace, name=name, message=message, service=service
        )

    if not is_dns_label(service):
        return problem("bad-service-label", f"{SERVICE_LABEL}={service!r} is not a DNS label")
    owner_value = labels.get(OWNER_LABEL)
    if owner_value is not None and (bad := check_owner(str(owner_value))) is not None:
        return problem("bad-owner-label", f"{OWNER_LABEL}={owner_value!r} {bad}")
    port = _port(raw.get("spec") or {}, annotations.get(PORT_ANNOTATION))
    if port is None:
        return problem("no-port", "the Service has no port to route to")
    created_at = None
    if meta.get("creationTimestamp"):
        try:
            created_at = _parse_time(str(meta["creationTimestamp"]))
        except ValueError:
            created_at = None
    expires_at = None
    try:
        if EXPIRES_AT_ANNOTATION in annotations:
            expires_at = _parse_time(str(annotations[EXPIRES_AT_ANNOTATION]))
        elif TTL_ANNOTATION in annotations and created_at is not None:
            seconds = float(annotations[TTL_ANNOTATION])
            if seconds < 0:
                raise ValueError("negative")
            expires_at = created_at + datetime.timedelta(seconds=seconds)
    except (ValueError, OverflowError):
        return problem(
            "bad-ttl",
            f"{EXPIRES_AT_ANNOTATION} must be RFC 3339 and {TTL_ANNOTATION} a number of seconds",
        )
    return Copy(
        service=ServiceName(service),
        owner=Owner(str(owner_value)) if owner_value is not None else None,
        namespace=namespace,
        name=name,
        uid=str(meta.get("uid") or ""),
        port=port,
        created_at=created_at,
        expires_at=expires_at,
    )


# --- generating objects ------------------------------------------------------------


def host(service: str, settings: AgentSettings) -> str:
    return f"{service}.{settings.domain}"


def preview_host(service: str, owner: str | None, settings: AgentSettings) -> str:
    if owner is None:
        return f"{service}.{settings.preview_domain}"
    return f"{service}--{owner}.{settings.preview_domain}"


def ingress_route_name(service: str, owner: str | None) -> str:
    return f"devstack-{service}" if owner is None else f"devstack-{service}--{owner}"


def middleware_name(service: str, owner: str) -> str:
    return f"devstack-{service}--{owner}-route"


def _metadata(copy: Copy, name: str) -> RawObject:
    labels = {MANAGED_BY_LABEL: MANAGED_BY, SERVICE_LABEL: copy.service}
    if copy.owner is not None:
        labels[OWNER_LABEL] = copy.owner
    return {
        "name": name,
        "namespace": copy.namespace,
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "name": copy.name,
                "uid": copy.uid,
                "controller": True,
            }
        ],
    }


def _route(match: str, priority: int, copy: Copy, middlewares: list[RawObject]) -> RawObject:
    route: RawObject = {
        "kind": "Rule",
        "match": match,
        "priority": priority,
        "services": [{"name": copy.name, "port": copy.port}],
    }
    if middlewares:
        route["middlewares"] = middlewares
    return route


def objects_for_copy(copy: Copy, settings: AgentSettings) -> dict[ObjectRef, RawObject]:
    """The IngressRoute (and, for an owner, the Middleware) of one copy."""
    syntax = settings.syntax
    entry_points = list(settings.entry_points)
    api_version = settings.api_version
    svc_host = host_rule(host(copy.service, settings), syntax=syntax)
    preview = host_rule(preview_host(copy.service, copy.owner, settings), syntax=syntax)
    out: dict[ObjectRef, RawObject] = {}
    if copy.owner is None:
        routes = [
            _route(svc_host, BASELINE_PRIORITY, copy, []),
            _route(preview, PREVIEW_PRIORITY, copy, []),
        ]
    else:
        mw_name = middleware_name(copy.service, copy.owner)
        out[ObjectRef(kind=MIDDLEWARE, namespace=copy.namespace, name=mw_name)] = {
            "apiVersion": api_version,
            "kind": MIDDLEWARE,
            "metadata": _metadata(copy, mw_name),
            "spec": {
                "headers": {"customRequestHeaders": route_headers(copy.owner, settings.route)}
            },
        }
        baggage = baggage_rule(copy.owner, settings.route, syntax=syntax)
        plain = plain_header_rule(copy.owner, settings.route, syntax=syntax)
        routes = [
            _route(f"{svc_host} && {baggage}", BAGGAGE_PRIORITY, copy, []),
            _route(f"{svc_host} && {plain}", HEADER_PRIORITY, copy, []),
            _route(
                preview,
                PREVIEW_PRIORITY,
                copy,
                [{"name": mw_name, "namespace": copy.namespace}],
            ),
        ]
    ir_name = ingress_route_name(copy.service, copy.owner)
    out[ObjectRef(kind=INGRESS_ROUTE, namespace=copy.namespace, name=ir_name)] = {
        "apiVersion": api_version,
        "kind": INGRESS_ROUTE,
        "metadata": _metadata(copy, ir_name),
        "spec": {"entryPoints": entry_points, "routes": routes},
    }
    return out


def asleep_middleware_name(service: str, owner: str, *, route: bool = False) -> str:
    return f"devstack-{service}--{owner}-asleep" + ("-route" if route else "")


def fallback_objects(
    baseline: Copy, owner: Owner, since: datetime.datetime, settings: AgentSettings
) -> tuple[list[RawObject], dict[ObjectRef, RawObject]]:
    """While ``owner``'s copy sleeps: its three routes, to ``baseline``, and
    the two Middlewares that add the asleep header (the preview host's also
    injects the routing key, as the copy's own route does)."""
    syntax = settings.syntax
    service = baseline.service
    svc_host = host_rule(host(service, settings), syntax=syntax)
    response = {ASLEEP_HEADER: asleep_message(service, owner, since.timestamp())}
    names = (
        asleep_middleware_name(service, owner),
        asleep_middleware_name(service, owner, route=True),
    )
    objects: dict[ObjectRef, RawObject] = {}
    for name, with_route in zip(names, (False, True), strict=True):
        metadata = _metadata(baseline, name)
        metadata["labels"][ASLEEP_OWNER_LABEL] = owner
        headers: RawObject = {"customResponseHeaders": response}
        if with_route:
            headers["customRequestHeaders"] = route_headers(owner, settings.route)
        objects[ObjectRef(kind=MIDDLEWARE, namespace=baseline.namespace, name=name)] = {
            "apiVersion": settings.api_version,
            "kind": MIDDLEWARE,
            "metadata": metadata,
            "spec": {"headers": headers},
        }
    asleep, asleep_route = ({"name": n, "namespace": baseline.namespace} for n in names)
    routes = [
        _route(
            f"{svc_host} && {baggage_rule(owner, settings.route, syntax=syntax)}",
            BAGGAGE_PRIORITY,
            baseline,
            [asleep],
        ),
        _route(
            f"{svc_host} && {plain_header_rule(owner, settings.route, syntax=syntax)}",
            HEADER_PRIORITY,
            baseline,
            [asleep],
        ),
        _route(
            host_rule(preview_host(service, owner, settings), syntax=syntax),
            PREVIEW_PRIORITY,
            baseline,
            [asleep_route],
        ),
    ]
    return routes, objects


def _sort_key(c: Copy) -> tuple[str, str, str]:
    created = c.created_at.isoformat() if c.created_at else "~"
    return (created, c.namespace, c.name)


def desired_state(
    services: Iterable[Mapping[str, Any]],
    settings: AgentSettings,
    now: datetime.datetime,
    asleep: Asleep | None = None,
) -> Desired:
    """The desired Traefik objects for these Services (pure).

    Services without ``devstack.dev/service`` are ignored. When two Services
    claim the same baseline (or the same owner's copy), the oldest wins and
    the others are reported as problems. A copy in ``asleep`` has no routes
    of its own; the baseline of its service carries its fallback routes.
    """
    asleep = asleep or {}
    problems: list[Problem] = []
    by_service: dict[str, dict[str | None, list[Copy]]] = {}
    for raw in services:
        labels = (raw.get("metadata") or {}).get("labels") or {}
        if SERVICE_LABEL not in labels:
            continue
        parsed = copy_from_service(raw)
        if isinstance(parsed, Problem):
            problems.append(parsed)
            continue
        by_service.setdefault(parsed.service, {}).setdefault(parsed.owner, []).append(parsed)

    objects: dict[ObjectRef, RawObject] = {}
    routes: list[ServiceRoutes] = []
    expired: list[Copy] = []
    next_expiry: datetime.datetime | None = None
    for service in sorted(by_service):
        baseline: Copy | None = None
        owners: list[OwnerRoutes] = []
        for owner in sorted(by_service[service], key=lambda o: (o is not None, o or "")):
            candidates = sorted(by_service[service][owner], key=_sort_key)
            chosen, *others = candidates
            role = "baseline" if owner is None else f"copy of {owner}"
            for other in others:
                problems.append(
                    Problem(
                        reason="duplicate-copy",
                        namespace=other.namespace,
                        name=other.name,
                        service=service,
                        message=f"{chosen.namespace}/{chosen.name} already is the {role}",
                    )
                )
            is_expired = chosen.expired(now)
            if owner is None:
                baseline = chosen
            else:
                owners.append(
                    OwnerRoutes(
                        owner=owner,
                        namespace=chosen.namespace,
                        name=chosen.name,
                        preview_url=(
                            f"{settings.scheme}://{preview_host(service, owner, settings)}"
                        ),
                        expires_at=(
                            chosen.expires_at.isoformat().replace("+00:00", "Z")
                            if chosen.expires_at
                            else None
                        ),
                        expired=is_expired,
                        asleep_since=(
                            format_time(asleep[(service, owner)].timestamp())
                            if (service, owner) in asleep
                            else None
                        ),
                    )
                )
            if is_expired:
                expired.append(chosen)
                continue
            expires = chosen.expires_at if chosen.owner is not None else None
            if expires is not None and (next_expiry is None or expires < next_expiry):
                next_expiry = expires
            if owner is not None and (service, owner) in asleep:
                continue
            copy_objects = objects_for_copy(chosen, settings)
            if owner is None:
                copy_objects = _with_fallbacks(chosen, copy_objects, asleep, settings)
            objects.update(copy_objects)
        routes.append(
            ServiceRoutes(
                service=service,
                host=host(service, settings),
                baseline=(
                    {"namespace": baseline.namespace, "name": baseline.name} if baseline else None
                ),
                preview_url=(
                    f"{settings.scheme}://{preview_host(service, None, settings)}"
                    if baseline
                    else None
                ),
                owners=tuple(owners),
            )
        )
    return Desired(
        objects=objects,
        routes=tuple(routes),
        problems=tuple(problems),
        expired=tuple(expired),
        next_expiry=next_expiry,
    )


def _with_fallbacks(
    baseline: Copy,
    objects: dict[ObjectRef, RawObject],
    asleep: Asleep,
    settings: AgentSettings,
) -> dict[ObjectRef, RawObject]:
    """The baseline's objects plus the fallback routes of its service's
    sleeping copies (in owner order)."""
    owners = sorted(o for s, o in asleep if s == baseline.service)
    if not owners:
        return objects
    ref = ObjectRef(
        kind=INGRESS_ROUTE,
        namespace=baseline.namespace,
        name=ingress_route_name(baseline.service, None),
    )
    route = objects[ref]
    routes = list(route["spec"]["routes"])
    out = dict(objects)
    for owner in owners:
        extra, middlewares = fallback_objects(
            baseline, Owner(owner), asleep[(baseline.service, owner)], settings
        )
        routes.extend(extra)
        out.update(middlewares)
    out[ref] = {**route, "spec": {**route["spec"], "routes": routes}}
    return out
