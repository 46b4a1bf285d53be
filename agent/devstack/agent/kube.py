"""The one module in devstack that talks to the Kubernetes API (does I/O).

Everything else sees raw Kubernetes JSON (``dict``) and devstack's own
errors. The client is kubernetes-asyncio's ``ApiClient``, used for
authentication and transport only: requests go to explicit paths with
``_preload_content=False`` and come back as JSON, so one code path serves
core, discovery, coordination and Traefik's CRDs alike.

Stable API (the provisioning engine imports these; keep the signatures):

``kube_client(kubeconfig=None, context=None, *, user_agent=None)``
    ``async with kube_client() as api:`` builds a :class:`KubeApi`, finding
    credentials in kubectl's order: ``kubeconfig``, else ``$KUBECONFIG``
    (a colon-separated list, merged as client-go merges it), else
    ``~/.kube/config``, with ``context`` or the current context; only when
    there is no kubeconfig at all, the pod's service account.

``await apply_config_map(api, *, namespace, name, data, labels)``
``await apply_secret(api, *, namespace, name, data, labels)``
    Create the object or make an existing one hold exactly ``data`` (secret
    values are plain text here and stored base64-encoded); ``labels`` are
    merged into the object's labels. Safe to repeat.

``await delete_config_map(api, *, namespace, name)``
``await delete_secret(api, *, namespace, name)``
    Delete; an object that is already gone is not an error.

Errors (all devstack errors, each wrapping the library error):

- :class:`ConflictError` (409: already exists, or a stale ``resourceVersion``),
- :class:`GoneError` (410: the watch's ``resourceVersion`` is too old; relist),
- :class:`KubeTemporaryError` (429 and 5xx, with ``delay`` from ``Retry-After``
  or ``details.retryAfterSeconds``: see :func:`retry_after`),
- :class:`NotFoundError` (404), :class:`KubeAuthError` (401, reason
  ``unauthenticated``; 403 is its :class:`KubeForbiddenError`, ``forbidden``),
- :class:`KubeRequestError` (other 4xx: a bad object or request),
- :class:`KubeUnreachableError` (no connection; a temporary error).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import json
import math
import os
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from devstack.core.errors import (
    AuthError,
    ConfigError,
    DevstackError,
    PermanentError,
    TemporaryError,
    UnreachableError,
)

RawObject = dict[str, Any]

_SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class WatchEvent(TypedDict):
    """One line of a watch stream."""

    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    object: RawObject


# --- errors ------------------------------------------------------------------


class KubeError(DevstackError):
    """Mixin with the HTTP status of a Kubernetes API answer (0: no answer)."""

    status: int = 0


class ConflictError(TemporaryError, KubeError):
    """409: the object exists already, or changed since we read it."""

    reason = "conflict"
    status = 409


#: Objects per page of a list (client-go's informers ask for 500).
LIST_PAGE_SIZE = 500


class GoneError(TemporaryError, KubeError):
    """410: the ``resourceVersion`` is too old; list again."""

    reason = "gone"
    status = 410


class KubeTemporaryError(TemporaryError, KubeError):
    """429 or 5xx: try again after ``delay`` (``Retry-After``) if given."""

    reason = "api-unavailable"


class KubeUnreachableError(UnreachableError, KubeError):
    """The API server did not answer at all."""


class NotFoundError(PermanentError, KubeError):
    """404: no such object (or resource)."""

    reason = "not-found"
    status = 404


class KubeAuthError(AuthError, KubeError):
    """401/403: the credentials are bad or lack a permission."""


class KubeForbiddenError(KubeAuthError):
    """403: the credentials are good, the permission is missing (or not in
    force yet)."""

    reason = "forbidden"


class KubeRequestError(PermanentError, KubeError):
    """Another 4xx: the request or object is invalid."""

    reason = "bad-request"


def _retry_after_header(value: str, now: datetime.datetime) -> float | None:
    """A ``Retry-After`` value: delay-seconds, or an HTTP-date (RFC 9110)."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - now).total_seconds())


