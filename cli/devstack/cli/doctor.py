"""``devstack doctor``: is this setup able to work? One line per part, and the
fix for each part that is not.

Two halves, as everywhere in devstack:

- **the checks are pure** (:mod:`devstack.cli.doctor_checks`): each turns
  the facts gathered about one part into one line (``ok``, ``warn``,
  ``fail`` or ``skip``) and its fix; a check whose prerequisite failed is
  skipped, saying which;
- **this module is the shell**: it gathers the facts (:func:`gather_cluster`,
  :func:`gather_local`) with short timeouts (``--timeout``, 3 s each), only
  those whose prerequisites passed (``doctor_checks.runnable``), and prints
  the report.

Against a cluster (the default; ``--cluster``) it checks, in order:

``helmfile``     the Helmfile loads (its first problems, ``file:line``);
``kubeconfig``   the file exists and parses, the context exists and names a
                 cluster with a server;
``cluster``      the API server answers (unreachable and TLS told apart);
``credentials``  they are accepted (401) and may read Helm's releases in the
                 namespace, as every devstack command does (403);
``traefik``      Traefik's CRDs: IngressRoute and Middleware in
                 ``traefik.io/v1alpha1``, or the older ``traefik.containo.us``;
``agent``        the agent answers ``/healthz`` (and ``/readyz``,
                 ``/v1/routes``): the Service the agent chart (helm/devstack)
                 makes, found by its labels (or named, ``--agent-service``),
                 reached through the API server's service proxy; or at
                 ``--agent-url`` (``DEVSTACK_AGENT_URL``, e.g. after ``kubectl
                 port-forward``), which needs nothing of the cluster;
``aws``          each AWS endpoint the Helmfile's releases provision into
                 (``devstack.provision.endpoint``, else the chart's in-cluster
                 LocalStack), answers as LocalStack or as AWS (STS); an
                 in-cluster ``*.svc`` URL is reached through the service proxy;
``versions``     the agent (``/version``) and your copies' sidecars (their
                 ``Status``) speak this devstack's protocol version
                 (:data:`devstack.core.protocol.PROTOCOL_VERSION`): compatible
                 means the same protocol version; each side's is reported.

With a local stack running (its state file; ``--local``) the cluster lines
give way to ``local stack`` (its processes alive), ``traefik`` (the local
Traefik answers), ``aws`` (the stack's endpoint) and ``versions`` (its
sidecars).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import os
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import yaml

from devstack.cli.agent_client import (
    DirectHttp,
    Http,
    ServiceProxy,
    add_agent_arguments,
    check_agent_service,
    locate_agent,
)
from devstack.cli.agent_client import kube_request as _kube
from devstack.cli.doctor_checks import (
    TRAEFIK_GROUPS,
    AccessFacts,
    AgentFacts,
    Answer,
    AwsFacts,
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
    as_json,
    aws_endpoints,
    diagnose,
    exit_code,
    fancy_output,
    in_cluster_service,
    kubeconfig_facts,
    render,
    runnable,
    shown_path,
)
from devstack.cli.project import (
    STATE_DIR,
    KubeTarget,
    Project,
    add_output_argument,
    add_project_arguments,
    find_helmfile,
)
from devstack.core import logging as dlog
from devstack.core.errors import ConfigError, DevstackError
from devstack.core.helmfile import Helmfile, HelmfileError, load
from devstack.core.helmfile.parse import DEFAULT_ENVIRONMENT
from devstack.core.owner import owner_from_environment, validate_owner
from devstack.core.protocol import PROTOCOL_VERSION

log = dlog.get_logger("devstack.cli.doctor")

#: Seconds each network probe may take (``--timeout``).
DEFAULT_TIMEOUT = 3.0
#: Helm's release records (what every devstack command lists first).
HELM_RECORDS = "owner=helm"

EXAMPLES = """\
examples:
  devstack doctor                       check the Helmfile, the cluster, its agent, AWS
  devstack doctor --context kind-dev    check another kube context
  devstack doctor --agent-url http://127.0.0.1:8080
                                        the agent there (after `kubectl -n devstack
                                        port-forward svc/devstack 8080`)
  devstack doctor --local               check the local stack `devstack up --local` runs
  devstack doctor -o json               the same, for scripts (exit 1 when a check fails)

