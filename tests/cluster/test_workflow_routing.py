"""Stories 3 and 4 of alice's day against a cluster (tests/cluster/test_workflow.py
has 1, 2 and 7), on the testbed's real control plane, with the shop of
examples/shop: web calls api, which calls stock, each through the router
(Traefik) with the routing key passed on by devstack's propagation helpers.

- story 3: a request tagged with alice's routing key, sent to web, goes
  through the baselines of web and api and reaches alice's copy of stock, two
  hops deep; an untagged request reaches the baselines all the way. Traefik's
  own access log says, at each hop, which process it sent the request to and
  the ``baggage`` header it carried;
- story 4: the preview URL `devstack urls` gives for alice's copy reaches it
  with no header set.

Everything is real but the containers (kwok runs none):

- the shop's three **baselines** are deployed as a platform team would, with
  Helm's engine (helm-python-sdk) from the example chart, the Helmfile's
  values and ``devstack: {enabled: true, owner: "", sidecar: {enabled:
  false}}`` (a routed baseline, docs/helm.md: the routing labels and the
  provisioning hooks, no sidecar), in ``needs`` order. Their provisioning
  hooks run for real against moto (``devstack.provision.podLabels`` puts the
  testbed's run-locally label on the hook pods, and
  :class:`tests.support.helm.JobRunner` plays their kubelet);
- alice's **copy** of stock comes from ``devstack up stock``, the command
  line, against the testbed (with its hook, likewise);
- the **cluster's agent** runs from its chart (tests/support/chart_agent.py)
  and routes the Services by the labels the chart put on them; **real
  Traefik** reads the API server (the ``traefik_access`` fixture of
  tests/cluster/test_routing_traefik.py);
- each **app** (web, api, stock and alice's stock) is the example's own
  ``app.py``, run as a local process on 127.0.0.1 with the environment its
  Deployment's app container gives it: its ``env``, and its ``envFrom`` read
  from the server (for stock, the queue URL its provisioning hook wrote).
  The router URL and the hosts of the services an app calls come from
  there too: the chart's ``env`` value, which the Helmfile sets
  (examples/shop/cluster.yaml, and each release's host on the agent's
  domain: ``API_HOST=api.localtest.me``, ``STOCK_HOST=stock.localtest.me``).
  The test changes the router URL in its copy of cluster.yaml to the
  Traefik entry point, as a user sets it to their cluster's Traefik
  Service. A few variables are added, standing in for the pod network and
  the pod's credentials: ``PORT`` is a free port, ``LOCAL=1`` makes the app
  bind 127.0.0.1, and the AWS credentials are moto's test ones. Each
  Deployment is scaled to 0 once deployed: its Service's own
  EndpointSlice (kwok's pod IPs, 10.0.0.x, lead nowhere) then empties, and
  an EndpointSlice of ours points the Service at the process. It is an
  ``FQDN`` slice because the API server refuses 127.0.0.1 in an ``IPv4``
  one (see test_routing_traefik.py).

The apps say who answered: each answer holds the app's ``service`` and its
``owner`` (``DEVSTACK_OWNER``, which the chart sets from ``devstack.owner``;
``baseline`` when empty) and the routing key it saw, with the answer of the
service it called nested in it.

One stack (module-scoped) serves the three tests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python
import httpx
import pytest
import yaml

from devstack.cli.cluster_up import injected_values
from devstack.core.helmfile import Release, load
from devstack.core.helmfile.values import merge
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL, owner_from_baggage, parse_baggage
from tests.cluster.test_routing_traefik import (  # the module's Traefik access (fixture)
    SLICE_MANAGER,
    TraefikAccess,
    traefik_access,  # noqa: F401
)
from tests.cluster.test_workflow import devstack, flags, helm_releases
from tests.helm.charts import prepare_example
from tests.support.aws import Backend, moto_endpoint  # noqa: F401
from tests.support.chart_agent import chart_agent
from tests.support.helm import JobRunner
from tests.support.net import free_port
from tests.support.testbed import LOCAL_RUN_LABEL, REPO, Kube, Testbed, wait_for
from tests.support.traefik import CrdTraefik

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

Obj = dict[str, Any]

SHOP = REPO / "examples" / "shop"
#: What a platform team adds to a baseline's values (docs/helm.md, "routed baseline").
BASELINE = {"devstack": {"enabled": True, "owner": "", "sidecar": {"enabled": False}}}
DOMAIN = "localtest.me"  # the agent chart's domain
ALICE_STOCK = "stock--alice"
#: The baggage alice's request carries: her routing key among other members
#: (one with a property, one percent-encoded), as a traced app would send it.
TAGGED_BAGGAGE = "tenant=t1,devstack-route=alice;p=1,user=a%20b"
#: W3C baggage: list-members ``key = value *(; property)`` separated by commas
#: (https://www.w3.org/TR/baggage/#header-content; keys are RFC 7230 tokens).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_PROPERTY = rf"{_TOKEN}(?:\s*=\s*{_VALUE})?"
_MEMBER = rf"\s*{_TOKEN}\s*=\s*{_VALUE}\s*(?:;\s*{_PROPERTY}\s*)*"
W3C_BAGGAGE = re.compile(rf"^{_MEMBER}(?:,{_MEMBER})*$")
SLICES = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
WAIT = 120.0  # seconds: generous, for a busy 2-core machine


@dataclass
class App:
    """One of the shop's processes, standing in for its release's pod."""

    release: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Hop:
    """One request Traefik forwarded (an entry of its access log)."""

    host: str
    path: str
    app: str  # the release of the process it went to
    baggage: str | None
    route_header: str | None


@dataclass
class Shop:
    admin: Kube
    namespace: str
    alice: list[str]
    env: dict[str, str]
    traefik: CrdTraefik
    access_log: Path
    apps: dict[str, App]
    hook_jobs: list[str]
    moto: Backend
    http: httpx.Client

    def get(self, host: str, path: str, headers: dict[str, str] | None = None) -> Any:
        """GET ``path`` through Traefik, as ``host``: the JSON answer (or the
        status, when not 200)."""
        r = self.http.get(self.traefik.url + path, headers={"Host": host, **(headers or {})})
        return r.json() if r.status_code == 200 else r.status_code

    def access_offset(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def hops(self, offset: int, count: int) -> list[Hop]:
        """The ``count`` requests Traefik logged after ``offset``, by host
        (waiting for them: an entry is written once its response is sent)."""
        by_port = {a.port: a.release for a in self.apps.values()}

        def logged() -> list[Hop] | None:
            with self.access_log.open("rb") as f:
                f.seek(offset)
                lines = [json.loads(line) for line in f.read().splitlines() if line.strip()]
            if len(lines) < count:
                return None
            hops = []
            for e in lines:
                address = str(e.get("ServiceAddr", ""))
                port = int(address.rpartition(":")[2]) if address.startswith("127.0.0.1:") else 0
                hops.append(
                    Hop(
                        e["RequestHost"],
                        e["RequestPath"],
                        by_port.get(port, address),
                        e.get("request_Baggage"),
                        e.get("request_X-Devstack-Route"),
                    )
                )
            return hops

        found: list[Hop] = wait_for(logged, timeout=30)
        assert len(found) == count, found
        return found

    def drain(self) -> None:
        """Empty stock's two queues (of what earlier requests reserved)."""
        self.messages("reservations")
        self.messages("alice-reservations")

    def messages(self, queue: str) -> list[Obj]:
        """Every message on ``queue`` (received, so each is seen once)."""
        sqs = self.moto.client("sqs")
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        out: list[Obj] = []
        while True:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                return out
            out += [json.loads(m["Body"]) for m in got]


