"""What a kubelet and an RBAC reviewer do, for the charts' tests on the
testbed's real API server (tests/support/testbed.py):

- :class:`JobRunner` plays the kubelet for the Job pods that carry
  ``LOCAL_RUN_LABEL`` (kwok's simulated kubelet leaves those Running): the
  real job controller made the pod and the real scheduler put it on the kwok
  node; the runner runs its container's command as a local process
  (``devstack provision ...``, the image's entrypoint being the `devstack`
  console script), with the environment and the mounted files resolved from
  the pod spec as the kubelet would (Secrets, ConfigMaps, emptyDirs, the
  projected ServiceAccount token, bound to the pod), then reports how it ended
  through the pod's status subresource (Succeeded, or Failed with the exit
  code), and the job controller takes it from there;
- :func:`role_rules` reads the Roles and ClusterRoles bound to one
  ServiceAccount, :func:`audit_requests` what that ServiceAccount called
  (from the API server's audit log), :func:`permits` whether a rule allows a
  request as Kubernetes RBAC decides it, and :func:`unused_grants` which
  granted (group, resource, verb, name) no request used.

Does I/O: runs processes, writes files, talks to the testbed's API server.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.testbed import LOCAL_RUN_LABEL, Kube, Testbed, kubeconfig_text, wait_for

Obj = dict[str, Any]

#: The image the charts run devstack from.
DEVSTACK_IMAGE = "ghcr.io/devstack/devstack:"


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


# --- RBAC ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One RBAC rule where it applies: ``namespace`` None is everywhere (a
    ClusterRole bound by a ClusterRoleBinding), else that namespace only."""

    namespace: str | None
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str] | None  # None: any name


@dataclass(frozen=True)
class Request:
    """One resource request, as the authorizer saw it (from an audit event)."""

    verb: str
    group: str
    resource: str  # with the subresource: "pods/status"
    namespace: str | None
    name: str | None
    code: int
    user_agent: str
    #: the authorizer's word: "allow" or "forbid" (audit annotation
    #: ``authorization.k8s.io/decision``)
    decision: str


def _rules(role: Obj, namespace: str | None) -> list[Rule]:
    return [
        Rule(
            namespace,
            frozenset(r.get("apiGroups") or ()),
            frozenset(r.get("resources") or ()),
            frozenset(r.get("verbs") or ()),
            frozenset(r["resourceNames"]) if r.get("resourceNames") else None,
        )
        for r in role.get("rules") or ()
    ]


def role_rules(objects: Iterable[Obj], namespace: str, service_account: str) -> list[Rule]:
    """The rules ``objects`` (Roles, ClusterRoles and their bindings: a
    rendered chart, or what is on the server) grant the ServiceAccount."""
    objects = list(objects)

    def find(kind: str, name: str, ns: str | None) -> Obj | None:
        for o in objects:
            meta = o["metadata"]
            if o["kind"] == kind and meta["name"] == name and meta.get("namespace") == ns:
                return o
        return None

    rules: list[Rule] = []
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == service_account
            and s.get("namespace", binding["metadata"].get("namespace")) == namespace
            for s in binding.get("subjects") or ()
        ):
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role = find(ref["kind"], ref["name"], scope if ref["kind"] == "Role" else None)
        assert role is not None, f"{binding['kind']} {binding['metadata']['name']}: no {ref}"
        rules += _rules(role, scope)
    return rules


def audit_requests(events: Iterable[Obj], *, user_agent: str = "") -> list[Request]:
    """The resource requests among audit events whose client's User-Agent
    starts with ``user_agent``, each once (a watch is logged when it starts
    and when it ends). A request for a non-resource URL fails: none of the
    clients checked here makes one."""
    seen: set[str] = set()
    out = []
    for e in events:
        if not e.get("userAgent", "").startswith(user_agent) or e["auditID"] in seen:
            continue
        seen.add(e["auditID"])
        ref = e.get("objectRef")
        assert ref is not None, f"a non-resource request: {e['verb']} {e['requestURI']}"
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        # a create's URL names no object, so RBAC sees none (the audit log
        # names the one made)
        name = None if e["verb"] == "create" else ref.get("name")
        out.append(
            Request(
                e["verb"],
                ref.get("apiGroup", ""),
                resource,
                ref.get("namespace"),
                name,
                int((e.get("responseStatus") or {}).get("code", 0)),
                e.get("userAgent", ""),
                (e.get("annotations") or {}).get("authorization.k8s.io/decision", ""),
            )
        )
    return out