Each line is ✓ ok, ! a warning, ✗ a failure (with `— fix: ...`), or - skipped
because a check before it failed. Without a terminal (or with NO_COLOR set)
the marks are plain words: ok, warn, FAIL, skip.
"""


# --- gathering: the Helmfile -----------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    facts: HelmfileFacts
    helmfile: Helmfile | None
    #: The folder of the Helmfile (None: none found).
    root: Path | None


def gather_helmfile(args: argparse.Namespace, environ: Mapping[str, str]) -> Loaded:
    """The Helmfile, found and loaded as :func:`devstack.cli.project.load_project`
    does, kept apart from the kube target so each has its own line."""
    given = getattr(args, "file", None)
    start = Path(given) if given else Path.cwd()
    environment = (
        getattr(args, "environment", None)
        or environ.get("HELMFILE_ENVIRONMENT")
        or DEFAULT_ENVIRONMENT
    )
    if given and not start.exists():
        return Loaded(
            HelmfileFacts(path="", error=f"-f {given}: no such file or folder"), None, None
        )
    try:
        path = find_helmfile(start)
    except ConfigError:
        error = f"no helmfile.yaml in {shown_path(str(start.absolute()))} or above it"
        return Loaded(HelmfileFacts(path="", error=error), None, None)
    try:
        helmfile = load(path, environment=environment, env=environ)
    except HelmfileError as e:
        facts = HelmfileFacts(path=str(path), environment=environment, problems=e.problems)
        return Loaded(facts, None, path.parent)
    except DevstackError as e:
        return Loaded(
            HelmfileFacts(path=str(path), environment=environment, error=str(e)), None, path.parent
        )
    facts = HelmfileFacts(path=str(path), releases=len(helmfile.releases), environment=environment)
    return Loaded(facts, helmfile, path.parent)


def chart_devstack_values(helmfile: Helmfile) -> dict[str, Mapping[str, Any]]:
    """Each release's local chart's own ``devstack:`` values (its values.yaml)."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in helmfile.releases:
        if r.chart.kind != "local" or not r.chart.path:
            continue
        try:
            values = yaml.safe_load((Path(r.chart.path) / "values.yaml").read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(values, dict) and isinstance(values.get("devstack"), dict):
            out[r.name] = values["devstack"]
    return out


# --- gathering: the cluster ----------------------------------------------------------------


def gather_kubeconfig(args: argparse.Namespace, environ: Mapping[str, str]) -> KubeconfigFacts:
    from devstack.agent.kube import in_cluster

    home = environ.get("HOME") or str(Path.home())
    kubeconfig = getattr(args, "kubeconfig", None)
    if kubeconfig:
        candidates: Sequence[str] = (kubeconfig,)
    elif environ.get("KUBECONFIG"):
        candidates = [p for p in environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        candidates = (os.path.join(home, ".kube", "config"),)
    texts: dict[str, str | None] = {}
    for p in candidates:
        try:
            texts[p] = Path(os.path.expanduser(p)).read_text()
        except FileNotFoundError:
            texts[p] = None
        except (OSError, UnicodeDecodeError) as e:
            return KubeconfigFacts(files=tuple(candidates), error=f"{p}: cannot read it: {e}")
    return kubeconfig_facts(
        kubeconfig=kubeconfig,
        context=getattr(args, "context", None),
        namespace=getattr(args, "namespace", None),
        environ=environ,
        home=home,
        texts=texts,
        in_cluster=in_cluster(),
    )


async def gather_server(api: Any, server: str) -> ServerFacts:
    return ServerFacts(server=server, answer=await _kube(api, "GET", "/version"))


async def gather_access(api: Any, namespace: str) -> AccessFacts:
    review = await _kube(
        api,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    user = ""
    if review.status == 200 and isinstance(review.body, dict):
        info = (review.body.get("status") or {}).get("userInfo") or {}
        user = str(info.get("username") or "")
    listed = await _kube(
        api,
        "GET",
        f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/secrets",
        labelSelector=HELM_RECORDS,
        limit=1,
    )
    if review.status == 401:
        listed = review
    return AccessFacts(namespace=namespace, user=user, answer=listed)


async def gather_traefik(api: Any) -> TraefikFacts:
    groups: dict[str, frozenset[str]] = {}
    for group in TRAEFIK_GROUPS:
        a = await _kube(api, "GET", f"/apis/{group}/v1alpha1")
        if a.status == 404:
            continue
        if a.status != 200 or not isinstance(a.body, dict):
            return TraefikFacts(groups=groups, error=a.error or f"answered {a.status}")
        groups[group] = frozenset(
            str(r.get("name")) for r in a.body.get("resources") or () if isinstance(r, dict)
        )
    return TraefikFacts(groups=groups)


async def _ask_agent(http: Http, facts: AgentFacts) -> AgentFacts:
    healthz = await http.get("/healthz")
    if healthz.status != 200:
        return dataclasses.replace(facts, healthz=healthz)
    readyz, routes, version = await asyncio.gather(
        http.get("/readyz"), http.get("/v1/routes"), http.get("/version")
    )
    return dataclasses.replace(
        facts, healthz=healthz, readyz=readyz, routes=routes, version=version
    )


async def gather_agent(
    api: Any | None, url: str, service: str, namespace: str, timeout: float
) -> AgentFacts:
    """The agent at ``url``; else its Service through the service proxy: the
    one named (``service``, ``NAMESPACE/NAME``), else the one the chart's
    labels find in any namespace (else in ``namespace``, when listing every
    namespace is forbidden): :func:`devstack.cli.agent_client.locate_agent`."""
    if url:
        return await _ask_agent(DirectHttp(url, timeout), AgentFacts(via=url))
    assert api is not None
    found = await locate_agent(api, service, namespace)
    if found.proxy is None:
        return AgentFacts(via="", looked_in=found.looked_in, lookup_error=found.lookup_error)
    facts = AgentFacts(via=found.via, proxied=True, looked_in=found.looked_in)
    return await _ask_agent(found.proxy, facts)


_STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
#: A SigV4-shaped header naming STS, so an emulator (LocalStack, moto) routes the call
#: to STS; its signature is not real, and real AWS answers it with an error, as AWS.
_STS_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded",
    "Authorization": (
        "AWS4-HMAC-SHA256 Credential=test/20200101/us-east-1/sts/aws4_request, "
        "SignedHeaders=content-type;host, Signature=0"
    ),
}


async def probe_endpoint(
    url: str, releases: tuple[str, ...], api: Any | None, timeout: float, *, cluster_ok: bool
) -> Endpoint:
    """One AWS endpoint: LocalStack's health, else STS; an in-cluster URL
    through the API server's service proxy."""
    if not url:
        return Endpoint(url="AWS itself", releases=releases, skipped="not probed (real AWS)")
    target = in_cluster_service(url)
    if target is not None:
        ns, svc, port = target
        if api is None or not cluster_ok:
            return Endpoint(
                url=url,
                releases=releases,
                proxied=f"{ns}/{svc}",
                skipped="not checked: it is in the cluster, which was not reached",
            )
        health = await ServiceProxy(api, ns, svc, str(port)).get("/_localstack/health")
        return Endpoint(url=url, releases=releases, proxied=f"{ns}/{svc}", health=health)
    http = DirectHttp(url, timeout)
    health = await http.get("/_localstack/health")
    if not health.answered:
        return Endpoint(url=url, releases=releases, health=health)
    if health.status == 200 and isinstance(health.body, dict) and "services" in health.body:
        return Endpoint(url=url, releases=releases, health=health)
    sts = await http.request("POST", "/", data=_STS_BODY, headers=_STS_HEADERS)
    return Endpoint(url=url, releases=releases, health=health, sts=sts)


async def sidecar_protocol(
    name: str, address: str, token: str, authority: str | None, tls: bool, timeout: float
) -> SidecarVersion:
    """A sidecar's ``Status.protocol_version``."""
    from devstack.cli.channel import open_channel, translate
    from devstack.core.protocol import bearer
    from devstack.sync.v1 import sync_pb2 as pb
    from devstack.sync.v1 import sync_pb2_grpc

    try:
        async with open_channel(address, authority=authority, tls=tls) as channel:
            stub: Any = sync_pb2_grpc.SyncStub(channel)
            try:
                resp = await stub.Status(
                    pb.StatusRequest(), metadata=bearer(token), timeout=timeout
                )
            except grpc.RpcError as e:
                raise translate(e, address) from e
    except DevstackError as e:
        return SidecarVersion(name, None, " ".join(str(e).split())[:200])
    return SidecarVersion(name, int(resp.protocol_version))


async def cluster_sidecars(
    api: Any, project: Project, via: str | None, timeout: float
) -> tuple[tuple[SidecarVersion, ...], str]:
    """Your copies' sidecars in the cluster, reached as ``status`` reaches them."""
    from devstack.cli.cluster_up import namespaces_of
    from devstack.cli.releases import (
        deployed_releases,
        read_token,
        release_manifest,
        sidecar_access,
    )
    from devstack.cli.workflow_status import status_targets

    default_ns = project.kube.namespace
    try:
        deployed = await deployed_releases(api, namespaces_of(project.helmfile, default_ns))
    except DevstackError as e:
        return (), f"your copies could not be listed ({e})"
    copies = [
        t
        for t in status_targets(project.helmfile, project.owner, deployed, namespace=default_ns)
        if t.owner
    ]
    if not copies:
        return (), f"no copy of {project.owner}'s is deployed"

    async def one(t: Any) -> SidecarVersion:
        try:
            docs = await release_manifest(api, t.namespace, t.release)
            access = sidecar_access(docs, release=t.release)
            token = await read_token(api, t.namespace, access)
        except DevstackError as e:
            return SidecarVersion(t.release, None, " ".join(str(e).split())[:200])
        return await sidecar_protocol(
            t.release, via or access.default_address, token, access.host, access.tls, timeout
        )

    return tuple(await asyncio.gather(*(one(t) for t in copies))), ""


def _owner(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str]:
    """(owner, why none). A bad ``--owner`` is a bad command line (raised)."""
    given = getattr(args, "owner", None)
    if given:
        return str(validate_owner(given, source="--owner")), ""
    try:
        return str(owner_from_environment(environ)), ""
    except ConfigError as e:
        return "", str(e)


def devstack_version() -> str:
    try:
        return importlib.metadata.version("devstack")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def _open_cluster(
    stack: contextlib.AsyncExitStack, args: argparse.Namespace, facts: Facts, timeout: float
) -> Any | None:
    """The API client for the context (None: the kubeconfig check failed, or the
    client could not be built: then ``facts.server`` says why)."""
    from devstack.agent.kube import kube_client

    kube = facts.kubeconfig
    if kube is None or not runnable("cluster", facts):
        return None
    try:
        return await stack.enter_async_context(
            kube_client(
                getattr(args, "kubeconfig", None),
                kube.context,
                user_agent="devstack-doctor",
                request_timeout=timeout,
            )
        )
    except DevstackError as e:
        facts.server = ServerFacts(server=kube.server or "?", answer=Answer(), config_error=str(e))
        return None


async def _versions(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    loaded: Loaded,
    facts: Facts,
    api: Any | None,
    timeout: float,
) -> VersionFacts:
    """The agent's version (from what was gathered) and your copies' sidecars'."""
    versions = VersionFacts(devstack=devstack_version(), protocol=PROTOCOL_VERSION)
    agent = facts.agent
    if agent is not None and agent.version is not None:
        versions = dataclasses.replace(versions, agent=agent.version)
    else:
        why = "not reached" if agent is None else "it did not answer"
        versions = dataclasses.replace(versions, agent_why=why)
    owner, owner_why = _owner(args, environ)
    why = ""
    if api is None or not runnable("traefik", facts):  # the credentials did not pass
        why = "the cluster was not reached"
    elif loaded.helmfile is None:
        why = "the Helmfile did not load"
    elif not owner:
        why = f"no owner: {owner_why}"
    if why or loaded.helmfile is None or facts.kubeconfig is None:
        return dataclasses.replace(versions, sidecars_why=why)
    project = Project(
        root=loaded.root or Path.cwd(),
        helmfile=loaded.helmfile,
        owner=owner,
        kube=KubeTarget(
            files=facts.kubeconfig.files,
            context=facts.kubeconfig.context,
            namespace=facts.kubeconfig.namespace,
            kubeconfig=getattr(args, "kubeconfig", None),
        ),
        environment=loaded.facts.environment,
    )
    sidecars, why = await cluster_sidecars(api, project, args.to, timeout)
    return dataclasses.replace(versions, sidecars=sidecars, sidecars_why=why)


async def gather_cluster(
    args: argparse.Namespace, environ: Mapping[str, str], loaded: Loaded
) -> Facts:
    """The cluster's facts, each only when its prerequisites passed."""
    timeout = float(args.timeout)
    facts = Facts(mode="cluster", helmfile=loaded.facts, agent_url=args.agent_url or "")
    facts.kubeconfig = kube = gather_kubeconfig(args, environ)
    _owner(args, environ)  # a bad --owner is a bad command line: before any probe
    async with contextlib.AsyncExitStack() as stack:
        api = await _open_cluster(stack, args, facts, timeout)
        if api is not None:
            facts.server = await gather_server(api, kube.server or "?")
            if facts.server.answer.status == 401:
                facts.access = AccessFacts(kube.namespace, "", facts.server.answer)
            elif facts.server.answer.answered:
                facts.access = await gather_access(api, kube.namespace)
        cluster_ok = api is not None and runnable("traefik", facts)
        if cluster_ok:
            facts.traefik = await gather_traefik(api)
        if runnable("agent", facts):
            facts.agent = await gather_agent(
                api if cluster_ok else None,
                facts.agent_url,
                args.agent_service or "",
                kube.namespace,
                timeout,
            )
        if loaded.helmfile is not None:
            found = aws_endpoints(loaded.helmfile, chart_devstack_values(loaded.helmfile))
            endpoints = await asyncio.gather(
                *(probe_endpoint(u, r, api, timeout, cluster_ok=cluster_ok) for u, r in found)
            )
            facts.aws = AwsFacts(
                endpoints=tuple(endpoints), none_why="no release declares devstack.aws"
            )
        facts.versions = await _versions(args, environ, loaded, facts, api, timeout)
    return facts


# --- gathering: the local stack -----------------------------------------------------------


def local_state(root: Path) -> tuple[Any, str, str]:
    """(the local stack's state or None, its file, why unreadable)."""
    from devstack.cli import localstack

    class _Where:
        state_dir = root / STATE_DIR

    path = root / STATE_DIR / localstack.STATE_FILE
    try:
        # read_state only needs where the project keeps its state
        return localstack.read_state(cast(Project, _Where())), str(path), ""
    except DevstackError as e:
        return None, str(path), str(e)


async def gather_local(
    args: argparse.Namespace, environ: Mapping[str, str], loaded: Loaded
) -> Facts:
    from devstack.core.protocol import read_token

    timeout = float(args.timeout)
    facts = Facts(mode="local", helmfile=loaded.facts)
    versions = VersionFacts(devstack=devstack_version(), protocol=PROTOCOL_VERSION, local=True)
    if loaded.root is None:
        facts.local = LocalFacts(state_file="", running=False, error="no Helmfile, so no project")
        facts.versions = dataclasses.replace(versions, sidecars_why="no local stack runs")
        return facts
    state, path, error = local_state(loaded.root)
    if state is None:
        facts.local = LocalFacts(state_file=path, running=False, error=error)
        facts.aws = AwsFacts(endpoints=(), none_why="not checked: no local stack runs", local=True)
        facts.versions = dataclasses.replace(versions, sidecars_why="no local stack runs")
        return facts
    router = await DirectHttp(state.router_url, timeout).get("/")
    facts.local = LocalFacts(
        state_file=path,
        running=True,
        started_at=state.started_at,
        processes=tuple(ProcessFacts(p.role, p.service, p.alive()) for p in state.processes),
        router_url=state.router_url,
        router=router,
        logs=str(Path(state.dir) / "logs"),
        services=len(state.services),
    )
    if state.aws_endpoint:
        endpoint = await probe_endpoint(state.aws_endpoint, (), None, timeout, cluster_ok=False)
        facts.aws = AwsFacts(endpoints=(endpoint,), local=True)
    else:
        facts.aws = AwsFacts(
            endpoints=(), none_why="the local stack runs no AWS endpoint (nothing declares "
            "devstack.aws)", local=True,
        )  # fmt: skip

    async def one(copy: Any) -> SidecarVersion:
        try:
            token = read_token(Path(copy.token_file))
        except DevstackError as e:
            return SidecarVersion(copy.name, None, str(e))
        return await sidecar_protocol(copy.name, copy.sidecar, token, None, False, timeout)

    copies = [s.copy for s in state.services if s.copy is not None]
    sidecars = tuple(await asyncio.gather(*(one(c) for c in copies)))
    facts.versions = dataclasses.replace(
        versions,
        sidecars=sidecars,
        sidecars_why="" if copies else "no copy of yours runs on the local stack",
    )
    return facts


def local_mode(args: argparse.Namespace, loaded: Loaded) -> bool:
    """``--local``; else, without ``--cluster``, whether a local stack's state exists."""
    if getattr(args, "local", False):
        return True
    if getattr(args, "cluster", False) or loaded.root is None:
        return False
    state, _, error = local_state(loaded.root)
    return state is not None or bool(error)


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from devstack.cli.project import add_mode_arguments

    parser.description = (
        "Check that devstack can work here: the Helmfile, the kubeconfig and its\n"
        "context, the API server and your credentials, Traefik's CRDs, the cluster's\n"
        "agent, the AWS endpoint, and that the agent and your sidecars speak this\n"
        "devstack's protocol. With a local stack running: its processes, its Traefik,\n"
        "its AWS endpoint and its sidecars instead. One line each, with the fix for\n"
        "what fails; exit 1 when something fails."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("what to reach")
    add_agent_arguments(g)
    g.add_argument(
        "--to",
        default=os.environ.get("DEVSTACK_SIDECAR"),
        metavar="HOST:PORT",
        help="reach your copies' sidecars here, a Traefik entry point (env DEVSTACK_SIDECAR; "
        "default: each copy's sync host on port 80/443)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long each probe may take (default {DEFAULT_TIMEOUT:g})",
    )
    add_mode_arguments(parser)
    add_project_arguments(parser)
    add_output_argument(parser)


def run(args: argparse.Namespace) -> int:
    dlog.configure(level=os.environ.get("DEVSTACK_LOG_LEVEL") or "warning")
    check_agent_service(args.agent_service)
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    environ = dict(os.environ)
    loaded = gather_helmfile(args, environ)
    if local_mode(args, loaded):
        facts = asyncio.run(gather_local(args, environ, loaded))
    else:
        facts = asyncio.run(gather_cluster(args, environ, loaded))
    checks = diagnose(facts)
    for c in checks:
        log.info("doctor.check", check=c.name, status=c.status, detail=c.detail)
    if args.output == "table":
        print(render(checks, fancy=fancy_output(sys.stdout, environ)))
    else:
        from devstack.cli.cluster_up import dump

        print(dump(as_json(facts, checks), args.output))
    return exit_code(checks)
