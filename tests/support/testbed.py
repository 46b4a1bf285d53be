"""The testbed: a real Kubernetes control plane on 127.0.0.1 (docs/testing.md).

etcd, kube-apiserver (RBAC and Node authorizers, ServiceAccount tokens, the
default admission plugins), kube-controller-manager (every default
controller, each with its own ServiceAccount's credentials, as a real cluster
runs them), kube-scheduler and kwok, which plays the kubelet of one or more
simulated nodes: scheduled Pods turn Running and Ready, Job pods complete (but
for those labelled ``LOCAL_RUN_LABEL``, which a test runs itself), and whose
log endpoint serves ``pods/log`` from files a test names (kwok's ``Logs``
CRD, tests/support/kwok_logs.py). The API server writes an audit log
(:meth:`Testbed.audit_events`).
Nothing runs a container: a Pod's image is never pulled or started.

The binaries come from ``scripts/testbed build`` (Go modules at pinned
versions, cached outside the checkout); ``scripts/testbed bin`` says where.
:func:`missing_binaries` tells a test what is not built, so the cluster tests
fail with one line saying how to build it rather than skip.

:class:`Testbed` starts it all in a temporary folder (certificates, keys,
kubeconfigs, logs, etcd's data), installs Traefik's CRDs from
``tests/data/traefik-crds`` and waits until every component is healthy. It
gives an admin kubeconfig, :meth:`Testbed.service_account_kubeconfig` (a
kubeconfig for any ServiceAccount, minted with the TokenRequest API) and
:meth:`Testbed.stop_apiserver` / :meth:`Testbed.start_apiserver`.
:class:`Kube` is a small synchronous client for the tests, over httpx.

Run it by hand with ``scripts/testbed up`` (this module's :func:`main`).

Does I/O: starts processes, writes files, talks HTTP to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.net import free_port, wait_until

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "testbed"
CRD_DIR = REPO / "tests" / "data" / "traefik-crds"
#: kwok's Logs and ClusterLogs CRDs (from the pinned kwok module): with them
#: installed and ``--enable-crds`` (``_kwok_argv``), kwok's kubelet server
#: answers the API server's ``pods/log`` from a file a test names
#: (tests/support/kwok_logs.py).
KWOK_CRD_DIR = REPO / "tests" / "data" / "kwok-crds"

#: What the testbed runs, by the name ``scripts/testbed bin`` gives each file.
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kwok-stages.yaml",
)

#: The simulated node(s) kwok manages.
NODE_NAMES = ("kwok-node-0",)

#: Pods carrying this label are left Running by kwok's simulated kubelet even
#: when a Job owns them (every other Job pod completes at once): a test runs
#: their command itself and reports how it ended through the Pod's status, as
#: a kubelet would (tests/support/helm.py's ``JobRunner``).
LOCAL_RUN_LABEL = "testbed.devstack.dev/run-locally"

#: The API server's audit policy: every request, at level Metadata (who,
#: which verb on which object, the authorizer's decision, the response code;
#: no bodies), logged once answered.
AUDIT_POLICY: Obj = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}

SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
BUILD_HINT = "run `scripts/testbed build` (Go and the Go module proxy; see docs/testing.md)"


class TestbedError(Exception):
    """The testbed could not be started or did not become healthy."""


# --- where the binaries are ---------------------------------------------------------


def binary_paths() -> dict[str, Path]:
    """``{name: path}`` of every file the testbed runs, as ``scripts/testbed bin``
    names them (the one home of the versions and the cache layout)."""
    out = subprocess.run(
        [str(SCRIPT), "bin"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    paths = {}
    for line in out.splitlines():
        name, _, path = line.partition(" ")
        paths[name] = Path(path)
    return paths


def missing_binaries(paths: dict[str, Path] | None = None) -> list[str]:
    """The testbed's files that are not built (empty: all there)."""
    paths = binary_paths() if paths is None else paths
    return [name for name in BINARIES if name not in paths or not paths[name].is_file()]


