"""The writer: applies one planned :class:`~devstack.agent.plan.Step` to the
API (does I/O via ``kube``).

A create that meets an object of the same name which devstack does not
manage is a :class:`NameTakenError` (permanent: someone must rename one); a
create that meets our own object, a patch on a stale ``resourceVersion`` and
a delete of a recreated object are conflicts, retried after the caches catch
up. Deleting something already gone is fine.

Nothing is retried here: every error goes to the caller as it came. A
refusal (403) stays a permanent
:class:`~devstack.agent.kube.KubeAuthError` (the controller reports it as a
write-time problem and looks again after its ``permanent_retry``); a 429 or
5xx is a :class:`~devstack.agent.kube.KubeTemporaryError` with the server's
``Retry-After``, which the controller waits at least.
"""

from __future__ import annotations

from typing import Protocol

from devstack.agent.desired import INGRESS_ROUTE, MIDDLEWARE
from devstack.agent.kube import ConflictError, KubeApi, NotFoundError, RawObject, Resource
from devstack.agent.plan import Step, Verb, is_managed
from devstack.core.errors import PermanentError


class NameTakenError(PermanentError):
    """An object the agent would create already exists and is not ours."""

    reason = "name-taken"


class Writer(Protocol):
    """Applies one step; returns the object as written (None after a delete)."""

    async def apply(self, step: Step) -> RawObject | None: ...


class KubeWriter:
    """The real writer, against a Kubernetes API."""

    def __init__(self, api: KubeApi, resources: dict[str, Resource]) -> None:
        self.api = api
        self.resources = resources  # kind -> Resource (IngressRoute, Middleware)

    async def apply(self, step: Step) -> RawObject | None:
        resource = self.resources[step.ref.kind]
        ns, name = step.ref.namespace, step.ref.name
        if step.verb is Verb.CREATE:
            assert step.body is not None
            try:
                return await self.api.create(resource, step.body)
            except ConflictError:
                existing = await self.api.get_or_none(resource, namespace=ns, name=name)
                if existing is not None and not is_managed(existing):
                    raise NameTakenError(
                        f"{step.ref.kind} {ns}/{name} exists and is not managed by devstack"
                    ) from None
                raise
        if step.verb is Verb.PATCH:
            assert step.body is not None
            body = dict(step.body)
            if step.resource_version:
                body["metadata"] = {
                    **(body.get("metadata") or {}),
                    "resourceVersion": step.resource_version,
                }
            try:
                return await self.api.patch(resource, namespace=ns, name=name, patch=body)
            except NotFoundError as e:
                raise ConflictError(f"{step.ref.kind} {ns}/{name} vanished") from e
        await self.api.delete(resource, namespace=ns, name=name, uid=step.uid)
        return None


def kinds(ingress_route: Resource, middleware: Resource) -> dict[str, Resource]:
    return {INGRESS_ROUTE: ingress_route, MIDDLEWARE: middleware}
