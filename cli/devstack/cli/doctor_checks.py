"""The pure half of ``devstack doctor`` (:mod:`devstack.cli.doctor`): the
facts the shell gathers about each part, the checks that turn them into
report lines, and the report.

- each ``check_*`` function turns one part's facts (:class:`HelmfileFacts`,
  :class:`KubeconfigFacts`, :class:`ServerFacts`, ...) into one
  :class:`Check`: ``ok``, ``warn``, ``fail`` or ``skip``, one line, the fix;
- :func:`diagnose` runs them in order; a check whose prerequisite
  (:data:`NEEDS`) failed or was skipped is reported as ``skip``, saying
  which (no usable context: the server, the credentials, the CRDs and the
  agent are not checked). :func:`runnable` tells the shell the same before
  it gathers anything, so nothing is asked of a server already known to be
  out of reach;
- :func:`render` (ASCII, or marks and colours for a terminal),
  :func:`as_json` and :func:`exit_code` are the output;
- :func:`kubeconfig_facts` (kubectl's order, from the files' texts),
  :func:`aws_endpoints` (from the Helmfile) and :func:`in_cluster_service`
  read facts out of what the shell read.

No I/O here: every input is a value (docs/workflow.md, "devstack doctor",
lists every line and its fix).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from devstack.cli.project import resolve_kube
from devstack.core.errors import ConfigError
from devstack.core.helmfile import Helmfile
from devstack.core.helmfile.parse import DEFAULT_ENVIRONMENT
from devstack.core.helmfile.values import merge

Status = Literal["ok", "warn", "fail", "skip"]
Mode = Literal["cluster", "local"]

#: The labels of the agent chart's Service (helm/devstack: devstack.labels).
AGENT_SELECTOR = "app.kubernetes.io/part-of=devstack,app.kubernetes.io/component=agent"
#: Where provisioning goes when a release sets no endpoint: the library chart's
#: default (helm/devstack-lib), as devstack.provision.command.DEFAULT_ENDPOINT.
DEFAULT_AWS_ENDPOINT = "http://localstack.localstack.svc.cluster.local:4566"
TRAEFIK_GROUPS = ("traefik.io", "traefik.containo.us")
TRAEFIK_KINDS = {"ingressroutes": "IngressRoute", "middlewares": "Middleware"}
TRAEFIK_CRDS_URL = (
    "https://raw.githubusercontent.com/traefik/traefik/v3.3/docs/content/reference/"
    "dynamic-configuration/kubernetes-crd-definition-v1.yml"
)


# --- results (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    #: What to do (empty when there is nothing to do).
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def skip(name: str, why: str) -> Check:
    return Check(name, "skip", why)


# --- facts (what the shell gathered) ---------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange: the status and body, or why there was none."""

    #: 0: no answer.
    status: int = 0
    #: The body: JSON when it parsed, else the start of the text.
    body: Any = None
    #: No answer: why (one line). An error status through the API server: its message.
    error: str = ""
    #: No answer: ``tls-cert`` (not trusted), ``tls`` (another TLS failure), ``refused``,
    #: ``timeout``, ``dns`` or ``other``.
    kind: str = ""

    @property
    def answered(self) -> bool:
        return self.status > 0


@dataclass(frozen=True)
class HelmfileFacts:
    #: The Helmfile (``""``: none found).
    path: str
    releases: int = 0
    environment: str = DEFAULT_ENVIRONMENT
    #: Its problems, ``file:line: field: message`` each.
    problems: tuple[str, ...] = ()
    #: Any other reason it did not load (none found, a template that cannot render).
    error: str = ""


@dataclass(frozen=True)
class KubeconfigFacts:
    """The kubeconfig as kubectl resolves it."""

    #: Where kubectl looks, in order.
    files: tuple[str, ...]
    #: Those that exist.
    found: tuple[str, ...] = ()
    #: It cannot be read (not YAML, a missing --kubeconfig): one line.
    error: str = ""
    context: str | None = None
    #: The context came from --context (else the current-context).
    context_flag: bool = False
    contexts: tuple[str, ...] = ()
    cluster: str | None = None
    #: The context's cluster is defined in the kubeconfig.
    cluster_defined: bool = False
    server: str | None = None
    namespace: str = "default"
    #: No kubeconfig at all, but this runs in a pod with a service account.
    in_cluster: bool = False


@dataclass(frozen=True)
class ServerFacts:
    """``GET /version`` with the context's credentials."""

    server: str
    answer: Answer
    #: The kube client could not be built from the kubeconfig (one line).
    config_error: str = ""