def missing_message(missing: list[str]) -> str:
    """One line for a person: what is missing and how to build it."""
    return f"the testbed is not built ({', '.join(missing)} missing): {BUILD_HINT}"


# --- certificates and keys ----------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Pki:
    """The files of the testbed's certificate authority (PEM)."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    front_proxy_cert: Path
    front_proxy_key: Path
    sa_key: Path
    sa_pub: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a serving certificate for 127.0.0.1 and ``localhost`` (also the
    in-cluster names of the ``kubernetes`` Service), an admin client
    certificate (group ``system:masters``) and the ServiceAccount token
    signing key pair. EC P-256: fast to make, accepted everywhere here."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("devstack-testbed-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    serving, serving_key = leaf(
        _name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ],
    )
    admin, admin_key = leaf(
        _name("devstack-testbed-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    # The aggregation layer's client (kube-apiserver's front proxy), so the
    # controllers and the scheduler find the request-header CA they look for.
    front_proxy, front_proxy_key = leaf(
        _name("front-proxy-client"), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())

    pki = Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        front_proxy_cert=directory / "front-proxy.crt",
        front_proxy_key=directory / "front-proxy.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    pki.ca_cert.write_bytes(_pem_cert(ca))
    pki.serving_cert.write_bytes(_pem_cert(serving))
    pki.serving_key.write_bytes(_pem_key(serving_key))
    pki.admin_cert.write_bytes(_pem_cert(admin))
    pki.admin_key.write_bytes(_pem_key(admin_key))
    pki.front_proxy_cert.write_bytes(_pem_cert(front_proxy))
    pki.front_proxy_key.write_bytes(_pem_key(front_proxy_key))
    pki.sa_key.write_bytes(_pem_key(sa_key))
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for key_file in (pki.serving_key, pki.admin_key, pki.front_proxy_key, pki.sa_key):
        key_file.chmod(0o600)
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig_text(
    server: str, ca_cert: Path, *, user: str, user_entry: dict[str, str], namespace: str = "default"
) -> str:
    """A self-contained kubeconfig (certificates inline) with one context."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testbed",
                    "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
                }
            ],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [
                {
                    "name": "testbed",
                    "context": {"cluster": "testbed", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "testbed",
        },
        sort_keys=False,
    )


def tls_context(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """Trust the testbed's CA; present ``cert`` (certificate, key) if given."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


# --- a small client for the tests ---------------------------------------------------


class KubeError(Exception):
    """The API server answered an error status."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        self.status = status
        self.body = body
        reason = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {reason}")

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", "")) if isinstance(self.body, dict) else ""


class Kube:
    """A synchronous client for the tests: raw paths plus a few object helpers
    (``apply`` finds an object's path through discovery). Every error status
    raises :class:`KubeError`."""

    def __init__(
        self,
        server: str,
        *,
        verify: Path,
        cert: tuple[Path, Path] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=server,
            verify=tls_context(verify, cert),
            headers=headers,
            timeout=timeout,
        )
        self._plurals: dict[tuple[str, str], tuple[str, bool]] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        content = None if body is None else json.dumps(body)
        r = self._http.request(
            method,
            path,
            content=content,
            params=params,
            headers={"Content-Type": content_type} if content is not None else None,
        )
        try:
            data: Any = r.json()
        except ValueError:
            data = r.text
        if r.status_code >= 400:
            raise KubeError(r.status_code, data, method, path)
        return data

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params or None)

    def maybe(self, path: str) -> Obj | None:
        """The object at ``path``, or None when it does not exist."""
        try:
            return dict(self.get(path))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path: str, body: Obj) -> Any:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, patch: Obj) -> Obj:
        """A JSON merge patch (``None`` removes a field)."""
        return dict(self.request("PATCH", path, patch, content_type="application/merge-patch+json"))

    def delete(self, path: str, **params: str) -> Any:
        return self.request("DELETE", path, params=params or None)

    def path(
        self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None
    ) -> str:
        """The REST path of a kind's collection, or of one object."""
        plural, namespaced = self._resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespaced:
            base += f"/namespaces/{namespace or 'default'}"
        base += f"/{plural}"
        return f"{base}/{name}" if name else base

    def object_path(self, obj: Obj) -> str:
        meta = obj.get("metadata") or {}
        return self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])

    def apply(self, obj: Obj, *, manager: str = "devstack-tests") -> Obj:
        """Server-side apply (create or update), forcing ownership of the fields."""
        data = self.request(
            "PATCH",
            self.object_path(obj),
            obj,
            params={"fieldManager": manager, "force": "true"},
            content_type="application/apply-patch+yaml",
        )
        return dict(data)

    def create(self, obj: Obj) -> Obj:
        meta = obj.get("metadata") or {}
        return dict(
            self.post(self.path(obj["apiVersion"], obj["kind"], meta.get("namespace")), obj)
        )

    def forget_discovery(self) -> None:
        """Look kinds up again (after a CRD is installed)."""
        self._plurals.clear()

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        key = (api_version, kind)
        if key not in self._plurals:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            for r in self.get(base).get("resources", []):
                if "/" not in r["name"]:
                    self._plurals[(api_version, r["kind"])] = (r["name"], r["namespaced"])
        if key not in self._plurals:
            raise KubeError(404, f"no resource of kind {kind} in {api_version}", "GET", api_version)
        return self._plurals[key]