def in_chain_order(hops: list[Hop]) -> list[Hop]:
    """web's hop, api's, stock's (the log has them as they ended: stock's first)."""
    order = {f"{s}.{DOMAIN}": i for i, s in enumerate(("web", "api", "stock"))}
    return sorted(hops, key=lambda h: order[h.host])


def who(answer: Any) -> list[tuple[str, str, str]]:
    """(service, owner, routing key seen) of each app along an answer's chain."""
    chain = []
    while isinstance(answer, dict):
        chain.append((answer["service"], answer["owner"], answer["routing_key"]))
        answer = answer.get("api") or answer.get("stock")
    return chain


# --- the stack ----------------------------------------------------------------------------


def _namespace(admin: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(lambda: admin.maybe(f"/api/v1/namespaces/{name}/serviceaccounts/default"))
    return name


#: The router URL examples/shop/cluster.yaml gives the pods, for the user to change.
DOCUMENTED_ROUTER = "http://traefik.traefik.svc.cluster.local"


def _project(root: Path, moto_url: str, router_url: str) -> Path:
    """The shop and the example chart (its library chart vendored) in ``root``,
    where the Helmfile finds them, each release's hooks reaching moto and
    their pods run here (a values entry added to each release), and the
    router URL of cluster.yaml set to ``router_url``, as a user sets it to
    their cluster's Traefik Service."""
    prepare_example(root)
    shop = root / "examples" / "shop"
    shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns("__pycache__", ".devstack"))
    cluster = shop / "cluster.yaml"
    text = cluster.read_text()
    assert f"  DEVSTACK_ROUTER_URL: {DOCUMENTED_ROUTER}\n" in text, text
    cluster.write_text(text.replace(DOCUMENTED_ROUTER, router_url))
    helmfile = shop / "helmfile.yaml"
    doc = yaml.safe_load(helmfile.read_text())
    provision = {"endpoint": moto_url, "podLabels": {LOCAL_RUN_LABEL: "true"}}
    for release in doc["releases"]:
        assert release["chart"] == "../chart", release
        release["values"].append({"devstack": {"provision": provision}})
    helmfile.write_text(yaml.safe_dump(doc, sort_keys=False))
    return helmfile