def permits(rules: Iterable[Rule], request: Request) -> bool:
    """Kubernetes RBAC: some rule that applies where the request is names its
    group, resource and verb, and names no objects or names this one (a
    create has no name; nor has a list or watch without a name selector)."""
    return any(
        (r.namespace is None or r.namespace == request.namespace)
        and (request.group in r.groups or "*" in r.groups)
        and (request.resource in r.resources or "*" in r.resources)
        and (request.verb in r.verbs or "*" in r.verbs)
        and (r.names is None or request.name in r.names)
        for r in rules
    )


def unused_grants(rules: Iterable[Rule], requests: list[Request]) -> list[tuple[Any, ...]]:
    """Every (namespace, group, resource, verb, name) the rules grant that no
    request used: least privilege means this is empty."""
    unused = []
    for r in rules:
        names: list[str | None] = [*sorted(r.names)] if r.names else [None]
        for group, resource, verb, name in itertools.product(
            sorted(r.groups), sorted(r.resources), sorted(r.verbs), names
        ):
            if not any(
                (r.namespace is None or q.namespace == r.namespace)
                and (q.group, q.resource, q.verb) == (group, resource, verb)
                and (name is None or q.name == name)
                for q in requests
            ):
                unused.append((r.namespace, group, resource, verb, name))
    return unused


# --- the kubelet's part for hook Jobs -----------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class JobRun:
    """One pod the runner ran."""

    job: str
    pod: Obj
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    #: The rules bound to the pod's ServiceAccount while it ran.
    rules: list[Rule] = field(default_factory=list)
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    #: When the runner began to report the pod's end (just before the write).
    reported: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    @property
    def node(self) -> str:
        return str(self.pod["spec"].get("nodeName"))


