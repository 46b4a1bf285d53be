"""`devstack doctor` (devstack.cli.doctor) without a cluster.

- the pure checks, as tables: each line it prints, ok and failing, from the
  facts the shell gathers; what is skipped when a check before it fails; the
  report in ASCII and for a terminal;
- the command on broken setups that need no cluster, one case per line it
  prints: no kubeconfig file, a context that does not exist, a server on a
  closed 127.0.0.1 port, TLS to something that is not a TLS server (moto), a
  broken Helmfile (its file:line), an AWS endpoint that does not answer and
  a moto server that does, an agent URL nothing listens on; in local mode, a
  local stack (real processes: Traefik, a real sidecar) all running, with one
  stopped, and with a sidecar that speaks another protocol version.

The cluster's side (the API server's answers, 401/403, the CRDs, the agent)
runs on the testbed: tests/cluster/test_doctor.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.cli import doctor, localstack
from devstack.cli import doctor_checks as dc
from devstack.cli.doctor_checks import (
    AgentFacts,
    Answer,
    AwsFacts,
    Check,
    Endpoint,
    Facts,
    HelmfileFacts,
    KubeconfigFacts,
    LocalFacts,
    ProcessFacts,
    ServerFacts,
    SidecarVersion,
    TraefikFacts,
    VersionFacts,
)
from devstack.cli.main import main
from devstack.core.helmfile import parse
from devstack.core.protocol import PROTOCOL_VERSION
from tests.support.aws import moto_endpoint  # noqa: F401  (the fixture)
from tests.support.net import free_port, wait_until
from tests.support.protocol import speaking_protocol
from tests.support.sync import Sidecar
from tests.support.traefik_file import FileTraefik

REPO = Path(__file__).resolve().parents[2]
PLAIN_CHART = REPO / "tests" / "data" / "workflow" / "charts" / "plain"
PROTO = PROTOCOL_VERSION

# --- the pure checks ------------------------------------------------------------------------


def kubeconfig_text(
    *,
    current: str | None = "dev",
    contexts: dict[str, str] | None = None,
    clusters: dict[str, str | None] | None = None,
) -> str:
    """A kubeconfig: contexts name -> cluster; clusters name -> server."""
    contexts = {"dev": "dev"} if contexts is None else contexts
    clusters = {"dev": "https://127.0.0.1:6443"} if clusters is None else clusters
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": n, "cluster": {"server": s} if s else {}} for n, s in clusters.items()
        ],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [
            {"name": n, "context": {"cluster": c, "user": "me", "namespace": "shop"}}
            for n, c in contexts.items()
        ],
    }
    if current:
        doc["current-context"] = current
    return yaml.safe_dump(doc)


HOME = "/home/me"
KCFG = "/home/me/.kube/config"


@pytest.mark.parametrize(
    ("texts", "flags", "status", "detail"),
    [
        ({KCFG: kubeconfig_text()}, {}, "ok", "~/.kube/config, context dev, namespace shop"),
        ({KCFG: kubeconfig_text()}, {"namespace": "other"}, "ok", "namespace other"),
        ({KCFG: None}, {}, "fail", "no kubeconfig at ~/.kube/config"),
        ({KCFG: "a: [b\n"}, {}, "fail", "kubeconfig /home/me/.kube/config: not valid YAML"),
        (
            {"/x.yaml": None},
            {"kubeconfig": "/x.yaml"},
            "fail",
            "--kubeconfig /x.yaml: no such file",
        ),
        (
            {KCFG: kubeconfig_text(current=None)},
            {},
            "fail",
            "~/.kube/config sets no current-context (contexts: dev)",
        ),
        (
            {KCFG: kubeconfig_text()},
            {"context": "nope"},
            "fail",
            "--context nope: no such context in ~/.kube/config (has: dev)",
        ),
        (
            {KCFG: kubeconfig_text(current="gone")},
            {},
            "fail",
            "current-context gone: no such context in ~/.kube/config (has: dev)",
        ),
        (
            {KCFG: kubeconfig_text(contexts={"dev": "elsewhere"})},
            {},
            "fail",
            "context dev names cluster elsewhere, which ~/.kube/config does not define",
        ),
        (
            {KCFG: kubeconfig_text(clusters={"dev": None})},
            {},
            "fail",
            "cluster dev of context dev has no server URL",
        ),
    ],
)
def test_kubeconfig_line(
    texts: dict[str, str | None], flags: dict[str, str], status: str, detail: str
) -> None:
    facts = dc.kubeconfig_facts(
        kubeconfig=flags.get("kubeconfig"),
        context=flags.get("context"),
        namespace=flags.get("namespace"),
        environ={},
        home=HOME,
        texts=texts,
    )
    got = dc.check_kubeconfig(facts)
    assert (got.name, got.status) == ("kubeconfig", status)
    assert detail in got.detail
    assert bool(got.fix) == (status == "fail")


@pytest.fixture(autouse=True)
def _home_is_home_me(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths under the home folder show as ``~``: here it is /home/me."""
    monkeypatch.setenv("HOME", HOME)


def test_kubeconfig_files_merge_first_wins() -> None:
    """KUBECONFIG=a:b, as kubectl: the first file's current-context and
    entries win; a context only the second defines is found there."""
    first = kubeconfig_text(current="dev")
    second = kubeconfig_text(
        current="other", contexts={"dev": "x", "other": "o"}, clusters={"o": "https://o"}
    )
    facts = dc.kubeconfig_facts(
        kubeconfig=None,
        context="other",
        namespace=None,
        environ={"KUBECONFIG": "/a:/b"},
        home=HOME,
        texts={"/a": first, "/b": second},
    )
    assert (facts.context, facts.cluster, facts.server) == ("other", "o", "https://o")
    assert dc.check_kubeconfig(facts).status == "ok"
    facts = dc.kubeconfig_facts(
        kubeconfig=None,
        context=None,
        namespace=None,
        environ={"KUBECONFIG": "/a:/b"},
        home=HOME,
        texts={"/a": first, "/b": second},
    )
    assert (facts.context, facts.server) == ("dev", "https://127.0.0.1:6443")