@dataclass(frozen=True)
class AccessFacts:
    """Who the server says we are, and whether we may read Helm's releases."""

    namespace: str
    #: SelfSubjectReview's user name (``""``: not told).
    user: str
    #: Listing Helm's release Secrets in ``namespace``.
    answer: Answer


@dataclass(frozen=True)
class TraefikFacts:
    #: API group -> the resources its ``v1alpha1`` discovery lists (absent: no such group).
    groups: Mapping[str, frozenset[str]]
    #: Discovery itself failed (one line).
    error: str = ""


@dataclass(frozen=True)
class AgentFacts:
    #: How it was reached: the --agent-url, or ``namespace/name`` of its Service.
    via: str
    #: True: through the API server's service proxy.
    proxied: bool = False
    #: Where its Service was looked for (``every namespace``, ``namespace x``).
    looked_in: str = ""
    #: The Service could not be looked for (a 403): one line.
    lookup_error: str = ""
    #: None: not asked (no agent found).
    healthz: Answer | None = None
    readyz: Answer | None = None
    routes: Answer | None = None
    version: Answer | None = None


@dataclass(frozen=True)
class Endpoint:
    """One AWS endpoint and how it answered."""

    url: str
    #: The releases that provision into it (``local stack`` in local mode).
    releases: tuple[str, ...]
    #: ``namespace/service`` when reached through the API server's service proxy.
    proxied: str = ""
    #: Not probed: why.
    skipped: str = ""
    #: ``GET /_localstack/health``.
    health: Answer | None = None
    #: STS ``GetCallerIdentity`` (direct endpoints only).
    sts: Answer | None = None


@dataclass(frozen=True)
class AwsFacts:
    endpoints: tuple[Endpoint, ...]
    #: Why there is none to check.
    none_why: str = ""
    local: bool = False


@dataclass(frozen=True)
class SidecarVersion:
    #: The copy (release, or service on the local stack).
    name: str
    #: Its ``Status.protocol_version``; None: not told (``error`` says why).
    protocol: int | None
    error: str = ""


@dataclass(frozen=True)
class VersionFacts:
    devstack: str
    protocol: int
    #: Your copies' sidecars, as they answered.
    sidecars: tuple[SidecarVersion, ...] = ()
    #: Why no sidecar was asked (``""``: they were).
    sidecars_why: str = ""
    #: The agent's ``/version`` (None: the agent was not reached).
    agent: Answer | None = None
    #: Why the agent was not asked.
    agent_why: str = ""
    local: bool = False


@dataclass(frozen=True)
class ProcessFacts:
    role: str
    service: str
    alive: bool


@dataclass(frozen=True)
class LocalFacts:
    state_file: str
    #: Whether a local stack's state exists.
    running: bool
    #: The state file cannot be read (one line).
    error: str = ""
    started_at: str = ""
    processes: tuple[ProcessFacts, ...] = ()
    router_url: str = ""
    router: Answer | None = None
    logs: str = ""
    services: int = 0


@dataclass
class Facts:
    """Everything gathered; None: not gathered (its prerequisite failed)."""

    mode: Mode
    helmfile: HelmfileFacts | None = None
    kubeconfig: KubeconfigFacts | None = None
    server: ServerFacts | None = None
    access: AccessFacts | None = None
    traefik: TraefikFacts | None = None
    agent: AgentFacts | None = None
    #: The agent was given by URL: it does not need the cluster's checks.
    agent_url: str = ""
    aws: AwsFacts | None = None
    versions: VersionFacts | None = None
    local: LocalFacts | None = None


# --- the checks (pure) -------------------------------------------------------------------


def shown_path(path: str, home: str | None = None) -> str:
    """``path`` with the home folder as ``~``."""
    home = home if home is not None else os.path.expanduser("~")
    if home and home != "/" and (path == home or path.startswith(home.rstrip("/") + "/")):
        return "~" + path[len(home.rstrip("/")) :]
    return path


#: How many of a Helmfile's problems its line shows (the first ones, by file and line).
SHOWN_PROBLEMS = 2
_WHERE = re.compile(r"^(?P<file>[^:]*):(?P<line>\d+):")


def by_line(problems: Sequence[str]) -> list[str]:
    """``file:line: ...`` problems in file and line order (others last, as given)."""

    def key(p: str) -> tuple[int, str, int]:
        found = _WHERE.match(p)
        return (0, found["file"], int(found["line"])) if found else (1, "", 0)

    return sorted(problems, key=key)