def retry_after(
    headers: Mapping[str, str] | None,
    body: Any = None,
    *,
    now: datetime.datetime | None = None,
) -> float | None:
    """How long the server asked us to wait, in seconds, or ``None``.

    Read from the ``Retry-After`` header (seconds or an HTTP-date) and from
    a ``Status`` body's ``details.retryAfterSeconds`` (which watch ``ERROR``
    events carry too); when both are given, the longer wins.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    hints: list[float] = []
    if headers:
        value = headers.get("Retry-After") or headers.get("retry-after")
        if value is not None:
            parsed = _retry_after_header(str(value), now)
            if parsed is not None:
                hints.append(parsed)
    if isinstance(body, dict):
        details = body.get("details")
        seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
        if (
            isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and math.isfinite(seconds)
        ):
            hints.append(max(0.0, float(seconds)))
    return max(hints) if hints else None


def _message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        msg = body.get("message") or body.get("reason")
        if isinstance(msg, str) and msg:
            return msg
    return fallback


def error_for_status(
    status: int, *, what: str, body: Any = None, headers: Mapping[str, str] | None = None
) -> KubeError:
    """The devstack error for an HTTP status from the API (not raised)."""
    msg = f"{what}: {status} {_message(body, '')}".rstrip()
    err: KubeError
    if status == 409:
        err = ConflictError(msg)
    elif status == 410:
        err = GoneError(msg)
    elif status == 429 or status >= 500:
        err = KubeTemporaryError(msg, delay=retry_after(headers, body))
    elif status == 404:
        err = NotFoundError(msg)
    elif status == 403:
        err = KubeForbiddenError(msg)
    elif status == 401:
        err = KubeAuthError(msg)
    else:
        err = KubeRequestError(msg)
    err.status = status
    return err


# --- resources -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Resource:
    """A Kubernetes resource: where its objects live in the API."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, *, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None and self.namespaced:
            base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{urllib.parse.quote(name, safe='')}"
        return base


SERVICES = Resource(group="", version="v1", plural="services", kind="Service")
CONFIG_MAPS = Resource(group="", version="v1", plural="configmaps", kind="ConfigMap")
SECRETS = Resource(group="", version="v1", plural="secrets", kind="Secret")
LEASES = Resource(group="coordination.k8s.io", version="v1", plural="leases", kind="Lease")
EVENTS = Resource(group="", version="v1", plural="events", kind="Event")
PODS = Resource(group="", version="v1", plural="pods", kind="Pod")
PVCS = Resource(
    group="", version="v1", plural="persistentvolumeclaims", kind="PersistentVolumeClaim"
)


def traefik_resources(group: str = "traefik.io") -> tuple[Resource, Resource]:
    """IngressRoute and Middleware in Traefik's CRD group."""
    return (
        Resource(group=group, version="v1alpha1", plural="ingressroutes", kind="IngressRoute"),
        Resource(group=group, version="v1alpha1", plural="middlewares", kind="Middleware"),
    )


# --- the client ----------------------------------------------------------------