S = "https://127.0.0.1:6443"


@pytest.mark.parametrize(
    ("facts", "status", "detail", "fix"),
    [
        (
            ServerFacts(S, Answer(200, {"gitVersion": "v1.37.2"})),
            "ok",
            f"{S} answers (Kubernetes v1.37.2)",
            "",
        ),
        # 401 and 403 are answers: the server is there (the credentials line says the rest)
        (ServerFacts(S, Answer(401, error="Unauthorized")), "ok", f"{S} answers", ""),
        (ServerFacts(S, Answer(403, error="forbidden")), "ok", f"{S} answers", ""),
        (
            ServerFacts(S, Answer(error="connection refused", kind="refused")),
            "fail",
            f"{S}: connection refused",
            "start the cluster",
        ),
        (
            ServerFacts(S, Answer(error="no answer in time", kind="timeout")),
            "fail",
            f"{S}: no answer in time",
            "VPN",
        ),
        (
            ServerFacts(S, Answer(error="unknown host", kind="dns")),
            "fail",
            f"{S}: unknown host",
            "start the cluster",
        ),
        (
            ServerFacts(S, Answer(error="the server's certificate is not trusted (x)",
                                  kind="tls-cert")),
            "fail",
            "certificate is not trusted",
            "fetch the kubeconfig again",
        ),
        (
            ServerFacts(S, Answer(error="the TLS handshake failed (WRONG_VERSION_NUMBER)",
                                  kind="tls")),
            "fail",
            "the TLS handshake failed (WRONG_VERSION_NUMBER)",
            "plain HTTP",
        ),
        (
            ServerFacts(S, Answer(), config_error="exec plugin aws not found"),
            "fail",
            "cannot use the context's credentials: exec plugin aws not found",
            "exec plugin",
        ),
        (
            ServerFacts(S, Answer(503, error="etcd is down")),
            "fail",
            f"{S} answered 503: etcd is down",
            "not healthy",
        ),
    ],
)  # fmt: skip
def test_cluster_line(facts: ServerFacts, status: str, detail: str, fix: str) -> None:
    got = dc.check_cluster(facts)
    assert (got.name, got.status) == ("cluster", status)
    assert detail in got.detail
    assert fix in got.fix


@pytest.mark.parametrize(
    ("server", "access", "status", "detail", "fix"),
    [
        (
            Answer(200),
            dc.AccessFacts("shop", "alice", Answer(200, {"items": []})),
            "ok",
            "accepted as alice; may read Helm's releases in namespace shop",
            "",
        ),
        (
            Answer(401, error="Unauthorized"),
            dc.AccessFacts("shop", "", Answer(401)),
            "fail",
            "refused by the API server (401 Unauthorized)",
            "log in again",
        ),
        (
            Answer(200),
            dc.AccessFacts("shop", "system:serviceaccount:x:y", Answer(403, error="no")),
            "fail",
            "accepted as system:serviceaccount:x:y, but forbidden (403) to list Secrets in "
            "namespace shop",
            "ask the cluster's admin for a Role in namespace shop",
        ),
        (
            Answer(200),
            dc.AccessFacts("shop", "", Answer(500, error="boom")),
            "fail",
            "listing Helm's releases in namespace shop answered 500: boom",
            "try again",
        ),
    ],
)
def test_credentials_line(
    server: Answer, access: dc.AccessFacts, status: str, detail: str, fix: str
) -> None:
    got = dc.check_credentials(ServerFacts(S, server), access)
    assert (got.name, got.status) == ("credentials", status)
    assert detail in got.detail
    assert fix in got.fix


BOTH = frozenset({"ingressroutes", "middlewares", "tlsoptions"})


@pytest.mark.parametrize(
    ("facts", "status", "detail", "fix"),
    [
        (
            TraefikFacts({"traefik.io": BOTH}),
            "ok",
            "IngressRoute and Middleware CRDs in traefik.io/v1alpha1",
            "",
        ),
        (
            TraefikFacts({"traefik.containo.us": BOTH}),
            "ok",
            "in traefik.containo.us/v1alpha1 (Traefik before 2.10",
            "",
        ),
        (
            TraefikFacts({"traefik.io": frozenset({"ingressroutes"})}),
            "fail",
            "traefik.io/v1alpha1 has no Middleware CRD",
            "kubectl apply -f https://",
        ),
        (TraefikFacts({}), "fail", "Traefik's CRDs are not installed", "install Traefik"),
        (
            TraefikFacts({}, error="GET /apis/traefik.io/v1alpha1: 500"),
            "fail",
            "cannot read the API's discovery",
            "try again",
        ),
    ],
)
def test_traefik_line(facts: TraefikFacts, status: str, detail: str, fix: str) -> None:
    got = dc.check_traefik(facts)
    assert (got.name, got.status) == ("traefik", status)
    assert detail in got.detail
    assert fix in got.fix


HEALTHY = Answer(200, {"ok": True})
READY = Answer(200, {"ready": True})
ROUTES = Answer(200, {"ready": True, "leader": True, "services": [{}, {}], "problems": []})


def proxied(**facts: Any) -> AgentFacts:
    """The agent chart's Service devstack/devstack, through the API server."""
    return AgentFacts(via="devstack/devstack", proxied=True, looked_in="any namespace", **facts)