def check_helmfile(f: HelmfileFacts) -> Check:
    name = "helmfile"
    if not f.path:
        return fail(
            name,
            f.error or "no helmfile.yaml here or above",
            "run `devstack init` to write one, or pass -f HELMFILE",
        )
    where = shown_path(f.path)
    if f.problems:
        shown = by_line(f.problems)[:SHOWN_PROBLEMS]
        more = len(f.problems) - len(shown)
        also = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        return fail(
            name,
            "; ".join(shown) + also,
            "correct the Helmfile (docs/helmfile.md); `devstack up --dry-run` lists every problem",
        )
    if f.error:
        return fail(name, f.error, "correct the Helmfile (docs/helmfile.md)")
    return ok(
        name,
        f"{where}: {f.releases} release{'s' if f.releases != 1 else ''}, "
        f"environment {f.environment}",
    )


def check_kubeconfig(f: KubeconfigFacts) -> Check:
    name = "kubeconfig"
    files = ", ".join(shown_path(p) for p in f.files) or "~/.kube/config"
    if f.error:
        return fail(
            name, f.error, "repair the file, or point --kubeconfig (or KUBECONFIG) at a good one"
        )
    if not f.found:
        if f.in_cluster:
            return ok(name, "none: the pod's service account")
        return fail(
            name,
            f"no kubeconfig at {files}",
            "set KUBECONFIG or pass --kubeconfig FILE (your cluster's tool writes one, "
            "e.g. `kind export kubeconfig`)",
        )
    found = ", ".join(shown_path(p) for p in f.found)
    known = ", ".join(f.contexts) or "none"
    if f.context is None:
        return fail(
            name,
            f"{found} sets no current-context (contexts: {known})",
            "pass --context NAME, or `kubectl config use-context NAME`",
        )
    if f.context not in f.contexts:
        said = "--context" if f.context_flag else "current-context"
        return fail(
            name,
            f"{said} {f.context}: no such context in {found} (has: {known})",
            "pick one: `kubectl config get-contexts`, then --context NAME "
            "(or `kubectl config use-context NAME`)",
        )
    if not f.cluster or not f.cluster_defined:
        return fail(
            name,
            f"context {f.context} names cluster {f.cluster or '(none)'}, which {found} "
            "does not define",
            "fetch the cluster's kubeconfig again from its tool, or fix the context",
        )
    if not f.server:
        return fail(
            name,
            f"cluster {f.cluster} of context {f.context} has no server URL",
            "fetch the cluster's kubeconfig again from its tool",
        )
    return ok(name, f"{found}, context {f.context}, namespace {f.namespace}")


_TLS_FIX = (
    "the kubeconfig does not trust the server's certificate (a recreated cluster?): fetch "
    "the kubeconfig again from the cluster's tool (e.g. `kind export kubeconfig`)"
)


def check_cluster(f: ServerFacts) -> Check:
    name = "cluster"
    a = f.answer
    if f.config_error:
        return fail(
            name,
            f"cannot use the context's credentials: {f.config_error}",
            "fix the user entry of the kubeconfig (certificate files, exec plugin on the PATH)",
        )
    if not a.answered:
        if a.kind == "tls-cert":
            return fail(name, f"{f.server}: {a.error}", _TLS_FIX)
        if a.kind == "tls":
            return fail(
                name,
                f"{f.server}: {a.error}",
                "is that the API server's address? something else answers there (plain "
                "HTTP?): check the server in the kubeconfig (`kubectl config view --minify`)",
            )
        if a.kind == "timeout":
            return fail(
                name,
                f"{f.server}: no answer in time ({a.error})",
                "is the cluster up, and its address reachable from here (VPN, firewall)?",
            )
        return fail(
            name,
            f"{f.server}: {a.error}",
            "start the cluster (or pick another with --context); "
            "`kubectl config view --minify` shows the server",
        )
    if a.status in (401, 403) or 200 <= a.status < 300:
        version = a.body.get("gitVersion") if isinstance(a.body, dict) else None
        return ok(name, f"{f.server} answers" + (f" (Kubernetes {version})" if version else ""))
    return fail(
        name,
        f"{f.server} answered {a.status}: {a.error or 'an error'}",
        "the API server is not healthy: try again, or ask the cluster's admin",
    )


