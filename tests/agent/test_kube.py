"""The Kubernetes client module against the emulator: errors, kubeconfig
selection, and the ConfigMap/Secret API the provisioning engine uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devstack.agent import kube as k8s
from devstack.core.errors import ConfigError, PermanentError, TemporaryError
from tests.support.kube import EmulatorThread, free_port_hint, secret_value


async def test_apply_and_delete_config_maps_and_secrets(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    emu = kube.emulator
    cms, secrets = emu.resource("v1", "configmaps"), emu.resource("v1", "secrets")
    async with k8s.kube_client(str(kubeconfig)) as api:
        await k8s.apply_config_map(
            api, namespace="app", name="out", data={"a": "1", "b": "2"}, labels={"x": "y"}
        )
        first = emu.get(cms, "app", "out")
        assert first is not None and first["data"] == {"a": "1", "b": "2"}
        # Applying the same again writes nothing.
        await k8s.apply_config_map(
            api, namespace="app", name="out", data={"a": "1", "b": "2"}, labels={"x": "y"}
        )
        assert emu.get(cms, "app", "out") == first
        # A changed apply holds exactly the new data; foreign labels stay.
        emu.patch(cms, "app", "out", {"metadata": {"labels": {"team": "t"}}})
        await k8s.apply_config_map(
            api, namespace="app", name="out", data={"a": "9"}, labels={"x": "y"}
        )
        now = emu.get(cms, "app", "out")
        assert now is not None and now["data"] == {"a": "9"}
        assert now["metadata"]["labels"] == {"x": "y", "team": "t"}

        await k8s.apply_secret(
            api, namespace="app", name="creds", data={"password": "s3cret"}, labels={}
        )
        secret = emu.get(secrets, "app", "creds")
        assert secret is not None and secret["type"] == "Opaque"
        assert secret_value(secret, "password") == "s3cret"

        await k8s.delete_config_map(api, namespace="app", name="out")
        await k8s.delete_secret(api, namespace="app", name="creds")
        await k8s.delete_secret(api, namespace="app", name="creds")  # gone already: fine
        assert emu.get(cms, "app", "out") is None and emu.get(secrets, "app", "creds") is None


@pytest.mark.parametrize(
    ("status", "error", "temporary"),
    [
        (409, k8s.ConflictError, True),
        (410, k8s.GoneError, True),
        (429, k8s.KubeTemporaryError, True),
        (500, k8s.KubeTemporaryError, True),
        (503, k8s.KubeTemporaryError, True),
        (404, k8s.NotFoundError, False),
        (403, k8s.KubeAuthError, False),
        (422, k8s.KubeRequestError, False),
    ],
)
async def test_statuses_become_devstack_errors(
    kube: EmulatorThread, kubeconfig: Path, status: int, error: type[Exception], temporary: bool
) -> None:
    kube.emulator.fail(status, verbs={"list"}, plural="services", retry_after=3)
    async with k8s.kube_client(str(kubeconfig)) as api:
        with pytest.raises(error) as caught:
            await api.list(k8s.SERVICES)
    assert isinstance(caught.value, TemporaryError if temporary else PermanentError)
    assert caught.value.status == status  # type: ignore[attr-defined]
    if status in (429, 500, 503):
        assert caught.value.delay == 3.0  # type: ignore[attr-defined]


async def test_a_watch_error_event_is_an_error(kube: EmulatorThread, kubeconfig: Path) -> None:
    kube.emulator.fail(500, verbs={"watch"}, in_stream=True)
    async with k8s.kube_client(str(kubeconfig)) as api:
        with pytest.raises(k8s.KubeTemporaryError):
            async for _ in api.watch(k8s.SERVICES, resource_version="1"):
                pass


async def test_no_answer_is_unreachable(tmp_path: Path) -> None:
    cfg = tmp_path / "kc"
    cfg.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port_hint()}"}}
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


async def test_kubeconfig_from_the_environment_and_context(
    kube: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = kube.kubeconfig(tmp_path / "kc", context="emu")
    doc = yaml.safe_load(path.read_text())
    doc["clusters"].append({"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}})
    doc["contexts"].append({"name": "nowhere", "context": {"cluster": "nowhere", "user": "emu"}})
    doc["current-context"] = "nowhere"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{path}")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with k8s.kube_client(context="emu") as api:
        assert api.host == kube.url
        items, _ = await api.list(k8s.SERVICES)
        assert items == []
    with pytest.raises(ConfigError):
        async with k8s.kube_client(context="no-such-context"):
            pass
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no kubeconfig"):
        async with k8s.kube_client():
            pass
