"""devstack.agent.kube, the one module that talks to the Kubernetes API,
against the testbed's real API server: its real answers to lists, watches
(from a list's ``resourceVersion``, with label selectors, 410 Gone after a
restart), the three patch types, conditional writes and deletes, field
selectors, and the statuses that become devstack's errors (401, 403, 404,
409, 410, 422). Also the ConfigMap/Secret API the provisioning engine uses,
and kubeconfig merging with a real server's credentials.

429, 500 and 503 with ``Retry-After`` come from the fault proxy in front of
the real server (tests/support/faultproxy.py). The forms of ``Retry-After``
neither sends (an HTTP-date, ``details`` alone, an ERROR event inside a
watch) stay on the emulator: tests/agent/test_kube.py.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.agent import kube as k8s
from devstack.core.errors import ConfigError, PermanentError, TemporaryError
from tests.support.faultproxy import Rule, running_fault_proxy
from tests.support.testbed import Kube, Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CMS = k8s.CONFIG_MAPS


def _service(namespace: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }


async def _events(stream: AsyncIterator[k8s.WatchEvent], count: int) -> list[tuple[str, str]]:
    """The next ``count`` events but bookmarks: (type, name)."""
    out: list[tuple[str, str]] = []

    async def collect() -> None:
        async for event in stream:
            if event["type"] != "BOOKMARK":
                out.append((event["type"], event["object"]["metadata"]["name"]))
                if len(out) == count:
                    return

    await asyncio.wait_for(collect(), 60)
    return out


async def test_config_maps_and_secrets_are_applied_exactly_and_deleted(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps/out"
    async with k8s.kube_client(str(testbed.admin_kubeconfig)) as api:
        await k8s.apply_config_map(
            api, namespace=namespace, name="out", data={"a": "1", "b": "2"}, labels={"x": "y"}
        )
        first = admin.get(path)
        assert first["data"] == {"a": "1", "b": "2"}
        # Applying the same again writes nothing: the server's resourceVersion stays.
        await k8s.apply_config_map(
            api, namespace=namespace, name="out", data={"a": "1", "b": "2"}, labels={"x": "y"}
        )
        assert (
            admin.get(path)["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        )
        # A changed apply holds exactly the new data; a label someone else added stays.
        admin.merge_patch(path, {"metadata": {"labels": {"team": "t"}}})
        await k8s.apply_config_map(
            api, namespace=namespace, name="out", data={"a": "9"}, labels={"x": "y"}
        )
        now = admin.get(path)
        assert now["data"] == {"a": "9"}
        assert now["metadata"]["labels"] == {"x": "y", "team": "t"}

        await k8s.apply_secret(
            api, namespace=namespace, name="creds", data={"password": "s3cret"}, labels={}
        )
        secret = admin.get(f"/api/v1/namespaces/{namespace}/secrets/creds")
        assert secret["type"] == "Opaque"
        assert base64.b64decode(secret["data"]["password"]) == b"s3cret"

        await k8s.delete_config_map(api, namespace=namespace, name="out")
        await k8s.delete_secret(api, namespace=namespace, name="creds")
        await k8s.delete_secret(api, namespace=namespace, name="creds")  # gone already: fine
    assert admin.maybe(path) is None
    assert admin.maybe(f"/api/v1/namespaces/{namespace}/secrets/creds") is None


async def test_the_servers_refusals_become_devstack_errors(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    async with k8s.kube_client(str(testbed.admin_kubeconfig)) as api:
        # 404: not there
        with pytest.raises(k8s.NotFoundError) as missing:
            await api.get(CMS, namespace=namespace, name="nothing")
        assert missing.value.status == 404 and isinstance(missing.value, PermanentError)
        assert await api.get_or_none(CMS, namespace=namespace, name="nothing") is None
        with pytest.raises(k8s.NotFoundError):
            await api.delete(CMS, namespace=namespace, name="nothing", missing_ok=False)
        await api.delete(CMS, namespace=namespace, name="nothing")  # missing_ok

        # 409 AlreadyExists, then 409 Conflict on a stale resourceVersion
        cm = {"metadata": {"name": "cm", "namespace": namespace}, "data": {"k": "1"}}
        created = await api.create(CMS, cm)
        with pytest.raises(k8s.ConflictError) as exists:
            await api.create(CMS, cm)
        assert exists.value.status == 409 and isinstance(exists.value, TemporaryError)
        updated = await api.replace(CMS, {**created, "data": {"k": "2"}})
        assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
        with pytest.raises(k8s.ConflictError):
            await api.replace(CMS, {**created, "data": {"k": "3"}})  # created's version is stale
        # a merge patch that names a stale resourceVersion is refused too
        with pytest.raises(k8s.ConflictError):
            await api.patch(
                CMS,
                namespace=namespace,
                name="cm",
                patch={"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}},
            )
        # a delete of another incarnation (uid precondition) is refused; of this one, done
        with pytest.raises(k8s.ConflictError):
            await api.delete(CMS, namespace=namespace, name="cm", uid=str(uuid.uuid4()))
        await api.delete(CMS, namespace=namespace, name="cm", uid=created["metadata"]["uid"])
        assert await api.get_or_none(CMS, namespace=namespace, name="cm") is None

        # 422: invalid
        with pytest.raises(k8s.KubeRequestError) as invalid:
            await api.create(CMS, {"metadata": {"name": "Not_A_Name", "namespace": namespace}})
        assert invalid.value.status == 422 and isinstance(invalid.value, PermanentError)
        routes, _ = k8s.traefik_resources()
        with pytest.raises(k8s.KubeRequestError) as schema:
            await api.create(
                routes,
                {
                    "apiVersion": "traefik.io/v1alpha1",
                    "kind": "IngressRoute",
                    "metadata": {"name": "r", "namespace": namespace},
                    "spec": {"routes": [{"kind": "Rule"}]},  # no match: the CRD requires it
                },
            )
        assert schema.value.status == 422

    # 403: a ServiceAccount that is granted nothing
    sa = testbed.service_account_kubeconfig(namespace, "default", tmp_path / "sa.kubeconfig")
    async with k8s.kube_client(str(sa)) as api:
        with pytest.raises(k8s.KubeAuthError) as refused:
            await api.list(k8s.SERVICES)
        assert refused.value.status == 403 and isinstance(refused.value, PermanentError)
        assert isinstance(refused.value, k8s.KubeForbiddenError)
        assert refused.value.reason == "forbidden"

    # 401: a token the server never issued
    forged = yaml.safe_load(sa.read_text())
    forged["users"][0]["user"] = {"token": "not-a-token"}
    (tmp_path / "forged.kubeconfig").write_text(yaml.safe_dump(forged))
    async with k8s.kube_client(str(tmp_path / "forged.kubeconfig")) as api:
        with pytest.raises(k8s.KubeAuthError) as unknown:
            await api.list(k8s.SERVICES)
        assert unknown.value.status == 401
        assert unknown.value.reason == "unauthenticated"


async def test_a_list_then_a_watch_from_its_version_misses_nothing_and_replays_nothing(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    admin.create(_service(namespace, "early", {"app": "shop"}))
    async with k8s.kube_client(str(testbed.admin_kubeconfig)) as api:
        items, rv = await api.list(k8s.SERVICES, namespace=namespace)
        assert [i["metadata"]["name"] for i in items] == ["early"]
        assert rv and int(rv) >= int(items[0]["metadata"]["resourceVersion"])

        # what happens after the list, a watch from its version sees, in order
        admin.create(_service(namespace, "late", {"app": "shop"}))
        admin.merge_patch(
            f"/api/v1/namespaces/{namespace}/services/early", {"metadata": {"labels": {"v": "2"}}}
        )
        admin.delete(f"/api/v1/namespaces/{namespace}/services/late")
        stream = api.watch(k8s.SERVICES, namespace=namespace, resource_version=rv)
        assert await _events(stream, 3) == [
            ("ADDED", "late"),
            ("MODIFIED", "early"),
            ("DELETED", "late"),
        ]
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_list_in_pages_is_one_snapshot_transformed_page_by_page(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    """The real server's ``limit``/``continue``: seven objects in pages of
    three are all there, once each, with the snapshot's version, each seen
    by ``transform`` as its page arrived; an object created between the
    pages is not in the snapshot, and a watch from its version sees it."""
    for i in range(7):
        admin.create(_service(namespace, f"s{i}", {"app": "shop"}))
    seen: list[str] = []

    def transform(obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        seen.append(name)
        if name == "s3":  # the second page is being read: a newcomer now
            admin.create(_service(namespace, "newcomer", {"app": "shop"}))
        return {"metadata": {"name": name}}

    async with k8s.kube_client(str(testbed.admin_kubeconfig)) as api:
        items, rv = await api.list(
            k8s.SERVICES,
            namespace=namespace,
            label_selector="app=shop",
            transform=transform,
            page_size=3,
        )
        names = [f"s{i}" for i in range(7)]
        assert [i["metadata"] for i in items] == [{"name": n} for n in names]
        assert seen == names
        whole, whole_rv = await api.list(k8s.SERVICES, namespace=namespace, page_size=0)
        assert int(whole_rv) > int(rv)  # the newcomer came after the snapshot
        assert "newcomer" in {i["metadata"]["name"] for i in whole}
        stream = api.watch(k8s.SERVICES, namespace=namespace, resource_version=rv)
        assert await _events(stream, 1) == [("ADDED", "newcomer")]
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_label_selected_watch_sees_objects_enter_and_leave_the_selection(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/services"
    admin.create(_service(namespace, "in", {"devstack.dev/service": "shop"}))
    admin.create(_service(namespace, "out", {"team": "x"}))
    async with k8s.kube_client(str(testbed.admin_kubeconfig)) as api:
        items, rv = await api.list(
            k8s.SERVICES, namespace=namespace, label_selector="devstack.dev/service"
        )
        assert [i["metadata"]["name"] for i in items] == ["in"]
        stream = api.watch(
            k8s.SERVICES,
            namespace=namespace,
            resource_version=rv,
            label_selector="devstack.dev/service",
        )
        # "out" gains the label: to this watch it is ADDED; "in" loses it: DELETED
        admin.merge_patch(f"{path}/out", {"metadata": {"labels": {"devstack.dev/service": "s"}}})
        admin.merge_patch(f"{path}/in", {"metadata": {"labels": {"devstack.dev/service": None}}})
        assert await _events(stream, 2) == [("ADDED", "out"), ("DELETED", "in")]
        await stream.aclose()  # type: ignore[attr-defined]

        # a field selector (through the raw request)
        got = await api.request("GET", path, query={"fieldSelector": "metadata.name=out"})
        assert [i["metadata"]["name"] for i in got["items"]] == ["out"]


async def test_merge_json_and_strategic_patches_mean_what_the_server_says(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    svc = admin.create(
        {
            **_service(namespace, "shop"),
            "spec": {
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "admin", "port": 81, "targetPort": 8081},
                ]
            },
        }
    )
    assert svc["spec"]["clusterIP"]  # the server allocated one
    async with k8s.kube_client(str(testbed.admin_kubeconfig)) as api:
        # strategic merge: Service ports merge by port, the other one stays
        got = await api.patch(
            k8s.SERVICES,
            namespace=namespace,
            name="shop",
            patch={"spec": {"ports": [{"port": 80, "targetPort": 9090, "name": "http"}]}},
            patch_type="strategic",
        )
        assert {p["name"]: p["targetPort"] for p in got["spec"]["ports"]} == {
            "http": 9090,
            "admin": 8081,
        }
        # merge patch: a list is replaced whole; None removes a key
        got = await api.patch(
            k8s.SERVICES,
            namespace=namespace,
            name="shop",
            patch={
                "spec": {"ports": [{"name": "http", "port": 80}]},
                "metadata": {"labels": {"a": "1"}},
            },
        )
        assert [p["name"] for p in got["spec"]["ports"]] == ["http"]
        got = await api.patch(
            k8s.SERVICES, namespace=namespace, name="shop", patch={"metadata": {"labels": None}}
        )
        assert not got["metadata"].get("labels")
        # JSON patch: a failing test op refuses the whole patch (422)
        with pytest.raises(k8s.KubeRequestError) as refused:
            await api.patch(
                k8s.SERVICES,
                namespace=namespace,
                name="shop",
                patch=[
                    {"op": "test", "path": "/spec/ports/0/port", "value": 1},
                    {"op": "add", "path": "/metadata/labels", "value": {"b": "2"}},
                ],
                patch_type="json",
            )
        assert refused.value.status == 422
        got = await api.patch(
            k8s.SERVICES,
            namespace=namespace,
            name="shop",
            patch=[
                {"op": "test", "path": "/spec/ports/0/port", "value": 80},
                {"op": "add", "path": "/metadata/labels", "value": {"b": "2"}},
            ],
            patch_type="json",
        )
        assert got["metadata"]["labels"] == {"b": "2"}


async def test_a_watch_from_before_an_api_server_restart_is_gone(
    testbed: Testbed, admin: Kube, namespace: str
) -> None:
    """A restarted API server fills its watch cache afresh: a watch from an
    older resourceVersion is answered 410 Gone (an ERROR event), which the
    client raises as GoneError, a temporary error (the caller relists)."""
    admin.create(_service(namespace, "shop"))
    async with k8s.kube_client(str(testbed.admin_kubeconfig)) as api:
        _, rv = await api.list(k8s.SERVICES, namespace=namespace)
    # from this (the main) thread: the API server dies with the thread that
    # started it (PR_SET_PDEATHSIG)
    testbed.restart_apiserver()
    admin.create(_service(namespace, "after"))
    async with k8s.kube_client(str(testbed.admin_kubeconfig)) as api:
        with pytest.raises(k8s.GoneError) as gone:
            async for _ in api.watch(k8s.SERVICES, namespace=namespace, resource_version=rv):
                pass
        assert gone.value.status == 410 and isinstance(gone.value, TemporaryError)
        # relisting gives the state and a version a watch can start from
        items, again = await api.list(k8s.SERVICES, namespace=namespace)
        assert {i["metadata"]["name"] for i in items} == {"shop", "after"}
        admin.delete(f"/api/v1/namespaces/{namespace}/services/after")
        stream = api.watch(k8s.SERVICES, namespace=namespace, resource_version=again)
        assert await _events(stream, 1) == [("DELETED", "after")]
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_kubeconfig_list_is_merged_as_client_go_merges_it(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file sets current-context "b" and defines "a"; the second
    defines "b" (the testbed, with the admin's certificate), its own "a" and
    a current-context of its own. The first file's current-context wins
    (kubernetes-asyncio alone would take the last one's), and "b" comes from
    the second file: a list on the real server succeeds with its credentials."""
    admin_doc = yaml.safe_load(testbed.admin_kubeconfig.read_text())
    cluster = admin_doc["clusters"][0]["cluster"]
    user = admin_doc["users"][0]["user"]
    nowhere = "https://127.0.0.1:1"

    def doc(contexts: dict[str, str], current: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": n, "cluster": {**cluster, "server": url}} for n, url in contexts.items()
            ],
            "users": [{"name": n, "user": user} for n in contexts],
            "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in contexts],
            "current-context": current,
        }

    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text(yaml.safe_dump(doc({"a": nowhere}, "b")))
    second.write_text(yaml.safe_dump(doc({"a": testbed.server, "b": testbed.server}, "a")))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{first}:{second}")
    async with k8s.kube_client() as api:
        assert api.host == testbed.server
        items, rv = await api.list(k8s.SERVICES, namespace="default")
        assert "kubernetes" in {i["metadata"]["name"] for i in items} and rv
    # For a name both files define, the first file wins.
    async with k8s.kube_client(context="a") as api:
        assert api.host == nowhere
    with pytest.raises(ConfigError):
        async with k8s.kube_client(context="no-such-context"):
            pass


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_busy_or_failing_server_is_a_temporary_error_with_its_delay(
    testbed: Testbed, namespace: str, tmp_path: Path, status: int
) -> None:
    """Through the fault proxy, which answers as kube-apiserver does when
    it sheds load (a Status with ``retryAfterSeconds`` and a ``Retry-After``
    header) before the request reaches the server; the next request goes
    through to it."""
    with running_fault_proxy(testbed) as proxy:
        rule = proxy.add(
            Rule(method="GET", path=f"/api/v1/namespaces/{namespace}/configmaps", status=status,
                 retry_after=3)
        )  # fmt: skip
        kubeconfig = testbed.service_account_kubeconfig(
            namespace, "default", tmp_path / "kc", server=proxy.url
        )
        async with k8s.kube_client(str(kubeconfig)) as api:
            with pytest.raises(k8s.KubeTemporaryError) as caught:
                await api.list(CMS, namespace=namespace)
            assert caught.value.status == status and caught.value.delay == 3.0
            assert isinstance(caught.value, TemporaryError)
            assert rule.spent
            # the server itself answers the next one (a refusal: the account is granted nothing)
            with pytest.raises(k8s.KubeAuthError):
                await api.list(CMS, namespace=namespace)
