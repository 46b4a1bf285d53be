"""The Kubernetes client module: the delays a server asks for, kubeconfig
selection in kubectl's order, and the environment's proxy; no server, or the
emulator where a test needs an answer that neither the real server nor the
fault proxy in front of it gives (an HTTP-date ``Retry-After``, ERROR events
inside a watch stream).

Its real answers (lists, watches, patches, 401/403/404/409/410/422, 429/5xx
through the fault proxy, the ConfigMap/Secret API) are tested against the
real API server: tests/cluster/test_kube_client.py."""

from __future__ import annotations

import datetime
import email.utils
from pathlib import Path
from typing import Any

import certifi
import pytest
import yaml

from devstack.agent import kube as k8s
from devstack.core.errors import ConfigError
from tests.support.kube import EmulatorThread
from tests.support.net import free_port

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("headers", "body", "delay"),
    [
        pytest.param({"Retry-After": "2"}, None, 2.0, id="seconds"),
        pytest.param({"retry-after": "0.5"}, None, 0.5, id="fractional-seconds"),
        pytest.param({"Retry-After": "Sun, 01 Mar 2026 12:00:30 GMT"}, None, 30.0, id="http-date"),
        pytest.param(
            {"Retry-After": "Sun, 01 Mar 2026 11:00:00 GMT"}, None, 0.0, id="http-date-past"
        ),
        pytest.param(None, {"details": {"retryAfterSeconds": 4}}, 4.0, id="status-details"),
        pytest.param(
            {"Retry-After": "1"}, {"details": {"retryAfterSeconds": 5}}, 5.0, id="longer-wins"
        ),
        pytest.param({"Retry-After": "soon"}, None, None, id="garbage"),
        pytest.param({"Retry-After": "inf"}, None, None, id="not-finite"),
        pytest.param(None, {"details": {"retryAfterSeconds": "4"}}, None, id="details-not-int"),
        pytest.param(None, {"message": "x"}, None, id="none"),
    ],
)
def test_retry_after_forms(
    headers: dict[str, str] | None, body: dict[str, Any] | None, delay: float | None
) -> None:
    assert k8s.retry_after(headers, body, now=NOW) == delay


@pytest.mark.parametrize(
    ("retry_after", "where", "header", "details"),
    [
        pytest.param(0.2, None, "1", 1, id="fraction-rounds-up-not-down"),
        pytest.param(3, None, "3", 3, id="whole"),
        pytest.param(2, {"details"}, None, 2, id="details-only"),
        pytest.param(
            "Sun, 01 Mar 2026 12:00:30 GMT",
            None,
            "Sun, 01 Mar 2026 12:00:30 GMT",
            None,
            id="http-date-verbatim",
        ),
    ],
)
async def test_the_emulator_advertises_proper_retry_after_values(
    kube: EmulatorThread,
    retry_after: float | str,
    where: set[str] | None,
    header: str | None,
    details: int | None,
) -> None:
    """The emulator itself (the tests above and tests/agent/test_retries.py
    rely on it): it sends Retry-After as a real API server does."""
    import aiohttp

    kube.emulator.fail(
        429, verbs={"list"}, plural="services", retry_after=retry_after, retry_after_in=where
    )
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{kube.url}/api/v1/services") as r,
    ):
        body = await r.json()
    assert r.status == 429
    assert r.headers.get("Retry-After") == header
    assert (body.get("details") or {}).get("retryAfterSeconds") == details