@pytest.mark.parametrize(
    ("facts", "status", "detail", "fix"),
    [
        (
            proxied(healthz=HEALTHY, readyz=READY, routes=ROUTES),
            "ok",
            "devstack/devstack (through the API server): healthy, ready, 2 services routed",
            "",
        ),
        (
            AgentFacts(via="http://127.0.0.1:8080", healthz=HEALTHY, readyz=READY, routes=ROUTES),
            "ok",
            "http://127.0.0.1:8080: healthy, ready, 2 services routed",
            "",
        ),
        (
            proxied(healthz=HEALTHY, readyz=Answer(503, {"ready": False}),
                       routes=ROUTES),
            "warn",
            "not ready, 2 services routed: its caches have not synced yet",
            "wait a few seconds",
        ),
        (
            proxied(healthz=HEALTHY, readyz=READY, routes=Answer(200, {
                "services": [], "problems": [{"message": "host shop.localtest.me is taken"}]})),
            "warn",
            "1 routing problem: host shop.localtest.me is taken",
            "problems",
        ),
        (
            AgentFacts(via="", looked_in="any namespace"),
            "fail",
            "no agent Service in any namespace (labels app.kubernetes.io/part-of=devstack, "
            "app.kubernetes.io/component=agent)",
            "helm install devstack ./helm/devstack",
        ),
        (
            AgentFacts(via="", looked_in="namespace shop", lookup_error="403 forbidden"),
            "fail",
            "cannot look for its Service: 403 forbidden",
            "--agent-url",
        ),
        (
            proxied(healthz=Answer(503, error='no endpoints available for service "devstack"')),
            "fail",
            "devstack/devstack (through the API server): no agent pod is ready behind the Service",
            "kubectl -n devstack get pods -l app.kubernetes.io/component=agent",
        ),
        (
            proxied(healthz=Answer(503, error="error trying to reach service: dial tcp "
                                              "10.0.0.7:8080: i/o timeout")),
            "fail",
            "the API server could not reach it (error trying to reach service: dial tcp",
            "kubectl -n devstack port-forward svc/devstack 8080",
        ),
        (
            proxied(healthz=Answer(403, error="forbidden")),
            "fail",
            "forbidden to reach it through the API server (services/proxy)",
            "kubectl -n devstack port-forward svc/devstack 8080",
        ),
        (
            AgentFacts(via="http://127.0.0.1:1", healthz=Answer(error="connection refused",
                                                                kind="refused")),
            "fail",
            "http://127.0.0.1:1: connection refused",
            "check --agent-url",
        ),
        (
            proxied(healthz=Answer(503)),  # the agent's own 503: no message of the server's
            "fail",
            "/healthz says its watch loops stopped (503)",
            "kubectl -n devstack logs deploy/devstack",
        ),
        (
            AgentFacts(via="http://127.0.0.1:9", healthz=Answer(404, "nope")),
            "fail",
            "/healthz answered 404, not as the devstack agent",
            "check --agent-url",
        ),
    ],
)  # fmt: skip
def test_agent_line(facts: AgentFacts, status: str, detail: str, fix: str) -> None:
    got = dc.check_agent(facts)
    assert (got.name, got.status) == ("agent", status)
    assert detail in got.detail
    assert fix in got.fix


L = "http://127.0.0.1:4566"
STS_OK = Answer(
    200,
    "<GetCallerIdentityResponse><GetCallerIdentityResult><Account>123456789012</Account>"
    "</GetCallerIdentityResult></GetCallerIdentityResponse>",
)
LOCALSTACK = Answer(200, {"services": {"sqs": "running"}, "version": "4.4.0"})


@pytest.mark.parametrize(
    ("facts", "status", "detail", "fix"),
    [
        (AwsFacts((Endpoint(L, ("shop",), health=LOCALSTACK),)), "ok",
         f"{L} (shop): LocalStack 4.4.0 answers", ""),
        (AwsFacts((Endpoint(L, ("a", "b"), health=Answer(404, "x"), sts=STS_OK),)), "ok",
         f"{L} (a, b): answers as AWS (STS: account 123456789012)", ""),
        (AwsFacts((Endpoint(L, ("a",), health=Answer(404, "x"),
                            sts=Answer(403, "<ErrorResponse><Error><Code>InvalidClientTokenId"
                                            "</Code></Error></ErrorResponse>")),)),
         "ok", "answers as AWS (STS: InvalidClientTokenId)", ""),
        (AwsFacts((Endpoint(L, ("a",), health=Answer(404, "x"), sts=Answer(200, "<html>")),)),
         "fail", f"{L} (a): answers HTTP 200, but not as an AWS endpoint", "start it"),
        (AwsFacts((Endpoint(L, ("a",), health=Answer(error="connection refused",
                                                     kind="refused")),)),
         "fail", f"{L} (a): connection refused", "scripts/localstack start PORT"),
        (AwsFacts((Endpoint(L, (), health=Answer(error="connection refused", kind="refused")),),
                  local=True),
         "fail", f"{L}: connection refused", "`devstack down --local`, then `devstack up --local`"),
        (AwsFacts((Endpoint("http://localstack.localstack.svc.cluster.local:4566", ("a",),
                            proxied="localstack/localstack", health=LOCALSTACK),)),
         "ok", "LocalStack 4.4.0 answers", ""),
        (AwsFacts((Endpoint("http://ls.aws.svc:4566", ("a",), proxied="aws/ls",
                            health=Answer(503, error="503 no endpoints available for service")),)),
         "fail", "no pod is ready behind Service aws/ls", "run LocalStack in the cluster"),
        (AwsFacts((Endpoint("http://ls.aws.svc:4566", ("a",), proxied="aws/ls",
                            health=Answer(404, error='404 services "ls" not found')),)),
         "fail", "no Service aws/ls", "run LocalStack in the cluster"),
        (AwsFacts((Endpoint("http://ls.aws.svc:4566", ("a",), proxied="aws/ls",
                            health=Answer(200, {"other": 1})),)),
         "warn", "answers 200, but not as LocalStack", "check that it is LocalStack"),
        (AwsFacts((Endpoint("AWS itself", ("a",), skipped="not probed (real AWS)"),)),
         "skip", "AWS itself (a): not probed (real AWS)", ""),
        (AwsFacts((), none_why="no release declares devstack.aws"), "skip",
         "no release declares devstack.aws", ""),
    ],
)  # fmt: skip
def test_aws_line(facts: AwsFacts, status: str, detail: str, fix: str) -> None:
    got = dc.check_aws(facts)
    assert (got.name, got.status) == ("aws", status)
    assert detail in got.detail
    assert fix in got.fix