PatchType = Literal["merge", "json", "strategic"]
_PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class KubeApi:
    """Raw-JSON access to one API server. Build it with :func:`kube_client`."""

    def __init__(self, api_client: Any, *, request_timeout: float = 30.0) -> None:
        self._client = api_client
        self._timeout = request_timeout

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | float | None = None,
    ) -> aiohttp.ClientResponse:
        params = [(k, _query_value(v)) for k, v in (query or {}).items()]
        try:
            response = await self._client.call_api(
                path,
                method,
                query_params=params,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout if timeout is not None else self._timeout,
            )
        except ApiException as e:  # only for bad arguments, the status is checked below
            raise error_for_status(e.status or 0, what=f"{method} {path}") from e
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise KubeUnreachableError(f"{method} {path}: {e or type(e).__name__}") from e
        return cast(aiohttp.ClientResponse, response)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> RawObject:
        """One request; the JSON answer, or a devstack error for a non-2xx."""
        response = await self._send(method, path, query=query, body=body, content_type=content_type)
        async with response:
            try:
                raw = await response.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise KubeUnreachableError(f"{method} {path}: {e}") from e
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:
                data = {"message": raw[:200].decode("utf-8", "replace")}
            if not 200 <= response.status < 300:
                raise error_for_status(
                    response.status, what=f"{method} {path}", body=data, headers=response.headers
                )
        return cast(RawObject, data)

    async def get(self, resource: Resource, *, namespace: str | None, name: str) -> RawObject:
        return await self.request("GET", resource.path(namespace=namespace, name=name))

    async def get_or_none(
        self, resource: Resource, *, namespace: str | None, name: str
    ) -> RawObject | None:
        try:
            return await self.get(resource, namespace=namespace, name=name)
        except NotFoundError:
            return None

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        transform: Callable[[RawObject], RawObject] | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> tuple[list[RawObject], str]:
        """All matching objects and the list's ``resourceVersion``.

        Read in pages of ``page_size`` (``limit``/``continue``, as client-go
        lists), each item passed through ``transform`` as its page arrives:
        a large list is never held parsed in one piece (an informer keeps
        only its slim copies). The pages are one snapshot, served by the API
        server at the first page's ``resourceVersion``; a continuation that
        has expired meanwhile answers 410 (:class:`GoneError`: list again).
        """
        query: dict[str, str | int | bool] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if page_size > 0:
            query["limit"] = page_size
        out: list[RawObject] = []
        path = resource.path(namespace=namespace)
        while True:
            data = await self.request("GET", path, query=query)
            items = cast(list[RawObject], data.get("items") or [])
            out.extend(items if transform is None else [transform(i) for i in items])
            meta = data.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or "")
            token = meta.get("continue")
            if not token or page_size <= 0:
                return out, rv
            query["continue"] = str(token)

    async def create(self, resource: Resource, obj: RawObject) -> RawObject:
        namespace = (obj.get("metadata") or {}).get("namespace")
        return await self.request("POST", resource.path(namespace=namespace), body=obj)

    async def replace(self, resource: Resource, obj: RawObject) -> RawObject:
        """PUT; a ``metadata.resourceVersion`` in ``obj`` makes it conditional."""
        meta = obj.get("metadata") or {}
        path = resource.path(namespace=meta.get("namespace"), name=meta["name"])
        return await self.request("PUT", path, body=obj)

    async def patch(
        self,
        resource: Resource,
        *,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: PatchType = "merge",
    ) -> RawObject:
        return await self.request(
            "PATCH",
            resource.path(namespace=namespace, name=name),
            body=patch,
            content_type=_PATCH_CONTENT_TYPES[patch_type],
        )

    async def delete(
        self,
        resource: Resource,
        *,
        namespace: str | None,
        name: str,
        uid: str | None = None,
        missing_ok: bool = True,
    ) -> None:
        """Delete; with ``uid``, only that incarnation of the object."""
        body: RawObject = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", resource.path(namespace=namespace, name=name), body=body)
        except NotFoundError:
            if not missing_ok:
                raise

    async def watch(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """One watch call: events until the server ends the stream.

        Raises :class:`GoneError` when the server says the
        ``resource_version`` is too old (as an HTTP status or as an ``ERROR``
        event), and the usual errors otherwise.
        """
        query: dict[str, str | int | bool] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        if resource_version:
            query["resourceVersion"] = resource_version
        if label_selector:
            query["labelSelector"] = label_selector
        path = resource.path(namespace=namespace)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=timeout_seconds + 30
        )
        response = await self._send("GET", path, query=query, timeout=timeout)
        async with response:
            if not 200 <= response.status < 300:
                try:
                    data = json.loads(await response.read())
                except (TimeoutError, ValueError, aiohttp.ClientError, OSError):
                    data = None
                raise error_for_status(
                    response.status, what=f"watch {path}", body=data, headers=response.headers
                )
            while True:
                try:
                    line = await response.content.readline()
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    raise KubeUnreachableError(f"watch {path}: {e or type(e).__name__}") from e
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as e:
                    raise KubeTemporaryError(f"watch {path}: a line is not JSON") from e
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise error_for_status(code, what=f"watch {path}", body=obj)
                if kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    yield WatchEvent(type=kind, object=obj)

    async def stream(
        self, path: str, *, query: Mapping[str, str | int | bool] | None = None
    ) -> AsyncIterator[bytes]:
        """A GET whose answer is read as it arrives, in chunks as the server
        sends them (a pod's log, ``follow=true``: until the server ends it or
        the caller stops reading). No read timeout: a quiet log is no fault.
        A non-2xx answer raises its devstack error before any chunk."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=None)
        response = await self._send("GET", path, query=query, timeout=timeout)
        async with response:
            if not 200 <= response.status < 300:
                try:
                    raw = await response.read()
                except (TimeoutError, aiohttp.ClientError, OSError):
                    raw = b""
                try:
                    data: Any = json.loads(raw) if raw else None
                except ValueError:
                    data = {"message": raw[:300].decode("utf-8", "replace").strip()}
                raise error_for_status(
                    response.status, what=f"GET {path}", body=data, headers=response.headers
                )
            while True:
                try:
                    chunk = await response.content.readany()
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    raise KubeUnreachableError(f"GET {path}: {e or type(e).__name__}") from e
                if not chunk:
                    return
                yield chunk

    async def close(self) -> None:
        await self._client.close()


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _kubeconfig_paths(value: str) -> list[str]:
    """The files of a kubeconfig list (``a:b``) that exist, ``~`` expanded."""
    paths = [os.path.expanduser(p) for p in value.split(os.pathsep) if p]
    return [p for p in paths if Path(p).is_file()]


def in_cluster() -> bool:
    """Whether this process runs in a pod with a service account."""
    return (
        bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        and (_SERVICE_ACCOUNT_DIR / "token").is_file()
    )


@dataclass(frozen=True, kw_only=True)
class KubeconfigSource:
    """Where the credentials come from: kubeconfig files (merged in order),
    or the pod's service account (``files`` empty)."""

    files: tuple[str, ...]
    origin: Literal["--kubeconfig", "KUBECONFIG", "~/.kube/config", "in-cluster"]