async def test_a_watch_error_event_carries_its_retry_after(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    """Stays on the emulator: an exact injected failure (a 429 ERROR event
    inside a watch stream), which no real server sends on demand."""
    kube.emulator.fail(429, verbs={"watch"}, in_stream=True, retry_after=6)
    async with k8s.kube_client(str(kubeconfig)) as api:
        with pytest.raises(k8s.KubeTemporaryError) as caught:
            async for _ in api.watch(k8s.SERVICES, resource_version="1"):
                pass
    assert caught.value.delay == 6.0


async def test_an_http_date_retry_after_from_the_server(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    """Stays on the emulator: an injected 503 with an HTTP-date Retry-After,
    which no real server sends on demand."""
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    kube.emulator.fail(
        503, verbs={"list"}, retry_after=email.utils.format_datetime(later, usegmt=True)
    )
    async with k8s.kube_client(str(kubeconfig)) as api:
        with pytest.raises(k8s.KubeTemporaryError) as caught:
            await api.list(k8s.SERVICES)
    assert caught.value.delay is not None and 3500 < caught.value.delay <= 3600


async def test_a_watch_error_event_is_an_error(kube: EmulatorThread, kubeconfig: Path) -> None:
    """Stays on the emulator: an injected 500 ERROR event inside a watch
    (a real server's 410 one is in tests/cluster/test_kube_client.py)."""
    kube.emulator.fail(500, verbs={"watch"}, in_stream=True)
    async with k8s.kube_client(str(kubeconfig)) as api:
        with pytest.raises(k8s.KubeTemporaryError):
            async for _ in api.watch(k8s.SERVICES, resource_version="1"):
                pass


async def test_the_emulator_pages_a_list_as_the_real_server_does(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    """The agent benchmarks list tens of thousands of objects from the
    emulator, in pages: its ``limit``/``continue`` gives each object once,
    in (namespace, name) order, every page with the first page's version
    (the real server's paging: tests/cluster/test_kube_client.py)."""
    emu = kube.emulator
    services = emu.resource("v1", "services")
    for ns, name in [("b", "x"), ("a", "z"), ("a", "y"), ("b", "w"), ("a", "v")]:
        emu.create(services, {"metadata": {"name": name, "namespace": ns}, "spec": {}})
    pages: list[int] = []
    async with k8s.kube_client(str(kubeconfig)) as api:
        items, rv = await api.list(
            k8s.SERVICES, transform=lambda o: pages.append(1) or o, page_size=2
        )
        whole, whole_rv = await api.list(k8s.SERVICES, page_size=0)
    keys = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]
    assert keys == [("a", "v"), ("a", "y"), ("a", "z"), ("b", "w"), ("b", "x")]
    assert rv == whole_rv and len(whole) == 5 and len(pages) == 5
    lists = [r for r in emu.log if r.plural == "services" and r.verb == "list"]
    assert len(lists) == 4  # three pages, then the whole list


async def test_no_answer_is_unreachable(tmp_path: Path) -> None:
    cfg = tmp_path / "kc"
    cfg.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    async with k8s.kube_client(str(cfg), request_timeout=2) as api:
        with pytest.raises(k8s.KubeUnreachableError):
            await api.list(k8s.SERVICES)


def _kubeconfig(path: Path, contexts: dict[str, str], current: str | None) -> Path:
    """A kubeconfig with one cluster per context (context name -> server)."""
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in contexts.items()],
        "users": [{"name": n, "user": {"token": f"token-{n}"}} for n in contexts],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in contexts],
    }
    if current is not None:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def no_kube_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No KUBECONFIG, an empty home, not in a pod; returns the home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setattr(k8s, "_SERVICE_ACCOUNT_DIR", tmp_path / "no-service-account")
    return home