def agent_version(protocol: int, version: str = "0.1.0") -> Answer:
    return Answer(200, {"version": version, "protocol": protocol})


def versions(**facts: Any) -> VersionFacts:
    """This devstack: 0.1.0, protocol 1."""
    return VersionFacts(devstack="0.1.0", protocol=1, **facts)


@pytest.mark.parametrize(
    ("facts", "status", "detail", "fix"),
    [
        (versions(agent=agent_version(1), sidecars=(SidecarVersion("web--alice", 1),)),
         "ok", "devstack 0.1.0 speaks protocol 1; agent 0.1.0: protocol 1; "
         "sidecar web--alice: protocol 1", ""),
        (versions(agent=agent_version(1), sidecars_why="no copy of alice's is deployed"),
         "ok", "agent 0.1.0: protocol 1 (sidecars: no copy of alice's is deployed)", ""),
        (versions(agent=agent_version(2, "0.3.0")),
         "fail", "the agent (0.3.0) speaks protocol 2, but this devstack 0.1.0 speaks protocol 1",
         "pip install 'devstack==0.3.0'"),
        (versions(agent=agent_version(1), sidecars=(SidecarVersion("web--alice", 2),)),
         "fail", "the sidecar of web--alice speaks protocol 2, but this devstack 0.1.0",
         "deploy your copies again"),
        (versions(local=True, sidecars=(SidecarVersion("web", 2),)),
         "fail", "the sidecar of web speaks protocol 2", "restart the local stack"),
        (versions(agent=Answer(404, "404: Not Found")),
         "warn", "agent: does not report its version (it predates /version)",
         "upgrade the agent chart"),
        (versions(agent=agent_version(1),
                      sidecars=(SidecarVersion("web--alice", None, "cannot reach the sidecar"),)),
         "warn", "sidecar web--alice: cannot reach the sidecar", "--to HOST:PORT"),
        (versions(agent_why="not reached", sidecars_why="the cluster was not reached"),
         "skip", "nothing to compare with (agent: not reached; sidecars: the cluster was not "
         "reached)", ""),
        (versions(local=True, sidecars=(SidecarVersion("web", 1),)),
         "ok", "devstack 0.1.0 speaks protocol 1; sidecar web: protocol 1", ""),
    ],
)  # fmt: skip
def test_versions_line(facts: VersionFacts, status: str, detail: str, fix: str) -> None:
    got = dc.check_versions(facts)
    assert (got.name, got.status) == ("versions", status)
    assert detail in got.detail
    assert fix in got.fix


@pytest.mark.parametrize(
    ("facts", "status", "detail", "fix"),
    [
        (HelmfileFacts("/p/helmfile.yaml", releases=3), "ok",
         "/p/helmfile.yaml: 3 releases, environment default", ""),
        (HelmfileFacts("/p/helmfile.yaml", problems=("helmfile.yaml:3: releases[0].chart: bad",)),
         "fail", "helmfile.yaml:3: releases[0].chart: bad", "correct the Helmfile"),
        (HelmfileFacts("/p/helmfile.yaml", problems=("b.yaml:1: x", "a.yaml:10: y", "no line",
                                                      "a.yaml:9: z")),
         "fail", "a.yaml:9: z; a.yaml:10: y (and 2 more problems)", "devstack up --dry-run"),
        (HelmfileFacts("/p/helmfile.yaml.gotmpl", error="needs helmfile to render it"),
         "fail", "needs helmfile to render it", "correct the Helmfile"),
        (HelmfileFacts("", error="no helmfile.yaml in /p or above it"),
         "fail", "no helmfile.yaml in /p or above it", "devstack init"),
    ],
)  # fmt: skip
def test_helmfile_line(facts: HelmfileFacts, status: str, detail: str, fix: str) -> None:
    got = dc.check_helmfile(facts)
    assert (got.name, got.status) == ("helmfile", status)
    assert detail in got.detail
    assert fix in got.fix


RUNNING = LocalFacts(
    state_file="/p/.devstack/local.json",
    running=True,
    started_at="2026-01-01T00:00:00+00:00",
    processes=(ProcessFacts("traefik", "", True), ProcessFacts("baseline", "api", True)),
    router_url="http://127.0.0.1:8080",
    router=Answer(404, "404 page not found"),
    logs="/p/.devstack/local/logs",
    services=1,
)


@pytest.mark.parametrize(
    ("facts", "stack", "traefik"),
    [
        (RUNNING, ("ok", "2 processes run, 1 service, since 2026-01-01"),
         ("ok", "http://127.0.0.1:8080 answers")),
        (LocalFacts("/p/.devstack/local.json", running=False),
         ("fail", "none runs (no /p/.devstack/local.json)"),
         ("skip", "not checked: no local stack runs")),
        (LocalFacts("/p/.devstack/local.json", running=False, error="unreadable"),
         ("fail", "unreadable"), ("skip", "not checked")),
        (dataclasses.replace(RUNNING, processes=(ProcessFacts("traefik", "", False),
                                                 ProcessFacts("baseline", "api", True)),
                             router=Answer(error="connection refused", kind="refused")),
         ("fail", "stopped: traefik (1 of 2 processes run)"),
         ("fail", "http://127.0.0.1:8080: connection refused")),
    ],
)  # fmt: skip
def test_local_lines(facts: LocalFacts, stack: tuple[str, str], traefik: tuple[str, str]) -> None:
    got = dc.check_local_stack(facts)
    assert (got.status, stack[0]) == (stack[0], got.status)
    assert stack[1] in got.detail
    got = dc.check_local_traefik(facts)
    assert got.status == traefik[0]
    assert traefik[1] in got.detail