def kubeconfig_source(
    kubeconfig: str | None = None, *, env: Mapping[str, str] | None = None
) -> KubeconfigSource:
    """kubectl's (client-go's) order: an explicit ``kubeconfig``, else
    ``$KUBECONFIG`` (a ``:``-separated list; missing files are skipped),
    else ``~/.kube/config``; only when none of those gives a file, the pod's
    service account. A :class:`ConfigError` when there is nothing at all."""
    env = os.environ if env is None else env
    if kubeconfig:
        path = os.path.expanduser(kubeconfig)
        if not Path(path).is_file():
            raise ConfigError(f"--kubeconfig {kubeconfig}: no such file")
        return KubeconfigSource(files=(path,), origin="--kubeconfig")
    listed = env.get("KUBECONFIG", "")
    if listed:
        files = _kubeconfig_paths(listed)
        if files:
            return KubeconfigSource(files=tuple(files), origin="KUBECONFIG")
    else:
        files = _kubeconfig_paths("~/.kube/config")
        if files:
            return KubeconfigSource(files=tuple(files), origin="~/.kube/config")
    if in_cluster():
        return KubeconfigSource(files=(), origin="in-cluster")
    where = f"KUBECONFIG={listed}" if listed else "~/.kube/config"
    raise ConfigError(
        f"no kubeconfig at {where} (set --kubeconfig or KUBECONFIG, or run inside a cluster)"
    )


def _first_current_context(files: tuple[str, ...]) -> str | None:
    """client-go's merge rule for ``current-context``: the first file that
    sets it wins (kubernetes-asyncio's merger lets the last one win)."""
    for path in files:
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"kubeconfig {path}: {e}") from e
        if isinstance(doc, dict) and doc.get("current-context"):
            return str(doc["current-context"])
    return None