# --- processes ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the process that started it
    dies, however it died (Linux ``PR_SET_PDEATHSIG``), so a killed test run
    leaves no control plane behind. (Not SIGTERM: kube-apiserver can spend
    minutes shutting down gracefully once etcd is gone.)"""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1


@dataclass
class Component:
    """One process of the testbed, its command line and its log."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in `scripts/testbed up` reaches us, not them
                preexec_fn=_die_with_parent,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, grace: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class Testbed:
    """A running control plane. Build it with :meth:`start` (or the
    :func:`running_testbed` context manager); :meth:`stop` ends every process."""

    __test__: ClassVar[bool] = False  # not a test class, whatever pytest thinks of its name

    workdir: Path
    binaries: dict[str, Path]
    pki: Pki
    apiserver_port: int
    etcd_port: int
    #: The other ports the processes listen on, by what listens.
    ports: dict[str, int]
    components: dict[str, Component] = field(default_factory=dict)
    #: Seconds from the first process started to every component healthy.
    startup_seconds: float = 0.0
    #: When each component turned healthy, in seconds from the start.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def audit_policy_file(self) -> Path:
        return self.workdir / "audit-policy.yaml"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON event per line (``AUDIT_POLICY``)."""
        return self.workdir / "logs" / "audit.log"

    @property
    def kwok_stages_file(self) -> Path:
        return self.workdir / "kwok-stages.yaml"

    def audit_offset(self) -> int:
        """Where the audit log ends now: pass it to :meth:`audit_events` to
        see only what comes after."""
        try:
            return self.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def audit_events(
        self,
        user: str,
        *,
        offset: int = 0,
        since: datetime.datetime | None = None,
    ) -> list[Obj]:
        """The audit events of requests by ``user`` (e.g.
        ``system:serviceaccount:<ns>:<sa>``), in the order the API server
        wrote them: those after byte ``offset`` of the log (see
        :meth:`audit_offset`) and, with ``since`` (aware), received at or
        after that time. A request appears once it has been answered (a
        watch when it starts, and again when it ends)."""
        try:
            with self.audit_log.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return []
        events = []
        for line in data.split(b"\n"):
            if not line.endswith(b"}") or user.encode() not in line:
                continue  # another's, a line still being written, or the cut at ``offset``
            event = json.loads(line)
            if (event.get("user") or {}).get("username") != user:
                continue
            if since is not None:
                received = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"])
                if received < since:
                    continue
            events.append(event)
        return events

    def admin(self) -> Kube:
        """A client with the admin's certificate (group ``system:masters``)."""
        return Kube(
            self.server, verify=self.pki.ca_cert, cert=(self.pki.admin_cert, self.pki.admin_key)
        )

    # --- start and stop -------------------------------------------------------------

    @classmethod
    def start(
        cls, workdir: Path, *, binaries: dict[str, Path] | None = None, timeout: float = 120.0
    ) -> Testbed:
        """Start everything and wait until it is healthy (:class:`TestbedError`
        with the failing component's last log lines if it is not)."""
        binaries = binary_paths() if binaries is None else binaries
        missing = missing_binaries(binaries)
        if missing:
            raise TestbedError(missing_message(missing))
        begin = time.monotonic()
        workdir.mkdir(parents=True, exist_ok=True)
        tb = cls(
            workdir=workdir,
            binaries=binaries,
            pki=make_pki(workdir / "pki"),
            apiserver_port=free_port(),
            etcd_port=free_port(),
            ports={
                name: free_port()
                for name in ("etcd-peer", "kube-controller-manager", "kube-scheduler", "kwok")
            },
        )
        try:
            tb._start(begin, timeout)
        except BaseException:
            tb.stop()
            raise
        tb.startup_seconds = time.monotonic() - begin
        return tb

    def _start(self, begin: float, timeout: float) -> None:
        deadline = begin + timeout
        admin = kubeconfig_text(
            self.server,
            self.pki.ca_cert,
            user="admin",
            user_entry={
                "client-certificate-data": _b64(self.pki.admin_cert),
                "client-key-data": _b64(self.pki.admin_key),
            },
        )
        self.admin_kubeconfig.write_text(admin)
        self.admin_kubeconfig.chmod(0o600)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.audit_policy_file.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
        self.kwok_stages_file.write_text(kwok_stages(self.binaries["kwok-stages.yaml"]))

        self._add("etcd", self._etcd_argv())
        self.components["etcd"].start()
        self._wait("etcd", self._etcd_healthy, deadline)
        self.timings["etcd"] = time.monotonic() - begin

        self._add("kube-apiserver", self._apiserver_argv())
        self.components["kube-apiserver"].start()
        self._wait("kube-apiserver", self.apiserver_ready, deadline)
        self.timings["kube-apiserver"] = time.monotonic() - begin

        kube = self.admin()
        try:
            # Traefik's CRDs before the controller manager: its garbage
            # collector reads discovery when it starts and then only every
            # 30 s, so resources it finds at start it follows from the first.
            install_crds(kube, CRD_DIR)
            self._wait("kube-apiserver", lambda: crds_established(kube, CRD_DIR), deadline)
            # kwok's Logs/ClusterLogs, before kwok (which watches them) starts
            install_crds(kube, KWOK_CRD_DIR)
            self._wait("kube-apiserver", lambda: crds_established(kube, KWOK_CRD_DIR), deadline)
            self.timings["crds"] = time.monotonic() - begin
            for name, argv in (
                ("kube-controller-manager", self._controller_manager_argv()),
                ("kube-scheduler", self._scheduler_argv()),
                ("kwok", self._kwok_argv()),
            ):
                self._add(name, argv)
                self.components[name].start()
            for node in NODE_NAMES:
                kube.apply(node_manifest(node))
            self._wait("kube-controller-manager", self._controller_manager_healthy, deadline)
            self.timings["kube-controller-manager"] = time.monotonic() - begin
            self._wait("kube-scheduler", self._scheduler_healthy, deadline)
            self.timings["kube-scheduler"] = time.monotonic() - begin
            self._wait("kwok", lambda: nodes_ready(kube, NODE_NAMES), deadline)
            self.timings["kwok"] = time.monotonic() - begin
            # Pods can be created once the namespace's ServiceAccount exists
            # (the ServiceAccount admission plugin wants it).
            self._wait(
                "kube-controller-manager",
                lambda: kube.maybe("/api/v1/namespaces/default/serviceaccounts/default"),
                deadline,
            )
        finally:
            kube.close()

    def _add(self, name: str, argv: list[str]) -> None:
        self.components[name] = Component(name, argv, self.workdir / "logs" / f"{name}.log")

    def _wait(self, name: str, healthy: Callable[[], Any], deadline: float) -> None:
        component = self.components[name]
        while True:
            if not component.running():
                raise TestbedError(f"{name} exited ({component.log}):\n{component.tail()}")
            with contextlib.suppress(httpx.HTTPError, KubeError, OSError):
                if healthy():
                    return
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"{name} not healthy in time ({component.log}):\n{component.tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every process, the API server's clients first, etcd last."""
        for name in ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            if name in self.components:
                self.components[name].stop()

    def stop_apiserver(self, *, grace: float = 3.0) -> None:
        """Stop kube-apiserver: SIGTERM, as a rolling restart does, then
        SIGKILL after ``grace`` seconds (with clients watching, it stops
        listening at once but can take its time to exit). The rest keeps
        running and retrying."""
        self.components["kube-apiserver"].stop(grace=grace)

    def start_apiserver(self, *, timeout: float = 60.0) -> None:
        """Start kube-apiserver again on the same port, with the same etcd;
        returns once it is ready."""
        component = self.components["kube-apiserver"]
        if component.running():
            return
        component.start()
        self._wait("kube-apiserver", self.apiserver_ready, time.monotonic() + timeout)

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    # --- health ---------------------------------------------------------------------

    def _etcd_healthy(self) -> bool:
        r = httpx.get(f"{self.etcd_url}/health", timeout=2)
        return r.status_code == 200 and r.json().get("health") == "true"

    def apiserver_ready(self) -> bool:
        """``/readyz`` and ``/livez`` both answer ok."""
        with httpx.Client(
            base_url=self.server,
            verify=tls_context(self.pki.ca_cert, (self.pki.admin_cert, self.pki.admin_key)),
            timeout=5,
        ) as c:
            return all(c.get(p).status_code == 200 for p in ("/readyz", "/livez"))

    def apiserver_ready_quietly(self) -> bool:
        """:meth:`apiserver_ready`, False when it cannot be reached at all."""
        try:
            return self.apiserver_ready()
        except httpx.HTTPError:
            return False

    def _local_healthz(self, port: int) -> bool:
        # The controller manager's and the scheduler's own self-signed serving
        # certificates, on 127.0.0.1: nothing to verify them against.
        r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2)
        return r.status_code == 200

    def _controller_manager_healthy(self) -> bool:
        return self._local_healthz(self.ports["kube-controller-manager"])

    def _scheduler_healthy(self) -> bool:
        return self._local_healthz(self.ports["kube-scheduler"])

    # --- tokens ---------------------------------------------------------------------

    def service_account_token(self, namespace: str, name: str, *, seconds: int = 3600) -> str:
        """A token for the ServiceAccount, from the TokenRequest API (what the
        kubelet mounts into a pod)."""
        with contextlib.closing(self.admin()) as kube:
            answer = kube.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"expirationSeconds": seconds},
                },
            )
        return str(answer["status"]["token"])

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        path: Path,
        *,
        seconds: int = 3600,
        server: str | None = None,
    ) -> Path:
        """Write a kubeconfig that authenticates as the ServiceAccount
        ``namespace/name`` (which must exist); returns ``path``. ``server``
        points it elsewhere than the API server itself (a proxy on
        127.0.0.1 in front of it)."""
        token = self.service_account_token(namespace, name, seconds=seconds)
        path.write_text(
            kubeconfig_text(
                server or self.server,
                self.pki.ca_cert,
                user=f"system:serviceaccount:{namespace}:{name}",
                user_entry={"token": token},
                namespace=namespace,
            )
        )
        path.chmod(0o600)
        return path

    def as_service_account(self, namespace: str, name: str) -> Kube:
        """A client that authenticates as the ServiceAccount."""
        return Kube(
            self.server, verify=self.pki.ca_cert, token=self.service_account_token(namespace, name)
        )

    # --- command lines --------------------------------------------------------------

    def _etcd_argv(self) -> list[str]:
        client, peer = self.etcd_url, f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            str(self.binaries["etcd"]),
            "--name=testbed",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=testbed={peer}",
            "--listen-metrics-urls=",
            # A throw-away store: no fsync (fast on a shared disk), a 2 GiB quota.
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        p = self.pki
        return [
            str(self.binaries["kube-apiserver"]),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The `kubernetes` Service's endpoints would be 127.0.0.1, which
            # Endpoints may not hold; no pod runs here to call it anyway.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            f"--requestheader-client-ca-file={p.ca_cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_cert}",
            f"--proxy-client-key-file={p.front_proxy_key}",
            f"--kubelet-client-certificate={p.admin_cert}",
            f"--kubelet-client-key={p.admin_key}",
            f"--kubelet-certificate-authority={p.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            "--authorization-mode=Node,RBAC",
            # NodeRestriction goes with the Node authorizer; the defaults stay on.
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            # every request, at level Metadata, one JSON line each, never rotated
            f"--audit-policy-file={self.audit_policy_file}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--v=1",
        ]

    def _client_kubeconfig(self) -> Path:
        return self.admin_kubeconfig

    def _controller_manager_argv(self) -> list[str]:
        p = self.pki
        return [
            str(self.binaries["kube-controller-manager"]),
            f"--kubeconfig={self._client_kubeconfig()}",
            f"--authentication-kubeconfig={self._client_kubeconfig()}",
            f"--authorization-kubeconfig={self._client_kubeconfig()}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['kube-controller-manager']}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            # One instance: no leader election, so stopping the API server for
            # longer than a lease does not make it exit.
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.sa_key}",
            f"--root-ca-file={p.ca_cert}",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_argv(self) -> list[str]:
        return [
            str(self.binaries["kube-scheduler"]),
            f"--kubeconfig={self._client_kubeconfig()}",
            f"--authentication-kubeconfig={self._client_kubeconfig()}",
            f"--authorization-kubeconfig={self._client_kubeconfig()}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['kube-scheduler']}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--leader-elect=false",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
            "--v=1",
        ]

    def _kwok_argv(self) -> list[str]:
        port = self.ports["kwok"]
        return [
            str(self.binaries["kwok"]),
            f"--kubeconfig={self._client_kubeconfig()}",
            f"--config={self.kwok_stages_file}",
            "--manage-all-nodes=true",
            "--node-ip=127.0.0.1",
            f"--node-port={port}",
            f"--server-address=127.0.0.1:{port}",
            f"--tls-cert-file={self.pki.serving_cert}",
            f"--tls-private-key-file={self.pki.serving_key}",
            "--node-lease-duration-seconds=40",
            # Pod logs: kwok reads Logs/ClusterLogs objects (KWOK_CRD_DIR) and
            # serves /containerLogs/... from the files they name; the API server
            # reaches it at the node's InternalIP (--node-ip) and kubelet port
            # (--node-port) with its --kubelet-* client certificate and CA.
            "--enable-crds=Logs,ClusterLogs",
        ]