def _pretend_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int) -> str:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    # Any real CA bundle will do: nothing connects to the in-cluster address.
    (account / "ca.crt").write_bytes(Path(certifi.where()).read_bytes())
    monkeypatch.setattr(k8s, "_SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
    return f"https://127.0.0.1:{port}"


async def test_kubeconfig_order_is_kubectls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_kube_env: Path
) -> None:
    """No server: only which one the client would talk to (the merge with
    a real server's credentials: tests/cluster/test_kube_client.py)."""
    emu = "http://emu.invalid:1"

    def config(name: str) -> Path:
        return _kubeconfig(
            tmp_path / f"{name}.kubeconfig", {name: f"http://{name}.invalid:1"}, current=name
        )

    in_pod = _pretend_in_cluster(tmp_path, monkeypatch, 6443)
    # Nothing but the service account: in-cluster.
    async with k8s.kube_client() as api:
        assert api.host == in_pod
    assert k8s.kubeconfig_source().origin == "in-cluster"
    # ~/.kube/config beats the service account.
    (no_kube_env / ".kube").mkdir()
    home_config = config("home")
    (no_kube_env / ".kube" / "config").write_text(home_config.read_text())
    async with k8s.kube_client() as api:
        assert api.host == "http://home.invalid:1"
    # $KUBECONFIG beats ~/.kube/config (and the service account).
    monkeypatch.setenv("KUBECONFIG", str(config("env")))
    async with k8s.kube_client() as api:
        assert api.host == "http://env.invalid:1"
    # --kubeconfig beats them all; --context picks a context in it.
    explicit = _kubeconfig(tmp_path / "explicit", {"x": "http://x.invalid:1", "emu": emu}, "x")
    async with k8s.kube_client(str(explicit)) as api:
        assert api.host == "http://x.invalid:1"
    async with k8s.kube_client(str(explicit), context="emu") as api:
        assert api.host == emu
    # $KUBECONFIG naming only missing files: no kubeconfig, so the pod's account.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    async with k8s.kube_client() as api:
        assert api.host == in_pod
    # ... and a --context cannot be found in a service account.
    with pytest.raises(ConfigError, match="--context"):
        async with k8s.kube_client(context="emu"):
            pass


async def test_no_kubeconfig_anywhere_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_kube_env: Path
) -> None:
    with pytest.raises(ConfigError, match="no kubeconfig"):
        async with k8s.kube_client():
            pass
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no kubeconfig"):
        async with k8s.kube_client():
            pass
    with pytest.raises(ConfigError, match="no such file"):
        async with k8s.kube_client(str(tmp_path / "missing")):
            pass
    broken = tmp_path / "broken"
    broken.write_text("clusters: [unclosed\n")
    with pytest.raises(ConfigError):
        async with k8s.kube_client(str(broken)):
            pass


@pytest.mark.parametrize(
    ("env", "url", "want"),
    [
        pytest.param({}, "https://api.example:6443", None, id="no-proxy-set"),
        pytest.param(
            {"HTTPS_PROXY": "http://px:3128"},
            "https://api.example:6443",
            "http://px:3128",
            id="https",
        ),
        pytest.param(
            {"https_proxy": "http://px:3128"}, "http://api.example", None, id="scheme-must-match"
        ),
        pytest.param(
            {"HTTP_PROXY": "http://px:3128", "NO_PROXY": "example,10.0.0.1"},
            "http://api.example",
            None,
            id="no-proxy-name",
        ),
        pytest.param(
            {"HTTP_PROXY": "http://px:3128", "NO_PROXY": ".example"},
            "http://k8s.api.example",
            None,
            id="no-proxy-suffix",
        ),
        pytest.param(
            {"HTTP_PROXY": "http://px:3128", "NO_PROXY": "other"},
            "http://api.example",
            "http://px:3128",
            id="no-proxy-other",
        ),
        pytest.param(
            {"HTTP_PROXY": "http://px:3128", "NO_PROXY": "*"}, "http://a", None, id="star"
        ),
    ],
)
def test_the_proxy_is_read_from_the_environment_as_kubectl_reads_it(
    env: dict[str, str], url: str, want: str | None
) -> None:
    assert k8s.proxy_for(url, env) == want


async def test_requests_go_through_the_environments_proxy_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured (as kubectl does) although aiohttp no longer
    looks the environment up on every request. The API server's address
    serves nothing: only through the proxy (which answers itself, as a
    caching proxy could) does the request get an answer."""
    from aiohttp import web

    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.json_response({"kind": "ConfigMapList", "items": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        server = f"http://127.0.0.1:{free_port()}"
        kubeconfig = _kubeconfig(tmp_path / "kubeconfig", {"c": server}, current="c")
        async with k8s.kube_client(str(kubeconfig)) as api:
            got = await api.request("GET", "/api/v1/namespaces/app/configmaps")
            assert got.get("items") == []
            assert seen == [f"{server}/api/v1/namespaces/app/configmaps"]
            # Changing the environment later changes nothing: it was read once.
            monkeypatch.setenv("NO_PROXY", "*")
            await api.request("GET", "/api/v1/namespaces/app/configmaps")
            assert len(seen) == 2
    finally:
        await runner.cleanup()