def check_credentials(server: ServerFacts, f: AccessFacts | None) -> Check:
    name = "credentials"
    if server.answer.status == 401 or (f is not None and f.answer.status == 401):
        return fail(
            name,
            "refused by the API server (401 Unauthorized): the token or certificate is not "
            "valid (expired?)",
            "log in again / fetch fresh credentials from the cluster's tool",
        )
    if f is None:
        return skip(name, "not checked: the API server did not answer")
    who = f" as {f.user}" if f.user else ""
    a = f.answer
    if a.status == 403:
        return fail(
            name,
            f"accepted{who}, but forbidden (403) to list Secrets in namespace {f.namespace}, "
            "where Helm keeps its releases",
            f"ask the cluster's admin for a Role in namespace {f.namespace} "
            "(devstack reads and deploys Helm releases there), or pick another with -n",
        )
    if not a.answered:
        return fail(name, f"the API server stopped answering: {a.error}", "try again")
    if not 200 <= a.status < 300:
        return fail(
            name,
            f"listing Helm's releases in namespace {f.namespace} answered {a.status}: {a.error}",
            "try again, or ask the cluster's admin",
        )
    return ok(name, f"accepted{who}; may read Helm's releases in namespace {f.namespace}")


def check_traefik(f: TraefikFacts) -> Check:
    name = "traefik"
    if f.error:
        return fail(name, f"cannot read the API's discovery: {f.error}", "try again")
    for group in TRAEFIK_GROUPS:
        have = f.groups.get(group)
        if have is None:
            continue
        missing = [kind for plural, kind in TRAEFIK_KINDS.items() if plural not in have]
        if missing:
            return fail(
                name,
                f"{group}/v1alpha1 has no {' or '.join(missing)} CRD",
                f"install all of Traefik's CRDs: kubectl apply -f {TRAEFIK_CRDS_URL}",
            )
        older = (
            " (Traefik before 2.10: give the agent chart a matching traefikVersion)"
            if group != TRAEFIK_GROUPS[0]
            else ""
        )
        return ok(name, f"IngressRoute and Middleware CRDs in {group}/v1alpha1{older}")
    return fail(
        name,
        "no IngressRoute or Middleware CRD (traefik.io/v1alpha1 or traefik.containo.us/v1alpha1):"
        " Traefik's CRDs are not installed",
        f"install Traefik with its chart (it brings them), or kubectl apply -f {TRAEFIK_CRDS_URL}",
    )


def _service_ref(via: str) -> tuple[str, str]:
    ns, _, name = via.partition("/")
    return ns, name


def check_agent(f: AgentFacts) -> Check:
    name = "agent"
    if f.lookup_error:
        return fail(
            name,
            f"cannot look for its Service: {f.lookup_error}",
            "pass --agent-url URL (e.g. after `kubectl -n NAMESPACE port-forward svc/devstack "
            "8080`), or ask for permission to list Services",
        )
    if not f.via and f.looked_in.startswith("Service "):
        return fail(
            name,
            f"no {f.looked_in}",
            "name the agent chart's Service (`kubectl get svc -A -l "
            "app.kubernetes.io/component=agent`), or leave --agent-service out to find it",
        )
    if not f.via:
        return fail(
            name,
            f"no agent Service in {f.looked_in or 'the cluster'} "
            f"(labels {AGENT_SELECTOR.replace(',', ', ')})",
            "install the agent chart: `helm install devstack ./helm/devstack -n devstack "
            "--create-namespace` (docs/helm.md), or give its address with --agent-url",
        )
    where = f"{f.via} (through the API server)" if f.proxied else f.via
    ns, svc = _service_ref(f.via)
    pods = f"kubectl -n {ns} get pods -l app.kubernetes.io/component=agent" if f.proxied else ""
    a = f.healthz
    if a is None:
        return skip(name, "not asked")
    if f.proxied and a.status == 503 and "no endpoints available" in a.error:
        return fail(
            name,
            f"{where}: no agent pod is ready behind the Service",
            f"see why: `{pods}`, then `kubectl -n {ns} logs deploy/{svc}`",
        )
    if f.proxied and a.status == 403:
        return fail(
            name,
            f"{where}: forbidden to reach it through the API server (services/proxy)",
            f"`kubectl -n {ns} port-forward svc/{svc} 8080`, then --agent-url "
            "http://127.0.0.1:8080",
        )
    if f.proxied and a.status >= 500 and a.error:
        return fail(
            name,
            f"{where}: the API server could not reach it ({a.error})",
            f"see `{pods}`; or `kubectl -n {ns} port-forward svc/{svc} 8080`, then --agent-url "
            "http://127.0.0.1:8080",
        )
    if not a.answered:
        hint = (
            f"see `{pods}`"
            if f.proxied
            else "is it running there? check --agent-url (env DEVSTACK_AGENT_URL), or the "
            "port-forward"
        )
        return fail(name, f"{where}: {a.error}", hint)
    if a.status == 503:
        logs = f"`kubectl -n {ns} logs deploy/{svc}`" if f.proxied else "its log"
        return fail(
            name,
            f"{where}: /healthz says its watch loops stopped (503)",
            f"see {logs}; a restart brings them back",
        )
    if a.status != 200:
        return fail(
            name,
            f"{where}: /healthz answered {a.status}, not as the devstack agent "
            f"{('(' + a.error + ')') if a.error else ''}".rstrip(),
            "check --agent-url, or that the Service is the agent chart's",
        )
    r = f.routes.body if f.routes is not None and isinstance(f.routes.body, dict) else {}
    services: list[Any] = r["services"] if isinstance(r.get("services"), list) else []
    problems: list[Any] = r["problems"] if isinstance(r.get("problems"), list) else []
    parts = ["healthy"]
    ready = f.readyz is not None and f.readyz.status == 200
    parts.append("ready" if ready else "not ready")
    if r:
        parts.append(f"{len(services)} service{'s' if len(services) != 1 else ''} routed")
    if not ready:
        return warn(
            name,
            f"{where}: {', '.join(parts)}: its caches have not synced yet",
            "wait a few seconds; if it stays so, its log says why (informer.failed: "
            "a missing permission or CRD)",
        )
    if problems:
        first = problems[0] if isinstance(problems[0], dict) else {}
        return warn(
            name,
            f"{where}: {', '.join(parts)}, {len(problems)} routing problem"
            f"{'s' if len(problems) != 1 else ''}: {first.get('message', '')}".rstrip(": "),
            "see /v1/routes `problems` (docs/routing.md) and fix those Services",
        )
    return ok(name, f"{where}: {', '.join(parts)}")