# --- cluster objects ----------------------------------------------------------------


def kwok_stages(defaults: Path) -> str:
    """kwok's default Stages (``scripts/testbed`` copies them from the kwok
    module) with one rule of the testbed's: a Job's pod labelled
    ``LOCAL_RUN_LABEL`` is not completed (``pod-complete`` skips it), so it
    stays Running until a test reports how its command ended."""
    docs = [d for d in yaml.safe_load_all(defaults.read_text()) if d]
    (complete,) = [d for d in docs if d["metadata"]["name"] == "pod-complete"]
    complete["spec"]["selector"]["matchExpressions"].append(
        {"key": f'.metadata.labels["{LOCAL_RUN_LABEL}"]', "operator": "DoesNotExist"}
    )
    return yaml.safe_dump_all(docs, sort_keys=False)


def node_manifest(name: str) -> Obj:
    """A Node for kwok to manage (kwokctl's own node template, untainted, so
    any Pod may be scheduled on it)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


def condition(obj: Obj | None, kind: str) -> str | None:
    """The status (``"True"``, ``"False"``, ...) of ``obj``'s condition ``kind``."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


def nodes_ready(kube: Kube, names: tuple[str, ...]) -> bool:
    return all(condition(kube.maybe(f"/api/v1/nodes/{n}"), "Ready") == "True" for n in names)


