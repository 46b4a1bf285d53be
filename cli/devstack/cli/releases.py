"""What the cluster-side workflow commands (``up``, ``down``, ``status``,
``urls``, ``connect SERVICE``) share about releases in a cluster.

Pure:

- :func:`workload_docs` and :func:`progress`: which objects of a release's
  manifest have Pods (or run to completion), and how far each one is;
- :func:`sidecar_access`: where a copy's sidecar is reached (the sync host of
  the library chart's IngressRoute) and which Secret holds its token;
- :func:`one_line`: a Helm or Kubernetes error as one line.

The thin I/O shell: :func:`helm_config` (Helm's engine, helm-python-sdk, no
helm binary) for what changes the cluster; for what only reads it, the
Kubernetes API: :func:`deployed_releases` and :func:`release_manifest` from
Helm's release records (:func:`decode_release`), :func:`read_progress`,
:func:`read_token`.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import yaml

from devstack.agent.kube import SECRETS, KubeApi, NotFoundError, Resource, kube_client
from devstack.cli.project import Project
from devstack.core.errors import ConfigError, DevstackError, PermanentError

Obj = dict[str, Any]

DEPLOYMENTS = Resource(group="apps", version="v1", plural="deployments", kind="Deployment")
STATEFULSETS = Resource(group="apps", version="v1", plural="statefulsets", kind="StatefulSet")
DAEMONSETS = Resource(group="apps", version="v1", plural="daemonsets", kind="DaemonSet")
JOBS = Resource(group="batch", version="v1", plural="jobs", kind="Job")
WORKLOADS: Mapping[str, Resource] = {
    r.kind: r for r in (DEPLOYMENTS, STATEFULSETS, DAEMONSETS, JOBS)
}


class ReleaseError(PermanentError):
    """A release that failed to deploy, to become ready, or to go."""

    reason = "release-failed"


def one_line(error: BaseException, *, limit: int = 400) -> str:
    """``error``'s message with its whitespace collapsed, cut at ``limit``."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- a release's workloads and how ready they are (pure) ----------------------------