def _workload(admin: Kube, namespace: str, release: str) -> tuple[Obj, Obj]:
    """The release's app Deployment and its Service (named alike by the chart)."""
    (deployment,) = admin.get(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        labelSelector=f"app.kubernetes.io/instance={release}",
    )["items"]
    name = deployment["metadata"]["name"]
    return deployment, admin.get(f"/api/v1/namespaces/{namespace}/services/{name}")


def _container_env(admin: Kube, namespace: str, container: Obj) -> dict[str, str]:
    """The environment the kubelet gives ``container``: its ``envFrom`` (as
    read from the server now), then its ``env``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or ():
        if "configMapRef" in source:
            ref = source["configMapRef"]
            found = admin.maybe(f"/api/v1/namespaces/{namespace}/configmaps/{ref['name']}")
            data = (found or {}).get("data") or {}
        else:
            ref = source["secretRef"]
            found = admin.maybe(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
            raw = (found or {}).get("data") or {}
            data = {k: base64.b64decode(v).decode() for k, v in raw.items()}
        assert found is not None or ref.get("optional"), f"envFrom {ref['name']}: missing"
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for item in container.get("env") or ():
        assert "valueFrom" not in item, f"env {item['name']}: a source this test does not resolve"
        env[item["name"]] = item.get("value", "")  # the server drops an empty value
    return env


def _start_app(shop_dir: Path, release: str, env: dict[str, str], workdir: Path) -> App:
    service = env["DEVSTACK_SERVICE"]
    port = free_port()
    log = workdir / f"{release}.log"
    full = {
        **env,
        # what the pod network and the pod's credentials would give
        "PORT": str(port),
        "LOCAL": "1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(workdir),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(shop_dir / service / "app.py")],
            cwd=shop_dir / service,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    app = App(release, port, proc, log)

    def healthy() -> bool:
        assert proc.poll() is None, f"{release} exited: {app.output()}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=60)
    return app


def _stop(app: App) -> None:
    if app.proc.poll() is None:
        app.proc.terminate()
        try:
            app.proc.wait(10)
        except subprocess.TimeoutExpired:
            app.proc.kill()
            app.proc.wait(5)


def _point_service_at(
    admin: Kube, namespace: str, deployment: Obj, service: Obj, port: int
) -> None:
    """The pod is a local process: the Deployment goes to 0 replicas, its
    Service's own EndpointSlice empties, and ours points it at 127.0.0.1."""
    name = deployment["metadata"]["name"]
    admin.merge_patch(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}", {"spec": {"replicas": 0}}
    )
    slices = SLICES.format(ns=namespace)
    svc = service["metadata"]["name"]
    wait_for(
        lambda: (
            not any(
                s.get("endpoints")
                for s in admin.get(slices, labelSelector=f"kubernetes.io/service-name={svc}")[
                    "items"
                ]
            )
        ),
        timeout=60,
    )
    (svc_port,) = service["spec"]["ports"]
    admin.create(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{svc}-loopback",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": svc,
                    "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                },
            },
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": svc_port["name"], "port": port, "protocol": "TCP"}],
        }
    )