def cluster_facts(**over: Any) -> Facts:
    base: dict[str, Any] = {
        "helmfile": HelmfileFacts("/p/helmfile.yaml", releases=1),
        "kubeconfig": KubeconfigFacts(
            files=(KCFG,), found=(KCFG,), context="dev", contexts=("dev",), cluster="dev",
            cluster_defined=True, server=S,
        ),
        "server": ServerFacts(S, Answer(200, {"gitVersion": "v1.37.2"})),
        "access": dc.AccessFacts("default", "alice", Answer(200, {})),
        "traefik": TraefikFacts({"traefik.io": BOTH}),
        "agent": proxied(healthz=HEALTHY, readyz=READY, routes=ROUTES,
                            version=agent_version(PROTO)),
        "aws": AwsFacts((Endpoint(L, ("a",), health=LOCALSTACK),)),
        "versions": VersionFacts(devstack="0.1.0", protocol=PROTO, agent=agent_version(PROTO)),
    }  # fmt: skip
    base.update(over)
    return Facts(mode="cluster", **base)


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def test_all_green_and_the_order() -> None:
    checks = dc.diagnose(cluster_facts())
    assert [c.name for c in checks] == [
        "helmfile", "kubeconfig", "cluster", "credentials", "traefik", "agent", "aws", "versions"
    ]  # fmt: skip
    assert set(statuses(checks).values()) == {"ok"}
    assert dc.exit_code(checks) == 0


def test_what_a_failure_skips() -> None:
    """No usable context: the server, credentials, CRDs and agent are skipped,
    each saying why; the Helmfile, AWS and versions lines stand on their own."""
    bad = KubeconfigFacts(files=(KCFG,), found=())
    checks = dc.diagnose(cluster_facts(kubeconfig=bad, server=None, access=None,
                                           traefik=None, agent=None))  # fmt: skip
    got = {c.name: (c.status, c.detail) for c in checks}
    for name in ("cluster", "credentials", "traefik", "agent"):
        assert got[name] == ("skip", "not checked: no usable kubeconfig context"), name
    assert got["kubeconfig"][0] == "fail"
    assert got["helmfile"][0] == got["aws"][0] == "ok"
    assert dc.exit_code(checks) == 1
    # the API server down: the credentials and what needs them
    down = ServerFacts(S, Answer(error="connection refused", kind="refused"))
    checks = dc.diagnose(cluster_facts(server=down, access=None, traefik=None, agent=None))
    got = {c.name: (c.status, c.detail) for c in checks}
    assert got["cluster"][0] == "fail"
    for name in ("credentials", "traefik", "agent"):
        assert got[name] == ("skip", "not checked: the API server did not answer"), name
    # 403: the CRDs and the agent are not looked at
    forbidden = dc.AccessFacts("default", "bob", Answer(403, error="forbidden"))
    checks = dc.diagnose(cluster_facts(access=forbidden, traefik=None, agent=None))
    got = {c.name: (c.status, c.detail) for c in checks}
    assert got["credentials"][0] == "fail"
    refused = ("skip", "not checked: the credentials were not accepted")
    assert got["traefik"] == got["agent"] == refused
    # ... but an agent given by URL is asked anyway
    facts = cluster_facts(access=forbidden, traefik=None, agent_url="http://127.0.0.1:8080",
                          agent=AgentFacts(via="http://127.0.0.1:8080", healthz=HEALTHY,
                                           readyz=READY, routes=ROUTES))  # fmt: skip
    assert statuses(dc.diagnose(facts))["agent"] == "ok"
    # a broken Helmfile: AWS (read from it) is skipped
    broken = HelmfileFacts("/p/helmfile.yaml", problems=("helmfile.yaml:2: x",))
    got2 = {c.name: c for c in dc.diagnose(cluster_facts(helmfile=broken, aws=None))}
    assert (got2["aws"].status, got2["aws"].detail) == (
        "skip",
        "not checked: the Helmfile did not load",
    )


def test_the_report_in_ascii_and_on_a_terminal() -> None:
    checks = [
        Check("kubeconfig", "ok", "~/.kube/config, context kind-dev"),
        Check("cluster", "fail", "https://x: connection refused", "start the cluster"),
        Check("agent", "skip", "not checked: the API server did not answer"),
        Check("versions", "warn", "agent: ?", "upgrade the agent chart"),
    ]
    plain = dc.render(checks, fancy=False)
    assert plain.splitlines() == [
        "ok   kubeconfig  ~/.kube/config, context kind-dev",
        "FAIL cluster     https://x: connection refused -- fix: start the cluster",
        "skip agent       not checked: the API server did not answer",
        "warn versions    agent: ? -- fix: upgrade the agent chart",
        "1 check failed: fix the first, then run `devstack doctor` again",
    ]
    assert plain.isascii()
    fancy = dc.render(checks, fancy=True)
    assert "\x1b[32m✓\x1b[0m kubeconfig  ~/.kube/config, context kind-dev" in fancy
    assert (
        "\x1b[31m✗\x1b[0m cluster     https://x: connection refused — fix: start the cluster"
        in fancy
    )
    assert dc.render(checks[:1], fancy=False).splitlines()[-1] == "all good"


class Tty:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("tty", "env", "fancy"),
    [
        (True, {}, True),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"TERM": "dumb"}, False),
        (False, {}, False),
    ],
)
def test_marks_only_on_a_terminal_without_no_color(
    tty: bool, env: dict[str, str], fancy: bool
) -> None:
    assert dc.fancy_output(Tty(tty), env) is fancy