def _endpoint_line(e: Endpoint) -> tuple[Status, str]:
    """How one endpoint answered: ok/warn/fail and a few words."""
    who = f" ({', '.join(e.releases)})" if e.releases else ""
    url = f"{e.url}{who}"
    if e.skipped:
        return "skip", f"{url}: {e.skipped}"
    h = e.health
    if h is not None and h.status == 200 and isinstance(h.body, dict) and "services" in h.body:
        version = h.body.get("version")
        return "ok", f"{url}: LocalStack" + (f" {version}" if version else "") + " answers"
    if e.proxied:
        if h is None or not h.answered:
            return "fail", f"{url}: {h.error if h else 'not asked'}"
        if h.status == 503 and "no endpoints available" in h.error:
            return "fail", f"{url}: no pod is ready behind Service {e.proxied}"
        if h.status == 404 and "not found" in h.error and "services" in h.error:
            return "fail", f"{url}: no Service {e.proxied}"
        if h.status == 403:
            return "fail", f"{url}: forbidden to reach it through the API server (services/proxy)"
        return "warn", f"{url}: answers {h.status}, but not as LocalStack"
    s = e.sts
    if s is not None and s.answered:
        text = s.body if isinstance(s.body, str) else ""
        account = re.search(r"<Account>([^<]+)</Account>", text)
        if "GetCallerIdentityResponse" in text:
            return "ok", f"{url}: answers as AWS (STS: account {account[1] if account else '?'})"
        code = re.search(r"<Code>([^<]+)</Code>", text)
        if code:
            return "ok", f"{url}: answers as AWS (STS: {code[1]})"
        return "fail", f"{url}: answers HTTP {s.status}, but not as an AWS endpoint"
    why = (s.error if s is not None else "") or (h.error if h is not None else "no answer")
    return "fail", f"{url}: {why}"


def check_aws(f: AwsFacts) -> Check:
    name = "aws"
    if not f.endpoints:
        return skip(name, f.none_why or "no AWS endpoint to check")
    lines = [_endpoint_line(e) for e in f.endpoints]
    failed = [text for status, text in lines if status == "fail"]
    if failed:
        if f.local:
            fix = (
                "the local stack's AWS endpoint stopped: `devstack down --local`, "
                "then `devstack up --local`"
            )
        elif any(e.proxied for e in f.endpoints):
            fix = (
                "run LocalStack in the cluster (its Helm chart), or set "
                "devstack.provision.endpoint to an endpoint that runs"
            )
        else:
            fix = (
                "start it (`scripts/localstack start PORT`, or `moto_server -p PORT`), "
                "or set devstack.provision.endpoint to an endpoint that runs"
            )
        return fail(name, "; ".join(failed), fix)
    warned = [text for status, text in lines if status == "warn"]
    if warned:
        return warn(
            name,
            "; ".join(text for _, text in lines),
            "check that it is LocalStack (or set devstack.provision.endpoint)",
        )
    if all(status == "skip" for status, _ in lines):
        return skip(name, "; ".join(text for _, text in lines))
    return ok(name, "; ".join(text for _, text in lines))