def _traefik(access: TraefikAccess, workdir: Path) -> tuple[CrdTraefik, Path]:
    """Traefik reading the API server, with a JSON access log that keeps the
    routing headers of every request it forwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    traefik = CrdTraefik(workdir, access.server, ca_path=access.ca, token=access.token)
    access_log = workdir / "access.log"
    static = yaml.safe_load(traefik.static_path.read_text())
    static["accessLog"] = {
        "filePath": str(access_log),
        "format": "json",
        "fields": {
            "defaultMode": "keep",
            "headers": {
                "defaultMode": "drop",
                "names": {"Baggage": "keep", "X-Devstack-Route": "keep"},
            },
        },
    }
    traefik.static_path.write_text(yaml.safe_dump(static))
    return traefik.start(), access_log


@pytest.fixture(scope="module")
def shop(
    testbed: Testbed,
    traefik_access: TraefikAccess,  # noqa: F811
    moto_endpoint: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("shop")
    moto = Backend("moto", moto_endpoint, True)
    moto.wipe()
    admin = testbed.admin()
    agent_ns, apps = _namespace(admin, "t"), _namespace(admin, "apps")
    env = {"XDG_CACHE_HOME": str(tmp / "cache")}
    running: dict[str, App] = {}
    try:
        with contextlib.ExitStack() as stack:
            # Traefik first: its entry point is the router URL the Helmfile gives the pods
            traefik, access_log = _traefik(traefik_access, tmp / "traefik")
            stack.callback(traefik.stop)
            helmfile = _project(tmp / "p", moto.endpoint, traefik.url)
            chart = helmfile.parent.parent / "chart"
            alice = flags(testbed, helmfile, apps, "alice")
            (tmp / "agent").mkdir()
            values = {"scope": "namespaced", "namespaces": [apps]}
            stack.enter_context(chart_agent(testbed, admin, agent_ns, tmp / "agent", values))
            runner = stack.enter_context(JobRunner(testbed, tmp / "jobs", namespace=apps))

            # the platform team deploys the baselines, in needs order
            project = load(helmfile)
            helm = helm_python.Config(
                kubeconfig_content=testbed.admin_kubeconfig.read_text(), namespace=apps
            )
            releases: dict[str, Release] = {r.name: r for r in project.releases}
            for level in project.levels:
                for name in level:
                    r = releases[name]
                    # what `devstack up` gives a baseline it deploys
                    assert merge(BASELINE, {"devstack": {"service": name}}) == injected_values(
                        r, "baseline", ""
                    )
                    helm.install(
                        chart, name, dict(merge(r.values, BASELINE)), wait="watcher", timeout=300
                    )
            # alice's copy of stock, with the command line
            run = devstack("up", "stock", *alice, env=env)
            assert run.returncode == 0, run.stderr
            assert "stock--alice: ready" in run.stderr.splitlines(), run.stderr
            hook_jobs = [hook.job for hook in runner.runs]
            for hook in runner.runs:
                assert hook.returncode == 0, f"{hook.job}: {hook.stderr}"

            shop_dir = helmfile.parent
            #: the hosts each app calls, <service>.<the agent's domain>, as the Helmfile sets them
            calls = {"stock": {}, "api": {"STOCK_HOST": f"stock.{DOMAIN}"}}
            calls["web"] = {"API_HOST": f"api.{DOMAIN}"}
            for release in ("stock", "api", "web", ALICE_STOCK):
                deployment, service = _workload(admin, apps, release)
                (app_container,) = [
                    c
                    for c in deployment["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "app"
                ]
                app_env = _container_env(admin, apps, app_container)
                # the chart's env value: the router and the hosts, from the Helmfile
                routing = {k: app_env.get(k) for k in ("DEVSTACK_ROUTER_URL", "DEVSTACK_DOMAIN")}
                assert routing == {"DEVSTACK_ROUTER_URL": traefik.url, "DEVSTACK_DOMAIN": DOMAIN}
                hosts = {k: v for k, v in app_env.items() if k.endswith("_HOST")}
                assert hosts == calls[release.partition("--")[0]], (release, app_env)
                app = _start_app(shop_dir, release, app_env, tmp)
                running[release] = app
                _point_service_at(admin, apps, deployment, service, app.port)

            http = stack.enter_context(httpx.Client(timeout=60, trust_env=False))
            s = Shop(
                admin, apps, alice, env, traefik, access_log, running, hook_jobs, moto,
                http,
            )  # fmt: skip
            # the agent has routed every Service and Traefik has the routes
            warm_up: list[tuple[str, dict[str, str], list[tuple[str, str, str]]]] = [
                ("stock.localtest.me", {}, [("stock", "baseline", "")]),
                ("stock.localtest.me", {"baggage": "devstack-route=alice"},
                 [("stock", "alice", "alice")]),
                ("stock--alice.preview.localtest.me", {}, [("stock", "alice", "alice")]),
                ("api.localtest.me", {}, [("api", "baseline", ""), ("stock", "baseline", "")]),
                ("web.localtest.me", {}, [("web", "baseline", ""), ("api", "baseline", ""),
                                          ("stock", "baseline", "")]),
            ]  # fmt: skip
            for host, headers, expected in warm_up:
                wait_for(lambda: who(s.get(host, "/warm-up", headers)) == expected, timeout=WAIT)  # noqa: B023
            yield s
    finally:
        for app in running.values():
            _stop(app)
            print(f"{app.release} ({app.log}):\n{app.output()[-2000:]}")
        admin.delete(f"/api/v1/namespaces/{apps}")
        admin.delete(f"/api/v1/namespaces/{agent_ns}")
        wait_for(lambda: admin.maybe(f"/api/v1/namespaces/{apps}") is None, timeout=120)
        admin.close()


# --- the stories ---------------------------------------------------------------------------


def sidecar_objects(admin: Kube, namespace: str, release: str) -> set[str]:
    """``kind role`` of the release's sync Service and route and token Secret."""
    selector = f"app.kubernetes.io/instance={release},devstack.dev/role in (sync,token)"
    found = set()
    for kind, path in (
        ("Service", f"/api/v1/namespaces/{namespace}/services"),
        ("Secret", f"/api/v1/namespaces/{namespace}/secrets"),
        ("IngressRoute", f"/apis/traefik.io/v1alpha1/namespaces/{namespace}/ingressroutes"),
    ):
        for o in admin.get(path, labelSelector=selector)["items"]:
            found.add(f"{kind} {o['metadata']['labels']['devstack.dev/role']}")
    return found