def test_aws_endpoints_of_the_helmfile(tmp_path: Path) -> None:
    (tmp_path / "charts").mkdir()
    shutil.copytree(PLAIN_CHART, tmp_path / "charts" / "plain")
    text = """\
releases:
  - name: own
    chart: ./charts/plain
    values:
      - devstack: {aws: {sqs: [{name: q}]}, provision: {endpoint: "http://127.0.0.1:4566"}}
  - name: same
    chart: ./charts/plain
    values:
      - devstack: {aws: {s3: [{name: bucket}]}, provision: {endpoint: "http://127.0.0.1:4566"}}
  - name: default
    chart: ./charts/plain
    values:
      - devstack: {aws: {sqs: [{name: q}]}}
  - name: disabled
    chart: ./charts/plain
    values:
      - devstack: {aws: {sqs: [{name: q}]}, provision: {enabled: false}}
  - name: nothing
    chart: ./charts/plain
  - name: from-chart
    chart: ./charts/plain
"""
    (tmp_path / "helmfile.yaml").write_text(text)
    from devstack.core.helmfile import OsFiles

    hf = parse(str(tmp_path / "helmfile.yaml"), OsFiles())
    chart_values = {"from-chart": {"aws": {"sqs": [{"name": "c"}]}}}
    assert dc.aws_endpoints(hf, chart_values) == [
        ("http://127.0.0.1:4566", ("own", "same")),
        (dc.DEFAULT_AWS_ENDPOINT, ("default", "from-chart")),
    ]


@pytest.mark.parametrize(
    ("url", "service"),
    [
        ("http://localstack.localstack.svc.cluster.local:4566", ("localstack", "localstack", 4566)),
        ("http://ls.aws.svc:4566/", ("aws", "ls", 4566)),
        ("https://ls.aws.svc", ("aws", "ls", 443)),
        ("http://127.0.0.1:4566", None),
        ("http://localstack.example.com", None),
    ],
)
def test_in_cluster_urls(url: str, service: tuple[str, str, int] | None) -> None:
    assert dc.in_cluster_service(url) == service


# --- the command on broken setups --------------------------------------------------------------


def write_project(root: Path, releases: str | None = None) -> Path:
    """A project: ``helmfile.yaml`` with ``releases`` (default: one plain
    release), and the small chart it uses. Returns the Helmfile's path."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PLAIN_CHART, root / "charts" / "plain")
    text = releases or "releases:\n  - name: db\n    chart: ./charts/plain\n"
    (root / "helmfile.yaml").write_text(text)
    return root / "helmfile.yaml"


def aws_release(endpoint: str) -> str:
    return f"""\
releases:
  - name: stock
    chart: ./charts/plain
    values:
      - devstack:
          aws: {{sqs: [{{name: jobs}}]}}
          provision: {{endpoint: "{endpoint}"}}