def manifest_docs(manifest: str) -> list[Obj]:
    """Every object of a release's rendered manifest."""
    try:
        return [d for d in yaml.safe_load_all(manifest) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        raise PermanentError(f"the release's manifest is not YAML: {one_line(e)}") from e


def workload_docs(docs: Iterable[Obj]) -> list[Obj]:
    """The objects whose Pods ``up`` waits for: Deployments, StatefulSets,
    DaemonSets (Ready) and Jobs (complete)."""
    return [d for d in docs if d.get("kind") in WORKLOADS and (d.get("metadata") or {}).get("name")]


@dataclass(frozen=True)
class Progress:
    """How far one workload is: ``ready`` of ``want`` Pods Ready (a Job: 0 or 1
    completions), ``done`` when it is all there, ``failed`` when it never will be."""

    kind: str
    name: str
    ready: int
    want: int
    done: bool
    failed: str | None = None


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return dict(c)
    return None


def progress(obj: Mapping[str, Any]) -> Progress:
    """How far a workload object, as the server returns it, is (pure)."""
    kind = str(obj.get("kind"))
    meta = obj.get("metadata") or {}
    name = str(meta.get("name"))
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    observed = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    if kind == "Job":
        complete = _condition(obj, "Complete")
        failed = _condition(obj, "Failed")
        if failed is not None and failed.get("status") == "True":
            why = failed.get("message") or failed.get("reason") or "failed"
            return Progress(kind, name, 0, 1, False, failed=str(why))
        done = complete is not None and complete.get("status") == "True"
        return Progress(kind, name, 1 if done else 0, 1, done)
    if kind == "DaemonSet":
        want = int(status.get("desiredNumberScheduled") or 0)
        ready = int(status.get("numberReady") or 0)
        updated = int(status.get("updatedNumberScheduled") or 0)
        return Progress(kind, name, ready, want, observed and ready == want and updated == want)
    want = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    if kind == "Deployment":
        progressing = _condition(obj, "Progressing")
        if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
            return Progress(
                kind, name, ready, want, False, failed=str(progressing.get("message") or "")
            )
    extra = int(status.get("replicas") or 0) - want  # old Pods still going away
    done = observed and ready >= want and updated >= want and extra <= 0
    return Progress(kind, name, min(ready, want), want, done)


def summary(items: Sequence[Progress]) -> str:
    """One phrase for a release's workloads: ``2/3 pods ready``, ``ready``."""
    if not items:
        return "ready (no workloads)"
    failed = [p for p in items if p.failed]
    if failed:
        p = failed[0]
        return f"failed: {p.kind} {p.name}: {p.failed}"
    if all(p.done for p in items):
        return "ready"
    pods = [p for p in items if p.kind != "Job"]
    jobs = [p for p in items if p.kind == "Job"]
    parts = []
    if pods:
        parts.append(f"{sum(p.ready for p in pods)}/{sum(p.want for p in pods)} pods ready")
    if jobs:
        parts.append(f"{sum(p.done for p in jobs)}/{len(jobs)} jobs complete")
    return "waiting: " + ", ".join(parts)


# --- where a copy's sidecar is (pure) --------------------------------------------------


@dataclass(frozen=True)
class SidecarAccess:
    """How ``connect``/``status`` reach a copy's sidecar: through the cluster's
    Traefik entry point, with ``host`` as the HTTP/2 authority."""

    host: str
    tls: bool
    secret: str
    key: str

    @property
    def default_address(self) -> str:
        """The sync host itself, on the entry point's usual port."""
        return f"{self.host}:{443 if self.tls else 80}"


_HOST = re.compile(r"Host\(`([^`]+)`\)")


def sidecar_access(docs: Iterable[Obj], *, release: str) -> SidecarAccess:
    """From a copy's manifest: the sync host of the library chart's IngressRoute
    (label ``devstack.dev/role: sync``) and the token Secret the pod mounts
    (volume ``devstack-token``)."""
    docs = list(docs)
    host: str | None = None
    tls = False
    for d in docs:
        labels = (d.get("metadata") or {}).get("labels") or {}
        if d.get("kind") == "IngressRoute" and labels.get("devstack.dev/role") == "sync":
            for route in (d.get("spec") or {}).get("routes") or ():
                found = _HOST.search(str(route.get("match") or ""))
                if found:
                    host = found.group(1)
                    tls = bool((d.get("spec") or {}).get("tls"))
                    break
    secret: str | None = None
    key = "token"
    for d in workload_docs(docs):
        template = (d.get("spec") or {}).get("template") or {}
        for volume in (template.get("spec") or {}).get("volumes") or ():
            if volume.get("name") == "devstack-token" and volume.get("secret"):
                secret = str(volume["secret"].get("secretName"))
                items = volume["secret"].get("items") or ()
                if items:
                    key = str(items[0].get("key") or key)
    if host is None or secret is None:
        missing = "sync route (devstack.route.enabled)" if host is None else "sidecar"
        raise ConfigError(
            f"release {release} has no devstack {missing}: is it a copy deployed by "
            "`devstack up`? (or give --to ADDR --token-file FILE)"
        )
    return SidecarAccess(host=host, tls=tls, secret=secret, key=key)


# --- the shell ----------------------------------------------------------------------------


def release_namespace(project: Project, namespace: str) -> str:
    """A release's namespace: its own, else the kube context's (or ``-n``)."""
    return namespace or project.kube.namespace


def helm() -> Any:
    """helm-python-sdk (Helm's Go engine), or one line saying how to get it."""
    try:
        import helm_python
    except ImportError as e:
        raise ConfigError(
            "deploying needs Helm's engine, the helm-python-sdk package: "
            "pip install 'devstack[deploy]' (no helm binary is needed)"
        ) from e
    return helm_python


def helm_config(project: Project, namespace: str) -> Any:
    """Helm's engine for ``namespace`` on the project's cluster (kubectl's
    kubeconfig and context)."""
    return helm().Config(
        kubeconfig_path=project.kube.kubeconfig,
        kube_context=project.kube.context,
        namespace=namespace,
    )


def helm_errors() -> tuple[type[BaseException], ...]:
    return (helm().HelmError,)


#: Helm's release records: Secrets (its default storage driver) labelled so.
HELM_RECORDS = "owner=helm"


def decode_release(secret: Mapping[str, Any]) -> Obj:
    """The release Helm recorded in one of its Secrets (pure): ``data.release``
    is base64 (Kubernetes') of base64 (Helm's) of gzipped JSON."""
    name = (secret.get("metadata") or {}).get("name")
    try:
        raw = base64.b64decode(base64.b64decode((secret.get("data") or {})["release"]))
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        decoded = json.loads(raw)
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise PermanentError(f"Helm's release record {name} cannot be read: {one_line(e)}") from e
    if not isinstance(decoded, dict):
        raise PermanentError(f"Helm's release record {name} is not a release")
    return decoded


def latest_records(secrets: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """release -> the Secret of its newest revision (pure)."""
    latest: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for s in secrets:
        labels = (s.get("metadata") or {}).get("labels") or {}
        try:
            version = int(labels.get("version") or 0)
        except ValueError:
            continue
        name = labels.get("name")
        if name and version >= latest.get(name, (-1, {}))[0]:
            latest[name] = (version, s)
    return {name: s for name, (_, s) in latest.items()}


async def helm_records(api: KubeApi, namespace: str) -> dict[str, Mapping[str, Any]]:
    """The newest Helm record of every release in ``namespace``.

    Read from the Kubernetes API, not through Helm's engine: the read-only
    commands then never load the Go library into a process that also speaks
    gRPC (with it loaded, gRPC's :authority stopped reaching Traefik)."""
    try:
        secrets, _ = await api.list(SECRETS, namespace=namespace, label_selector=HELM_RECORDS)
    except DevstackError as e:
        raise ReleaseError(
            f"cannot list the Helm releases in namespace {namespace}: {one_line(e)} "
            "(check --kubeconfig/--context)"
        ) from e
    return latest_records(secrets)


async def deployed_releases(api: KubeApi, namespaces: Iterable[str]) -> set[tuple[str, str]]:
    """``(namespace, release)`` of every Helm release, in any state, in ``namespaces``."""
    found: set[tuple[str, str]] = set()
    for ns in sorted(set(namespaces)):
        found.update((ns, name) for name in await helm_records(api, ns))
    return found


def cluster(project: Project, user_agent: str) -> AbstractAsyncContextManager[KubeApi]:
    """The project's cluster, through kubectl's kubeconfig and context."""
    return kube_client(project.kube.kubeconfig, project.kube.context, user_agent=user_agent)


def deployed_now(project: Project, namespaces: Iterable[str]) -> set[tuple[str, str]]:
    """:func:`deployed_releases`, for a caller outside an event loop."""

    async def read() -> set[tuple[str, str]]:
        async with cluster(project, "devstack") as api:
            return await deployed_releases(api, namespaces)

    return asyncio.run(read())


async def release_manifest(api: KubeApi, namespace: str, release: str) -> list[Obj]:
    """The objects of a release's newest revision, as Helm recorded them."""
    record = (await helm_records(api, namespace)).get(release)
    if record is None:
        raise ReleaseError(f"no release {release} in namespace {namespace}")
    return manifest_docs(str(decode_release(record).get("manifest") or ""))


async def read_progress(api: KubeApi, namespace: str, workloads: Sequence[Obj]) -> list[Progress]:
    """Each workload's progress, as the server has it now."""
    out = []
    for w in workloads:
        meta = w.get("metadata") or {}
        resource = WORKLOADS[str(w["kind"])]
        obj = await api.get_or_none(
            resource, namespace=str(meta.get("namespace") or namespace), name=str(meta["name"])
        )
        if obj is None:
            out.append(Progress(str(w["kind"]), str(meta["name"]), 0, 1, False))
        else:
            out.append(progress(obj))
    return out


async def read_token(api: KubeApi, namespace: str, access: SidecarAccess) -> str:
    """The sidecar's token, from the Secret its pod mounts."""
    try:
        secret = await api.get(SECRETS, namespace=namespace, name=access.secret)
    except NotFoundError as e:
        raise ConfigError(f"no token Secret {namespace}/{access.secret}") from e
    raw = (secret.get("data") or {}).get(access.key)
    if not raw:
        raise ConfigError(f"Secret {namespace}/{access.secret} has no key {access.key!r}")
    return base64.b64decode(raw).decode().strip()