def agent_protocol(a: Answer | None) -> tuple[str, int | None, str]:
    """The agent's ``/version``: (its devstack version, its protocol, why not told)."""
    if a is None:
        return "", None, "not reached"
    if a.status == 404:
        return "", None, "does not report its version (it predates /version)"
    if a.status == 200 and isinstance(a.body, dict) and isinstance(a.body.get("protocol"), int):
        return str(a.body.get("version") or "?"), int(a.body["protocol"]), ""
    return "", None, f"/version answered {a.status or a.error}"


def check_versions(f: VersionFacts) -> Check:
    """Compatible: every side speaks this devstack's protocol version."""
    name = "versions"
    mine = f"devstack {f.devstack} speaks protocol {f.protocol}"
    seen: list[str] = []
    unknown: list[str] = []
    wrong: list[str] = []
    fixes: list[str] = []
    predates = False
    if not f.local:
        version, proto, why = agent_protocol(f.agent)
        if proto is None:
            predates = f.agent is not None and f.agent.status == 404
            unknown.append(f"agent: {why if f.agent is not None else f.agent_why or why}")
        else:
            seen.append(f"agent {version}: protocol {proto}")
            if proto != f.protocol:
                wrong.append(f"the agent ({version}) speaks protocol {proto}")
                fixes.append(
                    f"install the devstack the cluster runs (pip install 'devstack=={version}'), "
                    "or upgrade the agent chart (helm/devstack) to this one"
                )
    unreachable: list[str] = []
    for s in f.sidecars:
        if s.protocol is None:
            unreachable.append(f"sidecar {s.name}: {s.error}")
            continue
        seen.append(f"sidecar {s.name}: protocol {s.protocol}")
        if s.protocol != f.protocol:
            wrong.append(f"the sidecar of {s.name} speaks protocol {s.protocol}")
    if any(s.protocol is not None and s.protocol != f.protocol for s in f.sidecars):
        fixes.append(
            "restart the local stack with this devstack (`devstack down --local`, then "
            "`devstack up --local`)"
            if f.local
            else "deploy your copies again with this devstack (`devstack down`, then `devstack up`)"
        )
    if f.sidecars_why:
        unknown.append(f"sidecars: {f.sidecars_why}")
    if wrong:
        return fail(name, f"{'; '.join(wrong)}, but this {mine}", "; or ".join(fixes))
    if predates:
        return warn(
            name,
            "; ".join([mine, *seen, *unknown, *unreachable]),
            "upgrade the agent chart (helm/devstack) to this devstack's version",
        )
    if unreachable:
        return warn(
            name,
            "; ".join([mine, *seen, *unreachable]),
            "give your Traefik entry point with --to HOST:PORT"
            if not f.local
            else "see `devstack status`; `devstack down --local`, then `devstack up --local`",
        )
    if not seen:
        return skip(name, f"{mine}; nothing to compare with ({'; '.join(unknown)})")
    also = f" ({'; '.join(unknown)})" if unknown else ""
    return ok(name, "; ".join([mine, *seen]) + also)


def check_local_stack(f: LocalFacts) -> Check:
    name = "local stack"
    if f.error:
        return fail(name, f.error, "stop its processes, remove the file, `devstack up --local`")
    if not f.running:
        return fail(
            name,
            f"none runs (no {shown_path(f.state_file)})",
            "start it with `devstack up --local` (or check the cluster: --cluster)",
        )
    dead = [p for p in f.processes if not p.alive]
    if dead:
        names = ", ".join(f"{p.service} ({p.role})" if p.service else p.role for p in dead)
        return fail(
            name,
            f"stopped: {names} ({len(f.processes) - len(dead)} of {len(f.processes)} "
            "processes run)",
            f"see the logs in {shown_path(f.logs)}; `devstack down --local`, "
            "then `devstack up --local`",
        )
    return ok(
        name,
        f"{len(f.processes)} processes run, {f.services} service"
        f"{'s' if f.services != 1 else ''}, since {f.started_at or '?'}",
    )


def check_local_traefik(f: LocalFacts) -> Check:
    name = "traefik"
    if not f.running or f.error:
        return skip(name, "not checked: no local stack runs")
    a = f.router
    if a is None or not a.answered:
        return fail(
            name,
            f"{f.router_url}: {a.error if a else 'not asked'}",
            f"see {shown_path(f.logs)}/traefik.log; `devstack down --local`, "
            "then `devstack up --local`",
        )
    return ok(name, f"{f.router_url} answers (Traefik, routing by your key)")