"""


def write_kubeconfig(path: Path, server: str, *, context: str = "dev") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
                "current-context": context,
            }
        )
    )
    return path


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project to run `devstack doctor` in, with nothing of the caller's
    environment leaking in (no kubeconfig, agent or sidecar address)."""
    project = tmp_path / "project"
    write_project(project)
    monkeypatch.chdir(project)
    monkeypatch.setenv("DEVSTACK_OWNER", "alice")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    for name in ("DEVSTACK_AGENT_URL", "DEVSTACK_SIDECAR", "HELMFILE_ENVIRONMENT", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    return project


def report_lines(out: str) -> dict[str, Any]:
    """`devstack doctor`'s report, by check name: (status word, text); the
    summary line as ``_summary``."""
    lines: dict[str, Any] = {}
    for line in out.splitlines()[:-1]:
        found = re.match(r"^(ok|warn|FAIL|skip) +(local stack|\S+) +(.*)$", line)
        assert found, line
        lines[found[2]] = (found[1], found[3])
    lines["_summary"] = out.splitlines()[-1]
    return lines


def doctor_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """``devstack doctor ARGV``: the exit code and the report (:func:`report_lines`)."""
    code = main(["doctor", *argv])
    return code, report_lines(capsys.readouterr().out)


def test_no_kubeconfig_file(here: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = doctor_run(capsys)
    assert code == 1
    assert lines["helmfile"] == ("ok", f"{here / 'helmfile.yaml'}: 1 release, environment default")
    status, text = lines["kubeconfig"]
    assert status == "FAIL"
    assert text.startswith(f"no kubeconfig at {tmp_path / 'no-kubeconfig'} -- fix: set KUBECONFIG")
    for name in ("cluster", "credentials", "traefik", "agent"):
        assert lines[name] == ("skip", "not checked: no usable kubeconfig context")
    assert lines["aws"] == ("skip", "no release declares devstack.aws")
    assert lines["_summary"] == "1 check failed: fix the first, then run `devstack doctor` again"
    # --kubeconfig to a file that is not there
    code, lines = doctor_run(capsys, "--kubeconfig", str(tmp_path / "gone.yaml"))
    assert code == 1
    assert lines["kubeconfig"][1].startswith(f"--kubeconfig {tmp_path / 'gone.yaml'}: no such file")


def test_a_context_that_does_not_exist(
    here: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:1")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    code, lines = doctor_run(capsys, "--context", "nope")
    assert code == 1
    assert lines["kubeconfig"][0] == "FAIL"
    assert lines["kubeconfig"][1].startswith(
        f"--context nope: no such context in {kubeconfig} (has: dev) -- fix: pick one: "
        "`kubectl config get-contexts`"
    )
    assert lines["cluster"] == ("skip", "not checked: no usable kubeconfig context")


def test_an_unreachable_server(
    here: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", server)))
    code, lines = doctor_run(capsys)
    assert code == 1
    assert lines["kubeconfig"] == ("ok", f"{tmp_path / 'kc'}, context dev, namespace default")
    assert lines["cluster"][0] == "FAIL"
    assert lines["cluster"][1].startswith(f"{server}: connection refused -- fix: start the cluster")
    for name in ("credentials", "traefik", "agent"):
        assert lines[name] == ("skip", "not checked: the API server did not answer")
    assert lines["versions"][0] == "skip"


def test_tls_to_a_server_that_is_not_one(
    here: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    moto_endpoint: str,  # noqa: F811
) -> None:
    """https:// to a plain-HTTP server (moto): the TLS handshake fails, told apart."""
    server = moto_endpoint.replace("http://", "https://")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", server)))
    code, lines = doctor_run(capsys)
    assert code == 1
    status, text = lines["cluster"]
    assert status == "FAIL"
    assert text.startswith(f"{server}: the TLS handshake failed (")
    assert "-- fix: is that the API server's address?" in text


def test_a_broken_helmfile_with_its_line(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "helmfile.yaml").write_text(
        "releases:\n  - name: db\n    chart: ./charts/plain\n  - name: api\n    chart: ./nope\n"
        "    neds: [db]\n"
    )
    code, lines = doctor_run(capsys)
    assert code == 1
    status, text = lines["helmfile"]
    assert status == "FAIL"
    assert text.startswith(
        "helmfile.yaml:5: releases[1].chart: './nope': there is no chart folder nope; "
        "helmfile.yaml:6: releases[1].neds: unknown key (devstack reads: name, chart, "
    ), text
    assert "-- fix: correct the Helmfile" in text
    assert lines["aws"] == ("skip", "not checked: the Helmfile did not load")
    # no Helmfile at all
    (here / "helmfile.yaml").unlink()
    code, lines = doctor_run(capsys)
    assert code == 1
    assert lines["helmfile"][1].startswith(f"no helmfile.yaml in {here} or above it -- fix: run")


def test_aws_unreachable(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # LocalStack is not running there
    (here / "helmfile.yaml").write_text(aws_release(endpoint))
    code, lines = doctor_run(capsys)
    assert code == 1
    status, text = lines["aws"]
    assert status == "FAIL"
    assert text.startswith(
        f"{endpoint} (stock): connection refused -- fix: start it (`scripts/localstack start PORT`"
    )


def test_aws_answers(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    moto_endpoint: str,  # noqa: F811
) -> None:
    (here / "helmfile.yaml").write_text(aws_release(moto_endpoint))
    code, lines = doctor_run(capsys)
    assert lines["aws"] == (
        "ok",
        f"{moto_endpoint} (stock): answers as AWS (STS: account 123456789012)",
    )
    assert code == 1  # the kubeconfig still fails


def test_an_agent_url_nothing_listens_on(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An agent given by URL is asked even with no cluster: it does not need it."""
    url = f"http://127.0.0.1:{free_port()}"
    code, lines = doctor_run(capsys, "--agent-url", url)
    assert code == 1
    status, text = lines["agent"]
    assert status == "FAIL"
    assert text.startswith(f"{url}: connection refused -- fix: is it running there?")
    assert lines["versions"][1].endswith(
        "(agent: it did not answer; sidecars: the cluster was not reached)"
    )


def test_json_for_scripts(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "-o", "json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "cluster"
    assert out["ok"] is False
    by_name = {c["name"]: c for c in out["checks"]}
    assert list(by_name) == [
        "helmfile", "kubeconfig", "cluster", "credentials", "traefik", "agent", "aws", "versions"
    ]  # fmt: skip
    assert by_name["kubeconfig"]["status"] == "fail"
    assert by_name["kubeconfig"]["fix"].startswith("set KUBECONFIG")
    assert by_name["cluster"] == {
        "name": "cluster",
        "status": "skip",
        "detail": "not checked: no usable kubeconfig context",
        "fix": "",
    }
    assert main(["doctor", "-o", "yaml"]) == 1
    assert yaml.safe_load(capsys.readouterr().out)["checks"][1]["name"] == "kubeconfig"


def test_help_is_written_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--agent-url", "--local", "--cluster", "--timeout", "--kubeconfig", "-o"):
        assert flag in out
    assert "examples:" in out
    assert "devstack doctor --local" in out


def test_a_bad_command_line_is_one_line(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--timeout", "0"]) == 2
    assert capsys.readouterr().err == (
        "devstack doctor: --timeout 0: give a positive number of seconds\n"
    )


# --- the local stack ----------------------------------------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def process(role: str, service: str, pid: int) -> localstack.Process:
    ticks = wait_until(lambda: localstack._start_ticks(pid))
    return localstack.Process(role=role, service=service, pid=pid, start_ticks=ticks, log="")


def write_local_state(
    project: Path,
    *,
    processes: list[localstack.Process],
    router_url: str,
    aws_endpoint: str = "",
    sidecar: Sidecar | None = None,
) -> None:
    """The state file `devstack up --local` writes, for processes the test runs."""
    copy = None
    if sidecar is not None:
        copy = localstack.CopyState(
            name="web--alice", port=0, url="", ready_url="", sidecar=sidecar.address,
            token_file=str(sidecar.token_file), workspace=str(sidecar.workspace), source="",
            app_log="", sidecar_log="", preview_url="",
        )  # fmt: skip
    state = localstack.LocalState(
        owner="alice",
        helmfile=str(project / "helmfile.yaml"),
        dir=str(project / ".devstack" / "local"),
        router_url=router_url,
        domain="localtest.me",
        aws_endpoint=aws_endpoint,
        started_at="2026-12-02T00:00:00+00:00",
        processes=processes,
        services=[
            localstack.ServiceState(
                service="web", host="web.localtest.me", port=0, url="", ready_url="", log="",
                preview_url="", copy=copy,
            )
        ],
    )  # fmt: skip
    path = project / ".devstack" / localstack.STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state.as_json()))


def start_sidecar(tmp_path: Path, name: str, env: dict[str, str] | None = None) -> Sidecar:
    workspace = tmp_path / name
    workspace.mkdir()
    token = tmp_path / f"{name}.token"
    token.write_text("s3cret-token")
    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        return Sidecar(workspace, token).start()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_no_local_stack(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = doctor_run(capsys, "--local")
    assert code == 1
    assert lines["local stack"] == (
        "FAIL",
        f"none runs (no {here / '.devstack' / 'local.json'}) -- fix: start it with "
        "`devstack up --local` (or check the cluster: --cluster)",
    )
    assert lines["traefik"] == ("skip", "not checked: no local stack runs")
    assert "kubeconfig" not in lines


def test_a_local_stack(
    here: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    running: list[subprocess.Popen[bytes]],
    moto_endpoint: str,  # noqa: F811
) -> None:
    """A local stack's processes (a real Traefik, a baseline, a real sidecar):
    all running and green, found without --local; then one stopped, the AWS
    endpoint gone, and a sidecar from a build that speaks another protocol."""
    (tmp_path / "traefik").mkdir()
    traefik = FileTraefik(tmp_path / "traefik", {"http": {"routers": {}}}).start([])
    assert traefik.proc is not None
    baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    running.append(baseline)
    sidecar = start_sidecar(tmp_path, "ws")
    try:
        assert sidecar.proc is not None
        procs = [
            process("traefik", "", traefik.proc.pid),
            process("baseline", "web", baseline.pid),
            process("sidecar", "web", sidecar.proc.pid),
        ]
        router = f"http://127.0.0.1:{traefik.port}"
        write_local_state(
            here, processes=procs, router_url=router, aws_endpoint=moto_endpoint, sidecar=sidecar
        )
        code, lines = doctor_run(capsys)  # the state file says: local mode
        assert code == 0, lines
        assert list(lines) == ["helmfile", "local stack", "traefik", "aws", "versions", "_summary"]
        assert lines["local stack"] == (
            "ok",
            "3 processes run, 1 service, since 2026-12-02T00:00:00+00:00",
        )
        assert lines["traefik"] == ("ok", f"{router} answers (Traefik, routing by your key)")
        sts = "answers as AWS (STS: account 123456789012)"
        assert lines["aws"] == ("ok", f"{moto_endpoint}: {sts}")
        assert lines["versions"] == (
            "ok",
            f"devstack {doctor.devstack_version()} speaks protocol {PROTO}; "
            f"sidecar web--alice: protocol {PROTO}",
        )
        assert lines["_summary"] == "all good"
        # --cluster looks at the cluster even so
        code, cluster = doctor_run(capsys, "--cluster")
        assert "kubeconfig" in cluster and "local stack" not in cluster

        # the baseline stops, and so does the AWS endpoint
        baseline.terminate()
        baseline.wait(10)
        gone = f"http://127.0.0.1:{free_port()}"
        write_local_state(
            here, processes=procs, router_url=router, aws_endpoint=gone, sidecar=sidecar
        )
        code, lines = doctor_run(capsys)
        assert code == 1
        assert lines["local stack"][0] == "FAIL"
        assert lines["local stack"][1].startswith(
            "stopped: web (baseline) (2 of 3 processes run) -- fix: see the logs in"
        )
        assert lines["aws"][0] == "FAIL"
        assert lines["aws"][1].startswith(f"{gone}: connection refused -- fix: the local stack's")
        assert lines["traefik"][0] == "ok"
    finally:
        sidecar.stop()
        traefik.stop()

    # Traefik gone too
    code, lines = doctor_run(capsys)
    assert lines["traefik"][0] == "FAIL"
    assert lines["traefik"][1].startswith(f"{router}: connection refused -- fix: see")


def test_a_sidecar_of_another_protocol(
    here: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real sidecar, started as a build speaking protocol PROTO+1 would
    be (tests/support/protocol.py: no such build exists to install)."""
    other = PROTO + 1
    sidecar = start_sidecar(tmp_path, "ws", speaking_protocol(tmp_path / "site", other))
    try:
        assert sidecar.proc is not None
        write_local_state(
            here,
            processes=[process("sidecar", "web", sidecar.proc.pid)],
            router_url=f"http://127.0.0.1:{free_port()}",
            sidecar=sidecar,
        )
        code, lines = doctor_run(capsys, "--local")
        assert code == 1
        status, text = lines["versions"]
        assert status == "FAIL"
        assert text.startswith(
            f"the sidecar of web--alice speaks protocol {other}, but this devstack "
            f"{doctor.devstack_version()} speaks protocol {PROTO} -- fix: restart the local stack"
        )
        assert lines["aws"] == (
            "skip",
            "the local stack runs no AWS endpoint (nothing declares devstack.aws)",
        )
    finally:
        sidecar.stop()
    # the sidecar stopped: its version cannot be told
    code, lines = doctor_run(capsys, "--local")
    assert lines["versions"][0] == "warn"
    assert "sidecar web--alice: cannot reach the sidecar at" in lines["versions"][1]


# --- what the agent serves is what doctor reads --------------------------------------------


class AgentStatus:
    """The agent API's view of its controller (devstack.agent.api.Status): a
    stand-in, since only the HTTP API's shape is under test here (the real
    agent answers on the testbed: tests/cluster/test_doctor.py)."""

    ready = True

    def healthy(self) -> bool:
        return True

    def routes(self) -> dict[str, Any]:
        return {"ready": True, "leader": True, "services": [{}], "problems": []}


async def test_the_agents_api_as_doctor_reads_it() -> None:
    from aiohttp import web

    from devstack.agent.api import make_app
    from devstack.agent.metrics import Metrics

    runner = web.AppRunner(make_app(AgentStatus(), Metrics()))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        url = f"http://127.0.0.1:{port}"
        facts = await doctor.gather_agent(None, url, "", "default", 3.0)
    finally:
        await runner.cleanup()
    assert dc.check_agent(facts) == Check("agent", "ok", f"{url}: healthy, ready, 1 service routed")
    assert dc.agent_protocol(facts.version) == (doctor.devstack_version(), PROTO, "")


def test_the_default_aws_endpoint_is_the_library_charts() -> None:
    """A release that sets no endpoint provisions where the chart's hooks go."""
    from devstack.provision.command import DEFAULT_ENDPOINT

    defaults = (REPO / "helm" / "devstack-lib" / "templates" / "_defaults.tpl").read_text()
    assert dc.DEFAULT_AWS_ENDPOINT == DEFAULT_ENDPOINT
    assert f"endpoint: {DEFAULT_ENDPOINT}" in defaults