class JobRunner:
    """Runs each Running pod labelled ``LOCAL_RUN_LABEL`` in ``namespace``
    once, in the background; :attr:`runs` in the order they ended."""

    def __init__(
        self, testbed: Testbed, workdir: Path, *, namespace: str, env: dict[str, str] | None = None
    ) -> None:
        self.testbed = testbed
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.env = env or {}
        self.runs: list[JobRun] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._error: BaseException | None = None
        self._kube: Kube = testbed.admin()

    def __enter__(self) -> JobRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self._kube.close()
        if self._error is not None:
            raise AssertionError("the job runner failed") from self._error

    def wait_runs(self, count: int, *, timeout: float = 120.0) -> list[JobRun]:
        """Wait until ``count`` pods have been run; the runs so far."""
        wait_for(lambda: len(self.runs) >= count or self._error is not None, timeout=timeout)
        if self._error is not None:
            raise AssertionError("the job runner failed") from self._error
        return list(self.runs)

    def _loop(self) -> None:
        seen: set[str] = set()
        pods = f"/api/v1/namespaces/{self.namespace}/pods"
        try:
            while not self._stop.is_set():
                for pod in self._kube.get(pods, labelSelector=LOCAL_RUN_LABEL)["items"]:
                    uid = pod["metadata"]["uid"]
                    # started by the simulated kubelet (kwok): bound and Running
                    running = (pod.get("status") or {}).get("phase") == "Running"
                    if uid not in seen and running and not pod["metadata"].get("deletionTimestamp"):
                        seen.add(uid)
                        self._run(pod)
                time.sleep(0.2)
        except BaseException as e:  # reported by __exit__ and wait_runs
            self._error = e

    # -- what the kubelet reads --------------------------------------------------------

    def _data(self, kind: str, name: str) -> dict[str, str]:
        if kind == "secret":
            data = self._kube.get(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
            return {k: base64.b64decode(v).decode() for k, v in (data.get("data") or {}).items()}
        cm = self._kube.get(f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
        return dict(cm.get("data") or {})

    def _token(self, pod: Obj, *, seconds: int = 3600, audience: str | None = None) -> str:
        """A ServiceAccount token bound to the pod (what the kubelet mounts):
        it stops working once the pod is gone."""
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName", "default")
        spec: Obj = {
            "expirationSeconds": max(seconds, 600),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if audience:
            spec["audiences"] = [audience]
        answer = self._kube.post(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(answer["status"]["token"])

    def _field(self, pod: Obj, path: str) -> str:
        values = {
            "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.name": pod["metadata"]["name"],
            "metadata.uid": pod["metadata"]["uid"],
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "spec.nodeName": pod["spec"].get("nodeName", ""),
        }
        assert path in values, f"fieldRef {path}: a field the runner cannot read"
        return str(values[path])

    @staticmethod
    def _write(folder: Path, files: dict[str, str], mode: int) -> None:
        for rel, text in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode & 0o777)

    def _keyed(self, kind: str, source: Obj) -> dict[str, str]:
        """A Secret's or ConfigMap's keys as files (``items`` picks and renames)."""
        name = source.get("secretName") or source["name"]
        try:
            data = self._data(kind, name)
        except Exception:
            if source.get("optional"):
                return {}
            raise
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        return {item["path"]: data[item["key"]] for item in items}

    def _volumes(self, pod: Obj, container: Obj, root: Path) -> dict[str, Path]:
        """mountPath -> local folder, filled as the kubelet would fill it."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or ()}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or ():
            volume = volumes[mount["name"]]
            local = root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                spec = volume["secret"]
                self._write(local, self._keyed("secret", spec), spec.get("defaultMode", 0o644))
            elif "configMap" in volume:
                spec = volume["configMap"]
                self._write(local, self._keyed("configmap", spec), spec.get("defaultMode", 0o644))
            elif "projected" in volume:
                spec = volume["projected"]
                for source in spec.get("sources") or ():
                    files: dict[str, str] = {}
                    if "serviceAccountToken" in source:
                        t = source["serviceAccountToken"]
                        files[t["path"]] = self._token(
                            pod,
                            seconds=t.get("expirationSeconds", 3600),
                            audience=t.get("audience"),
                        )
                    elif "configMap" in source:
                        files = self._keyed("configmap", source["configMap"])
                    elif "secret" in source:
                        files = self._keyed("secret", source["secret"])
                    elif "downwardAPI" in source:
                        files = {
                            item["path"]: self._field(pod, item["fieldRef"]["fieldPath"])
                            for item in source["downwardAPI"]["items"]
                        }
                    else:
                        raise AssertionError(f"projected source {source}: one the runner lacks")
                    self._write(local, files, spec.get("defaultMode", 0o644))
            elif "emptyDir" not in volume:
                raise AssertionError(f"volume {mount['name']}: a kind the runner cannot make")
            mounts[mount["mountPath"].rstrip("/")] = local
        return mounts

    @staticmethod
    def _local(value: str, mounts: dict[str, Path]) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + value[len(mount_path) :]
        return value

    def _environment(self, pod: Obj, container: Obj) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or ():
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self._data("secret", source["secretRef"]["name"])
            else:
                data = self._data("configmap", source["configMapRef"]["name"])
            env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or ():
            if "valueFrom" not in item:
                # the server drops an empty value ("value: ''" comes back as no
                # value at all); the kubelet sets the variable, empty
                env[item["name"]] = item.get("value", "")
                continue
            ref = item["valueFrom"]
            if "secretKeyRef" in ref:
                key = ref["secretKeyRef"]
                env[item["name"]] = self._data("secret", key["name"])[key["key"]]
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                env[item["name"]] = self._data("configmap", key["name"])[key["key"]]
            elif "fieldRef" in ref:
                env[item["name"]] = self._field(pod, ref["fieldRef"]["fieldPath"])
            else:
                raise AssertionError(f"env {item['name']}: a source the runner cannot read")
        return env

    def _bound_rules(self, pod: Obj) -> list[Rule]:
        sa = pod["spec"].get("serviceAccountName", "default")
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{self.namespace}"
        objects = []
        for kind, plural in (("RoleBinding", "rolebindings"), ("Role", "roles")):
            for o in self._kube.get(f"{rbac}/{plural}")["items"]:
                objects.append({**o, "kind": kind})
        return role_rules(objects, self.namespace, sa)

    # -- one pod -----------------------------------------------------------------------

    def _run(self, pod: Obj) -> None:
        meta = pod["metadata"]
        (job,) = [r["name"] for r in meta.get("ownerReferences") or () if r["kind"] == "Job"]
        (container,) = pod["spec"]["containers"]
        assert container["image"].startswith(DEVSTACK_IMAGE), container["image"]
        assert "command" not in container  # the image's entrypoint runs: `devstack`
        started = datetime.datetime.now(datetime.UTC)
        root = self.workdir / f"{meta['name']}-{meta['uid'][:8]}"
        mounts = self._volumes(pod, container, root)
        env = {k: self._local(v, mounts) for k, v in self._environment(pod, container).items()}
        args = [self._local(a, mounts) for a in container.get("args") or ()]
        rules = self._bound_rules(pod)
        # The pod's ServiceAccount, as in-cluster config would give it (the
        # in-cluster paths are fixed, so a kubeconfig carries the same token).
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(
            kubeconfig_text(
                self.testbed.server,
                self.testbed.pki.ca_cert,
                user=pod["spec"].get("serviceAccountName", "default"),
                user_entry={"token": self._token(pod)},
                namespace=self.namespace,
            )
        )
        proc = subprocess.run(
            [sys.executable, "-m", "devstack.cli.main", *args],
            env={
                "PATH": os.environ.get("PATH", ""),
                **self.env,
                **env,
                "KUBECONFIG": str(kubeconfig),
            },
            capture_output=True,
            text=True,
            timeout=300,
            cwd=root,
        )
        reported = datetime.datetime.now(datetime.UTC)
        self._report(pod, container, proc.returncode)
        self.runs.append(
            JobRun(
                job, pod, args, proc.returncode, proc.stdout, proc.stderr, rules, started, reported
            )
        )  # fmt: skip

    def _report(self, pod: Obj, container: Obj, code: int) -> None:
        """The container exited with ``code``: the pod's status, as the
        kubelet writes it (through the status subresource)."""
        now = _now()
        started = next(
            (
                s["state"]["running"].get("startedAt", now)
                for s in (pod.get("status") or {}).get("containerStatuses") or ()
                if "running" in (s.get("state") or {})
            ),
            now,
        )
        ok = code == 0
        done = {"status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
        status = {
            "phase": "Succeeded" if ok else "Failed",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                {"type": "Ready", **done},
                {"type": "ContainersReady", **done},
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if ok else "Error",
                            "startedAt": started,
                            "finishedAt": now,
                        }
                    },
                }
            ],
        }
        meta = pod["metadata"]
        self._kube.merge_patch(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
            {"status": status},
        )


def namespace_leftovers(kube: Kube, namespace: str) -> list[str]:
    """``kind/name`` of every object in ``namespace`` of every resource the
    server lists, except what every namespace has (its ``default``
    ServiceAccount and ``kube-root-ca.crt``) and Events (a record, not an
    object anyone made)."""
    defaults = {"ServiceAccount/default", "ConfigMap/kube-root-ca.crt"}
    bases = ["/api/v1"] + [
        f"/apis/{g['preferredVersion']['groupVersion']}" for g in kube.get("/apis")["groups"]
    ]
    left = []
    for base in bases:
        for r in kube.get(base)["resources"]:
            if (
                "/" in r["name"]
                or not r["namespaced"]
                or "list" not in r["verbs"]
                or r["name"] == "events"
            ):
                continue
            items = kube.get(f"{base}/namespaces/{namespace}/{r['name']}")["items"]
            left += [f"{r['kind']}/{o['metadata']['name']}" for o in items]
    return sorted(set(left) - defaults)


def manifest_objects(manifest: str) -> list[Obj]:
    """The objects of a release's rendered manifest."""
    return [d for d in yaml.safe_load_all(manifest) if d]