#: What each check needs to have passed first (cluster mode).
NEEDS: Mapping[str, tuple[str, ...]] = {
    "cluster": ("kubeconfig",),
    "credentials": ("cluster",),
    "traefik": ("credentials",),
    "agent": ("credentials",),
    "aws": ("helmfile",),
}

#: Why a check that needed ``name`` was not run.
_BLOCKED_WHY: Mapping[str, str] = {
    "helmfile": "the Helmfile did not load",
    "kubeconfig": "no usable kubeconfig context",
    "cluster": "the API server did not answer",
    "credentials": "the credentials were not accepted",
    "local stack": "no local stack runs",
}


def needs(name: str, facts: Facts) -> tuple[str, ...]:
    """The checks ``name`` needs passed (an agent given by URL needs none)."""
    if name == "agent" and facts.agent_url:
        return ()
    return NEEDS.get(name, ())


def blocked_by(name: str, facts: Facts, done: Mapping[str, Check]) -> str | None:
    """The first prerequisite of ``name`` that failed or was skipped, if any."""
    for n in needs(name, facts):
        c = done.get(n)
        if c is None or c.status in ("fail", "skip"):
            return n
    return None


def _maybe(check: Callable[[Any], Check], facts: Any) -> Check | None:
    return None if facts is None else check(facts)


def diagnose(facts: Facts) -> list[Check]:
    """Every line, in order (pure). A check whose prerequisite did not pass
    is skipped, naming it; one whose facts are missing is skipped too."""
    f = facts
    steps: list[tuple[str, Check | None]]
    if f.mode == "local":
        steps = [
            ("helmfile", _maybe(check_helmfile, f.helmfile)),
            ("local stack", _maybe(check_local_stack, f.local)),
            ("traefik", _maybe(check_local_traefik, f.local)),
            ("aws", _maybe(check_aws, f.aws)),
            ("versions", _maybe(check_versions, f.versions)),
        ]
    else:
        steps = [
            ("helmfile", _maybe(check_helmfile, f.helmfile)),
            ("kubeconfig", _maybe(check_kubeconfig, f.kubeconfig)),
            ("cluster", _maybe(check_cluster, f.server)),
            ("credentials", _maybe(lambda s: check_credentials(s, f.access), f.server)),
            ("traefik", _maybe(check_traefik, f.traefik)),
            ("agent", _maybe(check_agent, f.agent)),
            ("aws", _maybe(check_aws, f.aws)),
            ("versions", _maybe(check_versions, f.versions)),
        ]
    done: dict[str, Check] = {}
    for name, made in steps:
        blocker = blocked_by(name, facts, done) if facts.mode == "cluster" else None
        if blocker is not None:
            before = done.get(blocker)
            if before is not None and before.status == "skip":
                done[name] = skip(name, before.detail)  # the same cause
            else:
                why = _BLOCKED_WHY.get(blocker, f"{blocker} was not checked")
                done[name] = skip(name, f"not checked: {why}")
        else:
            done[name] = made if made is not None else skip(name, "not checked")
    return list(done.values())


def runnable(name: str, facts: Facts) -> bool:
    """Whether the shell should gather ``name``'s facts: its prerequisites passed."""
    return blocked_by(name, facts, {c.name: c for c in diagnose(facts)}) is None


# --- printing (pure) ------------------------------------------------------------------------

_MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}
_WORDS = {"ok": "ok", "warn": "warn", "fail": "FAIL", "skip": "skip"}
_COLORS = {"ok": "32", "warn": "33", "fail": "31", "skip": "2"}


