"""The agent's desired objects as Traefik file-provider configuration (pure).

In a cluster, Traefik reads the IngressRoutes and Middlewares the agent
writes through its ``kubernetesCRD`` provider. On a laptop with no cluster
(``devstack up``) there is no API server to write them to, so the same
desired state is translated into Traefik's dynamic configuration for the
file provider: one router per route, one service per upstream, one
middleware per Middleware. The routing rules, priorities and injected
headers are therefore exactly the ones the agent generates.

Upstreams are Kubernetes Service names and ports in the objects; the caller
says which URL each one is (``resolve``). No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devstack.agent.desired import INGRESS_ROUTE, MIDDLEWARE, ObjectRef, RawObject

#: (namespace, Service name, port) -> upstream URL, or None when unknown.
Resolver = Callable[[str, str, int], str | None]


@dataclass(frozen=True, kw_only=True)
class FileConfig:
    """Traefik's dynamic configuration, and the routes left out because
    their upstream is unknown (``namespace/ingressroute#index``)."""

    config: dict[str, Any]
    unresolved: tuple[str, ...]


def _service_key(namespace: str, name: str, port: int) -> str:
    return f"{namespace}-{name}-{port}"


def file_config(objects: Mapping[ObjectRef, RawObject], resolve: Resolver) -> FileConfig:
    """Routers, services and middlewares for Traefik's file provider."""
    routers: dict[str, Any] = {}
    services: dict[str, Any] = {}
    middlewares: dict[str, Any] = {}
    unresolved: list[str] = []
    for ref in sorted(objects):
        obj = objects[ref]
        spec = obj.get("spec") or {}
        if ref.kind == MIDDLEWARE:
            middlewares[f"{ref.namespace}-{ref.name}"] = dict(spec)
            continue
        if ref.kind != INGRESS_ROUTE:
            continue
        entry_points = list(spec.get("entryPoints") or [])
        for index, route in enumerate(spec.get("routes") or []):
            upstreams = []
            for svc in route.get("services") or []:
                namespace = str(svc.get("namespace") or ref.namespace)
                name, port = str(svc["name"]), int(svc["port"])
                url = resolve(namespace, name, port)
                if url is None:
                    continue
                key = _service_key(namespace, name, port)
                services[key] = {"loadBalancer": {"servers": [{"url": url}]}}
                upstreams.append(key)
            if not upstreams:
                unresolved.append(f"{ref.namespace}/{ref.name}#{index}")
                continue
            router: dict[str, Any] = {
                "rule": route["match"],
                "priority": int(route.get("priority") or 0),
                "service": upstreams[0],
            }
            if entry_points:
                router["entryPoints"] = entry_points
            mws = [
                f"{m.get('namespace') or ref.namespace}-{m['name']}"
                for m in route.get("middlewares") or []
            ]
            if mws:
                router["middlewares"] = mws
            routers[f"{ref.namespace}-{ref.name}-{index}"] = router
    http: dict[str, Any] = {"routers": routers, "services": services}
    if middlewares:
        http["middlewares"] = middlewares
    return FileConfig(config={"http": http}, unresolved=tuple(unresolved))