def crd_documents(directory: Path) -> list[Obj]:
    docs: list[Obj] = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(
            d
            for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") == "CustomResourceDefinition"
        )
    return docs


def install_crds(kube: Kube, directory: Path, *, group: str | None = None) -> list[str]:
    """Apply the CRDs in ``directory`` (with their group rewritten to
    ``group``, if given); returns their names."""
    names = []
    for crd in crd_documents(directory):
        if group is not None:
            crd["spec"]["group"] = group
            crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
        kube.apply(crd)
        names.append(crd["metadata"]["name"])
    kube.forget_discovery()
    return names


def crds_established(kube: Kube, directory: Path, *, group: str | None = None) -> bool:
    for crd in crd_documents(directory):
        name = crd["metadata"]["name"]
        if group is not None:
            name = f"{crd['spec']['names']['plural']}.{group}"
        got = kube.maybe(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        if condition(got, "Established") != "True":
            return False
    return True


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60.0) -> Any:
    """:func:`tests.support.net.wait_until` with a timeout that suits a
    control plane on a busy 2-core machine."""
    return wait_until(predicate, timeout=timeout, interval=0.1)


def wait_condition(
    kube: Kube, path: str, kind: str, *, status: str = "True", timeout: float = 60.0
) -> Obj:
    """Wait until the object at ``path`` has condition ``kind`` at ``status``; return it."""

    def reached() -> Obj | None:
        obj = kube.maybe(path)
        return obj if condition(obj, kind) == status else None

    return dict(wait_for(reached, timeout=timeout))


