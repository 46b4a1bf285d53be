"""The Kubernetes side of the outputs: a :class:`~devstack.provision.outputs.KubeWriter`
over :mod:`devstack.agent.kube`, the one module that talks to the Kubernetes
API (does I/O, through it).

The engine is synchronous (boto3 is); each write runs its own short event
loop. In a hook Job the client uses the pod's service account, whose Role
(rendered by the chart) may only create, read, replace and delete the outputs
ConfigMap and Secret.

``.importlinter`` puts ``devstack.provision`` above ``devstack.agent`` and
allows this package exactly one module of it, ``devstack.agent.kube``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from devstack.agent import kube

T = TypeVar("T")


class AgentKubeWriter:
    """Writes ConfigMaps and Secrets with :mod:`devstack.agent.kube`."""

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.context = context

    def _run(self, op: Callable[[kube.KubeApi], Awaitable[T]]) -> T:
        async def go() -> T:
            async with kube.kube_client(
                self.kubeconfig, self.context, user_agent="devstack-provision"
            ) as api:
                return await op(api)

        return asyncio.run(go())

    def apply_config_map(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        self._run(
            lambda api: kube.apply_config_map(
                api, namespace=namespace, name=name, data=dict(data), labels=dict(labels)
            )
        )

    def apply_secret(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        self._run(
            lambda api: kube.apply_secret(
                api, namespace=namespace, name=name, data=dict(data), labels=dict(labels)
            )
        )

    def delete_config_map(self, namespace: str, name: str) -> None:
        self._run(lambda api: kube.delete_config_map(api, namespace=namespace, name=name))

    def delete_secret(self, namespace: str, name: str) -> None:
        self._run(lambda api: kube.delete_secret(api, namespace=namespace, name=name))
