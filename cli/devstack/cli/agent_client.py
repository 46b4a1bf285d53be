"""Reaching the cluster agent's HTTP API from the laptop: one home for what
``devstack doctor`` and ``devstack usage`` share.

- :func:`add_agent_arguments` adds ``--agent-url`` (``DEVSTACK_AGENT_URL``)
  and ``--agent-service`` (``DEVSTACK_AGENT_SERVICE``);
- :class:`DirectHttp` reaches a URL (the ``--agent-url``, e.g. after
  ``kubectl port-forward``), :class:`ServiceProxy` a Service's port through
  the API server's service proxy with the kubeconfig's credentials; both
  answer an :class:`~devstack.cli.doctor_checks.Answer` (status and body, or
  why there was none: :func:`why_no_answer`);
- :func:`locate_agent` finds the agent chart's Service: the one named, else
  the one its labels (:data:`~devstack.cli.doctor_checks.AGENT_SELECTOR`)
  find in any namespace, else in the context's namespace when listing every
  namespace is forbidden.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from devstack.cli.doctor_checks import AGENT_SELECTOR, Answer
from devstack.core.errors import ConfigError

#: What ``--agent-service`` must look like.
_SERVICE_REF = re.compile(r"[a-z0-9-]+/[a-z0-9.-]+")


def add_agent_arguments(group: argparse._ActionsContainer) -> None:
    """``--agent-url`` and ``--agent-service``, defaulted from the environment."""
    group.add_argument(
        "--agent-url",
        default=os.environ.get("DEVSTACK_AGENT_URL") or "",
        metavar="URL",
        help="the agent's HTTP API (env DEVSTACK_AGENT_URL; default: its Service, through the "
        "API server's service proxy)",
    )
    group.add_argument(
        "--agent-service",
        default=os.environ.get("DEVSTACK_AGENT_SERVICE") or "",
        metavar="NAMESPACE/NAME",
        help="the agent chart's Service, when several run or listing Services in every "
        "namespace is not allowed (env DEVSTACK_AGENT_SERVICE; default: found by its labels)",
    )


def check_agent_service(value: str) -> None:
    """A bad ``--agent-service`` is a bad command line."""
    if value and not _SERVICE_REF.fullmatch(value):
        raise ConfigError(f"--agent-service {value!r}: give NAMESPACE/NAME")


# --- answers ----------------------------------------------------------------------------


def why_no_answer(error: BaseException) -> tuple[str, str]:
    """(kind, one line) for a request that got no answer: see :attr:`Answer.kind`."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, aiohttp.ClientConnectorCertificateError):
            cert = e.certificate_error
            said = getattr(cert, "verify_message", "") or str(cert)
            return "tls-cert", f"the server's certificate is not trusted ({said})"
        if isinstance(e, aiohttp.ClientConnectorError) and e.os_error is not e:
            e = e.os_error
            continue
        if isinstance(e, ssl.SSLCertVerificationError):
            return "tls-cert", f"the server's certificate is not trusted ({e.verify_message})"
        if isinstance(e, ssl.SSLError):
            return "tls", f"the TLS handshake failed ({getattr(e, 'reason', None) or e})"
        if isinstance(e, ConnectionRefusedError) or (
            isinstance(e, OSError) and e.errno == errno.ECONNREFUSED
        ):
            return "refused", "connection refused"
        if isinstance(e, socket.gaierror):
            return "dns", f"unknown host ({e.strerror or e})"
        if isinstance(e, TimeoutError | aiohttp.ServerTimeoutError):
            return "timeout", "no answer in time"
        e = e.__cause__ or e.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return "other", text[:300]


def no_answer(error: BaseException) -> Answer:
    kind, text = why_no_answer(error)
    return Answer(error=text, kind=kind)