def test_the_baselines_are_routed_without_a_sidecar(shop: Shop) -> None:
    """sidecar.enabled false: the routing labels and the provisioning hooks,
    no sidecar, workspace, token or sync route; alice's copy has them all."""
    admin, ns = shop.admin, shop.namespace
    assert helm_releases(admin, ns) == {
        "stock": "deployed",
        "api": "deployed",
        "web": "deployed",
        ALICE_STOCK: "deployed",
    }
    for release in ("stock", "api", "web", ALICE_STOCK):
        deployment, service = _workload(admin, ns, release)
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]
        containers = [c["name"] for c in pod["spec"]["containers"]]
        volumes = {v["name"] for v in pod["spec"].get("volumes") or ()}
        copy = release == ALICE_STOCK
        service_name = release.partition("--")[0]
        # the routing labels the agent routes by: the service, and the owner of a copy only
        for obj in (deployment, service):
            labels = obj["metadata"]["labels"]
            assert labels[SERVICE_LABEL] == service_name, (release, labels)
            assert labels.get(OWNER_LABEL) == ("alice" if copy else None), (release, labels)
        # the sidecar, its workspace, token, sync Service and route: the copy's only
        assert containers == (["app", "devstack-sidecar"] if copy else ["app"]), release
        assert ("devstack-workspace" in volumes) is copy, (release, volumes)
        assert ("devstack.dev/sync" in pod["metadata"]["labels"]) is copy, release
        assert sidecar_objects(admin, ns, release) == (
            {"Service sync", "IngressRoute sync", "Secret token"} if copy else set()
        ), release
        # the provisioning hook ran for each (its outputs are what the app reads)
        assert f"{name}-devstack-provision" in shop.hook_jobs, shop.hook_jobs
        assert admin.maybe(f"/api/v1/namespaces/{ns}/configmaps/{name}-devstack-aws")
    # the agent routes the three baselines and alice's copy
    routes = {
        r["metadata"]["name"]
        for r in admin.get(f"/apis/traefik.io/v1alpha1/namespaces/{ns}/ingressroutes")["items"]
    }
    assert {"devstack-stock", "devstack-api", "devstack-web", "devstack-stock--alice"} <= routes
    # stock's queues, the baseline's own and alice's, and nothing else: a release
    # provisions only what its own values declare (api and web nothing; the
    # example chart's values.yaml declares no resources for every release)
    assert shop.moto.everything() == {"sqs reservations", "sqs alice-reservations"}