@contextlib.contextmanager
def running_testbed(workdir: Path | None = None) -> Iterator[Testbed]:
    """A started :class:`Testbed`, stopped on the way out."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="testbed-")))
        tb = Testbed.start(workdir)
        stack.callback(tb.stop)
        yield tb


def main(argv: list[str] | None = None) -> int:
    """``scripts/testbed up``: start the testbed, print its admin kubeconfig's
    path, run until Ctrl-C (or SIGTERM)."""
    parser = argparse.ArgumentParser(prog="scripts/testbed up")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep its files here (default: a temporary folder, removed on exit)",
    )
    args = parser.parse_args(argv)
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with running_testbed(args.workdir) as tb:
            print(
                f"testbed: up in {tb.startup_seconds:.1f}s ("
                + ", ".join(f"{k} {v:.1f}s" for k, v in tb.timings.items())
                + ")",
                file=sys.stderr,
            )
            print(f"testbed: logs in {tb.workdir / 'logs'}; Ctrl-C stops it", file=sys.stderr)
            print(f"export KUBECONFIG={tb.admin_kubeconfig}", file=sys.stderr)
            print(tb.admin_kubeconfig, flush=True)
            while not stop:
                for c in tb.components.values():
                    if not c.running():
                        print(f"testbed: {c.name} exited:\n{c.tail()}", file=sys.stderr)
                        return 1
                time.sleep(0.5)
    except TestbedError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    return 0


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """The session's control plane, one for every test that asks for it.
    A testbed that is not built or does not start fails the test with one
    line; it never skips."""
    missing = missing_binaries()
    if missing:
        pytest.fail(missing_message(missing), pytrace=False)
    try:
        tb = Testbed.start(tmp_path_factory.mktemp("testbed"))
    except TestbedError as e:
        pytest.fail(f"the testbed did not start: {e}", pytrace=False)
    print(f"\ntestbed: up in {tb.startup_seconds:.1f}s", file=sys.stderr)
    try:
        yield tb
    finally:
        tb.stop()


if __name__ == "__main__":
    sys.exit(main())