def parse_body(raw: bytes) -> Any:
    """JSON when it parses, else the start of the text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:2000].decode("utf-8", "replace")


class Http(Protocol):
    """Where an HTTP service is reached: directly, or through the API server."""

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Answer: ...


@dataclass
class DirectHttp:
    """Plain HTTP to ``base`` (no proxy from the environment: loopback and
    port-forwards are meant)."""

    base: str
    timeout: float

    async def request(
        self,
        method: str,
        path: str,
        *,
        data: str | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Answer:
        url = self.base.rstrip("/") + path
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as s,
                s.request(
                    method, url, data=data, headers=dict(headers or {}), params=dict(query or {})
                ) as r,
            ):
                return Answer(status=r.status, body=parse_body(await r.read()))
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return no_answer(e)
        except ValueError as e:  # a URL aiohttp cannot use
            return Answer(error=f"not a usable URL ({e})", kind="other")

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Answer:
        return await self.request("GET", path, query=query)


@dataclass
class ServiceProxy:
    """A Service's port through the API server's service proxy
    (``/api/v1/namespaces/NS/services/NAME:PORT/proxy/...``), with the
    kubeconfig's credentials."""

    api: Any
    namespace: str
    service: str
    port: str

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Answer:
        base = (
            f"/api/v1/namespaces/{urllib.parse.quote(self.namespace)}/services/"
            f"{urllib.parse.quote(self.service)}:{urllib.parse.quote(self.port)}/proxy"
        )
        return await kube_request(self.api, "GET", base + path, **dict(query or {}))


async def kube_request(api: Any, method: str, path: str, body: Any = None, **query: Any) -> Answer:
    """One API request as an :class:`Answer`; an error status's ``error`` is
    the message the answer carried (``""``: none, e.g. a proxied service's own
    error status with a body of its own)."""
    from devstack.agent.kube import KubeError

    try:
        got = await api.request(method, path, body=body, query=query or None)
    except KubeError as e:
        if e.status:
            text = " ".join(str(e).split())
            _, said, message = text.partition(f": {e.status}")
            return Answer(status=e.status, error=message.strip()[:300] if said else text[:300])
        return no_answer(e)
    return Answer(status=200, body=got)


# --- finding the agent's Service --------------------------------------------------------


@dataclass(frozen=True)
class Located:
    """Where the agent's Service was looked for, and what was found."""

    #: Where it was looked for (``any namespace``, ``namespace x``,
    #: ``Service NS/NAME (--agent-service)``).
    looked_in: str
    #: Its Service's port through the service proxy (None: not found).
    proxy: ServiceProxy | None = None
    #: The Services could not be listed: one line (the API server's answer).
    lookup_error: str = ""

    @property
    def via(self) -> str:
        """``namespace/name`` of the Service found (``""``: none)."""
        return f"{self.proxy.namespace}/{self.proxy.service}" if self.proxy else ""


async def locate_agent(api: Any, service: str, namespace: str) -> Located:
    """The agent chart's Service: the one named (``service``,
    ``NAMESPACE/NAME``), else the one the chart's labels find in any
    namespace (else in ``namespace``, when listing every namespace is
    forbidden); the first by namespace and name when several are found. Its
    port named ``http`` (else its first)."""
    if service:
        ns, _, name = service.partition("/")
        path = f"/api/v1/namespaces/{urllib.parse.quote(ns)}/services/{urllib.parse.quote(name)}"
        got = await kube_request(api, "GET", path)
        looked_in = f"Service {service} (--agent-service)"
        if got.status == 404:
            return Located(looked_in=looked_in)
        items = [got.body] if got.status == 200 and isinstance(got.body, dict) else []
        listed = got
    else:
        looked_in = "any namespace"
        listed = await kube_request(api, "GET", "/api/v1/services", labelSelector=AGENT_SELECTOR)
        if listed.status == 403:
            looked_in = f"namespace {namespace}"
            listed = await kube_request(
                api,
                "GET",
                f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/services",
                labelSelector=AGENT_SELECTOR,
            )
        items = (
            sorted(
                (i for i in listed.body.get("items") or () if isinstance(i, dict)),
                key=lambda i: (i["metadata"].get("namespace", ""), i["metadata"].get("name", "")),
            )
            if listed.status == 200 and isinstance(listed.body, dict)
            else []
        )
    if listed.status != 200:
        return Located(
            looked_in=looked_in, lookup_error=listed.error or f"answered {listed.status}"
        )
    if not items:
        return Located(looked_in=looked_in)
    svc = items[0]
    meta = svc["metadata"]
    ports = (svc.get("spec") or {}).get("ports") or [{}]
    port = next((p for p in ports if p.get("name") == "http"), ports[0])
    port_ref = str(port.get("name") or port.get("port") or "http")
    proxy = ServiceProxy(api, str(meta.get("namespace")), str(meta.get("name")), port_ref)
    return Located(looked_in=looked_in, proxy=proxy)
