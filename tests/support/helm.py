"""What a cluster does with the charts' objects, for tests against the Kubernetes
emulator (tests/support/kube.py), which stores objects but runs nothing:

- :class:`JobRunner` stands in for the Job controller and the kubelet: it runs each
  Job's container as a local process (`devstack provision ...`, the image's
  entrypoint being the `devstack` console script), with the Job's arguments and
  environment, its Secret, ConfigMap and emptyDir volumes written to a folder, and
  the emulator as its Kubernetes API; then it marks the Job Complete or Failed;
- :func:`rbac_rules` / :func:`permits` read Role rules and tell whether one request
  (group, resource, verb, name) is allowed, as Kubernetes RBAC decides it;
- :func:`api_group` names the API group of a recorded request's path.

Does I/O: runs processes, writes files.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.kube import EmulatorThread, LoggedRequest

Obj = dict[str, Any]

#: The image the charts run devstack from.
DEVSTACK_IMAGE = "ghcr.io/devstack/devstack:"


def api_group(path: str) -> str:
    """``/apis/<group>/...`` -> group; ``/api/v1/...`` -> "" (core)."""
    parts = path.strip("/").split("/")
    return parts[1] if parts[0] == "apis" else ""


@dataclass(frozen=True)
class Rule:
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str] | None  # None: any name


def rbac_rules(role: Obj) -> list[Rule]:
    return [
        Rule(
            frozenset(r.get("apiGroups") or ()),
            frozenset(r.get("resources") or ()),
            frozenset(r.get("verbs") or ()),
            frozenset(r["resourceNames"]) if r.get("resourceNames") else None,
        )
        for r in role.get("rules") or ()
    ]


def permits(rules: list[Rule], group: str, resource: str, verb: str, name: str | None) -> bool:
    """Kubernetes RBAC: some rule names the group, resource and verb, and either
    names no objects or names this one (a create, list or watch has no name)."""
    return any(
        (group in r.groups or "*" in r.groups)
        and (resource in r.resources or "*" in r.resources)
        and (verb in r.verbs or "*" in r.verbs)
        and (r.names is None or (name is not None and name in r.names))
        for r in rules
    )


def calls(log: list[LoggedRequest], user_agent: str) -> list[tuple[str, str, str, str | None]]:
    """(group, resource, verb, name) of every request a client made."""
    return [
        (api_group(r.path), r.plural or "", r.verb, r.name)
        for r in log
        if r.user_agent.startswith(user_agent)
    ]


@dataclass
class JobRun:
    name: str
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    #: The Role bound to the Job's service account while it ran.
    roles: list[Obj] = field(default_factory=list)
    #: How many requests the emulator had logged when the Job was marked done.
    log_index: int = 0


class JobRunner:
    """Runs every Job that appears in the emulator, once, in the background."""

    def __init__(self, kube: EmulatorThread, workdir: Path, *, env: dict[str, str]) -> None:
        self.kube = kube
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = kube.kubeconfig(workdir / "job-kubeconfig")
        self.env = env
        self.runs: list[JobRun] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> JobRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise AssertionError("the job runner failed") from self._error

    def _loop(self) -> None:
        em = self.kube.emulator
        jobs = em.resource("batch/v1", "jobs")
        seen: set[str] = set()
        try:
            while not self._stop.is_set():
                for job in em.objects(jobs):
                    uid = job["metadata"]["uid"]
                    if uid not in seen:
                        seen.add(uid)
                        self._run(job)
                time.sleep(0.05)
        except BaseException as e:  # reported by __exit__
            self._error = e

    # -- one Job -------------------------------------------------------------------

    def _get(self, api_version: str, plural: str, namespace: str, name: str) -> Obj:
        em = self.kube.emulator
        obj = em.get(em.resource(api_version, plural), namespace, name)
        assert obj is not None, f"{plural} {namespace}/{name} does not exist"
        return obj

    def _data(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        if kind == "secret":
            data = self._get("v1", "secrets", namespace, name).get("data") or {}
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return dict(self._get("v1", "configmaps", namespace, name).get("data") or {})

    def _volumes(self, pod: Obj, container: Obj, namespace: str, root: Path) -> dict[str, Path]:
        """mountPath -> local folder, filled as the kubelet would fill it."""
        volumes = {v["name"]: v for v in pod.get("volumes") or ()}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or ():
            volume = volumes[mount["name"]]
            local = root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            source = None
            if "secret" in volume:
                source = ("secret", volume["secret"]["secretName"], volume["secret"])
            elif "configMap" in volume:
                source = ("configmap", volume["configMap"]["name"], volume["configMap"])
            elif "emptyDir" not in volume:
                raise AssertionError(f"volume {mount['name']}: a kind the runner cannot make")
            if source is not None:
                kind, name, spec = source
                data = self._data(kind, namespace, name)
                items = spec.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    path = local / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(data[item["key"]])
                    path.chmod(spec.get("defaultMode", 0o644) & 0o777)
            mounts[mount["mountPath"].rstrip("/")] = local
        return mounts

    @staticmethod
    def _local(value: str, mounts: dict[str, Path]) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + value[len(mount_path) :]
        return value

    def _environment(self, container: Obj, namespace: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or ():
            if "secretRef" in source:
                env.update(self._data("secret", namespace, source["secretRef"]["name"]))
            else:
                env.update(self._data("configmap", namespace, source["configMapRef"]["name"]))
        for item in container.get("env") or ():
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]
            if "secretKeyRef" in ref:
                env[item["name"]] = self._data("secret", namespace, ref["secretKeyRef"]["name"])[
                    ref["secretKeyRef"]["key"]
                ]
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                env[item["name"]] = self._data("configmap", namespace, key["name"])[key["key"]]
            elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[item["name"]] = namespace
            else:
                raise AssertionError(f"env {item['name']}: a source the runner cannot read")
        return env

    def _roles(self, namespace: str, service_account: str) -> list[Obj]:
        em = self.kube.emulator
        bindings = em.objects(em.resource("rbac.authorization.k8s.io/v1", "rolebindings"))
        roles = []
        for b in bindings:
            if b["metadata"]["namespace"] != namespace:
                continue
            if not any(
                s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                for s in b.get("subjects") or ()
            ):
                continue
            role = b["roleRef"]["name"]
            roles.append(self._get("rbac.authorization.k8s.io/v1", "roles", namespace, role))
        return roles

    def _run(self, job: Obj) -> None:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].startswith(DEVSTACK_IMAGE), container["image"]
        assert "command" not in container  # the image's entrypoint runs: `devstack`
        root = self.workdir / f"{name}-{meta['uid'][:8]}"
        mounts = self._volumes(pod, container, namespace, root)
        env = {
            k: self._local(v, mounts) for k, v in self._environment(container, namespace).items()
        }
        args = [self._local(a, mounts) for a in container.get("args") or ()]
        roles = self._roles(namespace, pod.get("serviceAccountName", "default"))
        proc = subprocess.run(
            [sys.executable, "-m", "devstack.cli.main", *args],
            env={
                "PATH": os.environ.get("PATH", ""),
                **self.env,
                **env,
                # the service account's stand-in
                "KUBECONFIG": str(self.kubeconfig),
            },
            capture_output=True,
            text=True,
            timeout=300,
            cwd=root,
        )
        ok = proc.returncode == 0
        condition = {"type": "Complete" if ok else "Failed", "status": "True"}
        em = self.kube.emulator
        self.runs.append(
            JobRun(name, args, proc.returncode, proc.stdout, proc.stderr, roles, len(em.log))
        )
        em.patch(
            em.resource("batch/v1", "jobs"),
            namespace,
            name,
            {"status": {("succeeded" if ok else "failed"): 1, "conditions": [condition]}},
            status_only=True,
        )