def test_a_tagged_request_reaches_alices_stock_two_hops_deep(shop: Shop) -> None:
    """Story 3. Tagged with alice's key: the baselines of web and api, then
    alice's copy of stock, which records the reservation on her queue.
    Untagged: the baselines all the way, the baseline's queue."""
    shop.drain()
    offset = shop.access_offset()
    answer = shop.get("web.localtest.me", "/tagged-teapot", {"baggage": TAGGED_BAGGAGE})
    assert who(answer) == [
        ("web", "baseline", "alice"),
        ("api", "baseline", "alice"),
        ("stock", "alice", "alice"),
    ], answer
    assert answer["api"]["stock"]["sent"] is True
    # Traefik's record of the three hops: which process each went to, and its baggage
    web, api, stock = in_chain_order(shop.hops(offset, 3))
    assert [(h.host, h.path, h.app) for h in (web, api, stock)] == [
        ("web.localtest.me", "/tagged-teapot", "web"),
        ("api.localtest.me", "/tagged-teapot", "api"),
        ("stock.localtest.me", "/tagged-teapot", ALICE_STOCK),
    ]
    # every hop carries alice's baggage as she sent it: every member, with its
    # properties and in order (web's propagation helpers pass it on to api,
    # api's to stock), a W3C baggage header whose one routing key routed it
    for hop in (web, api, stock):
        assert hop.baggage == TAGGED_BAGGAGE, hop
        assert W3C_BAGGAGE.match(hop.baggage), hop
        assert parse_baggage(hop.baggage) == [
            ("tenant", "t1"),
            ("devstack-route", "alice"),
            ("user", "a b"),
        ], hop
        assert owner_from_baggage(hop.baggage) == "alice", hop
    for hop in (api, stock):  # the helpers add the plain header for older apps too
        assert hop.route_header == "alice", hop
    # alice's copy used her queue; the baseline's queue saw nothing of it
    assert shop.messages("alice-reservations") == [{"item": "tagged-teapot", "by": "alice"}]
    assert shop.messages("reservations") == []

    # untagged: the baselines all the way, and no routing header at any hop
    offset = shop.access_offset()
    answer = shop.get("web.localtest.me", "/plain-teapot")
    assert who(answer) == [
        ("web", "baseline", ""),
        ("api", "baseline", ""),
        ("stock", "baseline", ""),
    ], answer
    hops = in_chain_order(shop.hops(offset, 3))
    assert [(h.host, h.app, h.baggage, h.route_header) for h in hops] == [
        ("web.localtest.me", "web", None, None),
        ("api.localtest.me", "api", None, None),
        ("stock.localtest.me", "stock", None, None),
    ]
    assert shop.messages("reservations") == [{"item": "plain-teapot", "by": "baseline"}]
    assert shop.messages("alice-reservations") == []


def test_alices_preview_url_reaches_her_copy(shop: Shop) -> None:
    """Story 4. `devstack urls` gives alice's preview URL; it reaches her copy
    of stock with no header set (the agent's middleware tags the request
    with her key); the baselines' URLs reach the baselines."""
    run = devstack("urls", "-o", "json", *shop.alice, env=shop.env)
    assert run.returncode == 0, run.stderr
    urls = {(u["service"], u["owner"]): u["url"] for u in json.loads(run.stdout)["urls"]}
    assert urls == {
        ("stock", "alice"): "http://stock--alice.preview.localtest.me",
        ("stock", ""): "http://stock.localtest.me",
        ("api", ""): "http://api.localtest.me",
        ("web", ""): "http://web.localtest.me",
    }
    preview = urlsplit(urls[("stock", "alice")])
    shop.drain()
    offset = shop.access_offset()
    answer = shop.get(preview.netloc, preview.path + "/preview-teapot")
    assert who(answer) == [("stock", "alice", "alice")], answer
    (hop,) = shop.hops(offset, 1)
    assert (hop.host, hop.app) == ("stock--alice.preview.localtest.me", ALICE_STOCK)
    assert shop.messages("alice-reservations") == [{"item": "preview-teapot", "by": "alice"}]
    # the baselines' URLs, untagged, reach the baselines
    for service in ("stock", "api", "web"):
        url = urlsplit(urls[(service, "")])
        assert who(shop.get(url.netloc, "/"))[0] == (service, "baseline", ""), service