def render(checks: Sequence[Check], *, fancy: bool) -> str:
    """The report: one line per check, then a summary line. ``fancy``: marks
    and colours for a terminal; otherwise plain ASCII."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        text = c.detail
        if c.fix and c.status in ("fail", "warn"):
            text += (" — fix: " if fancy else " -- fix: ") + c.fix
        if fancy:
            mark = f"\x1b[{_COLORS[c.status]}m{_MARKS[c.status]}\x1b[0m"
        else:
            mark = f"{_WORDS[c.status]:<4}"
        lines.append(f"{mark} {c.name:<{width}}  {text}")
    failed = sum(c.status == "fail" for c in checks)
    if failed:
        lines.append(
            f"{failed} check{'s' if failed > 1 else ''} failed: fix the first, "
            "then run `devstack doctor` again"
        )
    else:
        lines.append("all good" if all(c.status == "ok" for c in checks) else "no failures")
    return "\n".join(lines)


def as_json(facts: Facts, checks: Sequence[Check]) -> dict[str, Any]:
    return {
        "mode": facts.mode,
        "ok": not any(c.status == "fail" for c in checks),
        "checks": [c.as_json() for c in checks],
    }


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0


def fancy_output(stream: Any, environ: Mapping[str, str]) -> bool:
    """Marks and colours only on a terminal, and not with ``NO_COLOR`` (no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(
        callable(isatty)
        and isatty()
        and not environ.get("NO_COLOR")
        and environ.get("TERM", "") != "dumb"
    )


# --- the Helmfile's facts (pure) ------------------------------------------------------------

_IN_CLUSTER = re.compile(
    r"^(?P<service>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<namespace>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"\.svc(\.cluster\.local)?\.?$"
)


def in_cluster_service(url: str) -> tuple[str, str, int] | None:
    """``(namespace, service, port)`` of an in-cluster URL
    (``http://svc.ns.svc.cluster.local:4566``), else None."""
    parts = urllib.parse.urlsplit(url)
    found = _IN_CLUSTER.match(parts.hostname or "")
    if found is None:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return found["namespace"], found["service"], port


def aws_endpoints(
    helmfile: Helmfile, chart_devstack: Mapping[str, Mapping[str, Any]] | None = None
) -> list[tuple[str, tuple[str, ...]]]:
    """Each AWS endpoint the Helmfile's installed releases provision into, with
    those releases (pure): a release whose ``devstack.aws`` (its chart's
    values merged under the Helmfile's, ``chart_devstack`` by release name)
    declares something, and whose provisioning is on; its
    ``devstack.provision.endpoint``, else the library chart's default."""
    found: dict[str, list[str]] = {}
    for r in helmfile.releases:
        if not r.installed:
            continue
        values = merge(dict((chart_devstack or {}).get(r.name) or {}), dict(r.devstack))
        aws = values.get("aws")
        provision: dict[str, Any] = (
            values["provision"] if isinstance(values.get("provision"), dict) else {}
        )
        if not isinstance(aws, dict) or not any(aws.values()):
            continue
        if provision.get("enabled") is False:
            continue
        endpoint = provision.get("endpoint", DEFAULT_AWS_ENDPOINT)
        found.setdefault(str(endpoint if endpoint is not None else ""), []).append(r.name)
    return [(url, tuple(names)) for url, names in found.items()]


def merged_kubeconfig(docs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """clusters, users and contexts by name, the first file's winning (pure)."""
    out: dict[str, dict[str, Any]] = {"clusters": {}, "users": {}, "contexts": {}}
    for d in docs:
        for key, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in d.get(key) or ():
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    out[key].setdefault(entry["name"], entry.get(inner) or {})
    return out


def kubeconfig_facts(
    *,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    environ: Mapping[str, str],
    home: str,
    texts: Mapping[str, str | None],
    in_cluster: bool = False,
) -> KubeconfigFacts:
    """The kubeconfig's facts from the files' texts (pure; ``texts``: path ->
    its text, None when it does not exist), in kubectl's order
    (:func:`devstack.cli.project.resolve_kube`)."""
    if kubeconfig:
        files: tuple[str, ...] = (kubeconfig,)
    elif environ.get("KUBECONFIG"):
        files = tuple(p for p in environ["KUBECONFIG"].split(os.pathsep) if p)
    else:
        files = (os.path.join(home, ".kube", "config"),)
    found = tuple(p for p in files if texts.get(p) is not None)
    try:
        resolve_kube(
            kubeconfig=kubeconfig,
            context=None,
            namespace=namespace,
            environ=environ,
            home=home,
            read=lambda p: texts.get(p),
        )
    except ConfigError as e:
        return KubeconfigFacts(files=files, found=found, error=str(e))
    docs = [d for d in (yaml.safe_load(texts[p] or "") for p in found) if isinstance(d, dict)]
    merged = merged_kubeconfig(docs)
    chosen = context or next(
        (str(d["current-context"]) for d in docs if d.get("current-context")), None
    )
    entry = merged["contexts"].get(chosen or "")
    ctx = entry if isinstance(entry, dict) else {}
    cluster = str(ctx["cluster"]) if ctx.get("cluster") else None
    cluster_entry = merged["clusters"].get(cluster or "")
    server = cluster_entry.get("server") if isinstance(cluster_entry, dict) else None
    return KubeconfigFacts(
        files=files,
        found=found,
        context=chosen,
        context_flag=bool(context),
        contexts=tuple(merged["contexts"]),
        cluster=cluster,
        cluster_defined=cluster_entry is not None,
        server=str(server) if server else None,
        namespace=str(namespace or ctx.get("namespace") or "default"),
        in_cluster=in_cluster,
    )