def proxy_for(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The proxy ``$HTTPS_PROXY``/``$HTTP_PROXY`` (and ``$NO_PROXY``) pick for
    ``url``, as kubectl reads them, or ``None``."""
    proxies = (
        urllib.request.getproxies_environment()
        if env is None
        else {
            k.lower().removesuffix("_proxy"): v
            for k, v in env.items()
            if k.lower().endswith("_proxy")
        }
    )
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    no_proxy = proxies.get("no", "")
    if host and no_proxy:
        for item in (p.strip().lower() for p in no_proxy.split(",")):
            if item == "*" or (
                item and (host == item.lstrip(".") or host.endswith("." + item.lstrip(".")))
            ):
                return None
    return proxies.get(parsed.scheme) or None


def _proxy_once(api_client: Any, configuration: Any) -> None:
    """Read the proxy settings once, at start-up.

    kubernetes-asyncio opens its aiohttp session with ``trust_env=True``, so
    aiohttp looks the proxy up in the environment, and parses ``~/.netrc``,
    on *every* request: a third of the agent's CPU at 40,000 writes
    (bench/agent_scale.py). The same answer, computed once, goes to the
    client's ``proxy`` setting instead."""
    rest = getattr(api_client, "rest_client", None)
    session = getattr(rest, "pool_manager", None)
    if rest is None or session is None or not hasattr(session, "_trust_env"):
        return  # another kubernetes-asyncio layout: keep its behaviour
    if not getattr(configuration, "proxy", None):
        proxy = proxy_for(str(configuration.host))
        if proxy:
            rest.proxy = proxy
    session._trust_env = False


@contextlib.asynccontextmanager
async def kube_client(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    user_agent: str | None = None,
    request_timeout: float = 30.0,
) -> AsyncIterator[KubeApi]:
    """A :class:`KubeApi` from the kubeconfig (``kubeconfig``, else
    ``$KUBECONFIG`` merged, else ``~/.kube/config``; ``context`` or the
    current context), or, when there is none, the pod's service account:
    the order kubectl uses (:func:`kubeconfig_source`)."""
    configuration = k8s_client.Configuration()
    source = kubeconfig_source(kubeconfig)
    try:
        if source.origin == "in-cluster":
            if context is not None:
                raise ConfigError(
                    f"--context {context}: no kubeconfig to find it in (inside a cluster "
                    "the agent uses its service account)"
                )
            InClusterConfigLoader(
                token_filename=str(_SERVICE_ACCOUNT_DIR / "token"),
                cert_filename=str(_SERVICE_ACCOUNT_DIR / "ca.crt"),
            ).load_and_set(configuration)
        else:
            # Maps (clusters, users, contexts) merge with the first file
            # winning, as in client-go; kubernetes-asyncio does that itself.
            await k8s_config.load_kube_config(
                config_file=os.pathsep.join(source.files),
                context=context or _first_current_context(source.files),
                client_configuration=configuration,
                persist_config=False,
            )
    except (ConfigException, yaml.YAMLError, OSError) as e:
        raise ConfigError(f"kubeconfig ({source.origin}): {e}") from e
    api_client = k8s_client.ApiClient(configuration)
    _proxy_once(api_client, configuration)
    if user_agent:
        api_client.user_agent = user_agent
    api = KubeApi(api_client, request_timeout=request_timeout)
    try:
        yield api
    finally:
        await api.close()


# --- provisioning outputs: ConfigMaps and Secrets -------------------------------


async def _apply_data_object(
    api: KubeApi,
    resource: Resource,
    *,
    namespace: str,
    name: str,
    fields: RawObject,
    labels: Mapping[str, str],
) -> None:
    obj: RawObject = {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        **fields,
    }
    for _ in range(5):
        current = await api.get_or_none(resource, namespace=namespace, name=name)
        if current is None:
            try:
                await api.create(resource, obj)
                return
            except ConflictError:
                continue
        meta = current.get("metadata") or {}
        merged_labels = {**(meta.get("labels") or {}), **labels}
        same = merged_labels == (meta.get("labels") or {}) and all(
            (current.get(k) or {}) == v for k, v in fields.items()
        )
        if same:
            return
        replacement = {
            **current,
            **fields,
            "metadata": {**meta, "labels": merged_labels},
        }
        try:
            await api.replace(resource, replacement)
            return
        except ConflictError:
            continue
    raise ConflictError(f"{resource.kind} {namespace}/{name} kept changing while we wrote it")


async def apply_config_map(
    api: KubeApi,
    *,
    namespace: str,
    name: str,
    data: dict[str, str],
    labels: dict[str, str],
) -> None:
    """Create or update ConfigMap ``namespace/name`` to hold exactly ``data``."""
    await _apply_data_object(
        api, CONFIG_MAPS, namespace=namespace, name=name, fields={"data": dict(data)}, labels=labels
    )


async def apply_secret(
    api: KubeApi,
    *,
    namespace: str,
    name: str,
    data: dict[str, str],
    labels: dict[str, str],
) -> None:
    """Create or update Opaque Secret ``namespace/name`` to hold exactly
    ``data`` (plain-text values; stored base64-encoded)."""
    encoded = {k: base64.b64encode(v.encode()).decode("ascii") for k, v in data.items()}
    await _apply_data_object(
        api,
        SECRETS,
        namespace=namespace,
        name=name,
        fields={"data": encoded, "type": "Opaque"},
        labels=labels,
    )


async def delete_config_map(api: KubeApi, *, namespace: str, name: str) -> None:
    """Delete ConfigMap ``namespace/name``; gone already is fine."""
    await api.delete(CONFIG_MAPS, namespace=namespace, name=name)


async def delete_secret(api: KubeApi, *, namespace: str, name: str) -> None:
    """Delete Secret ``namespace/name``; gone already is fine."""
    await api.delete(SECRETS, namespace=namespace, name=name)
