"""Sidecar injection through values: what devstack adds to an app chart's pod, and
only when `devstack.enabled` is true."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from devstack.sidecar import command
from tests.helm.charts import Manifest, by_kind, documents, one, render

ENABLED: dict[str, Any] = {"enabled": True}
#: Where the devstack image keeps its static busybox (see the Dockerfile).
COPIER = "/opt/devstack/tools/busybox"


def _pod(docs: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment", "hello")["spec"]["template"]["spec"]
    return spec


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


@pytest.mark.parametrize(
    ("devstack", "present"),
    [
        ({}, False),
        ({"enabled": False, "owner": "alice", "sidecar": {"reload": "signal"}}, False),
        ({"enabled": True}, True),
        ({"enabled": True, "owner": "alice"}, True),
    ],
    ids=["absent", "disabled", "enabled", "enabled for alice"],
)
def test_sidecar_is_present_only_when_enabled(
    example_chart: Path, devstack: dict[str, Any], present: bool
) -> None:
    docs = documents(render(example_chart, {"devstack": devstack}))
    pod = _pod(docs)
    names = [c["name"] for c in pod["containers"]]
    assert names == (["app", "devstack-sidecar"] if present else ["app"])
    assert ("initContainers" in pod) is present
    assert bool(by_kind(docs, "IngressRoute")) is present
    assert bool(by_kind(docs, "Secret")) is present
    assert bool(by_kind(docs, "Job")) is present


def test_shared_workspace_is_mounted_in_both_containers(example_chart: Path) -> None:
    values = {"devstack": {**ENABLED, "workspace": {"path": "/srv/app"}}}
    pod = _pod(documents(render(example_chart, values)))
    volume = next(v for v in pod["volumes"] if v["name"] == "devstack-workspace")
    assert volume == {"name": "devstack-workspace", "emptyDir": {}}
    for name in ("app", "devstack-sidecar"):
        mounts = {m["name"]: m["mountPath"] for m in _container(pod, name)["volumeMounts"]}
        assert mounts["devstack-workspace"] == "/srv/app", name
    sidecar_env = {e["name"]: e.get("value") for e in _container(pod, "devstack-sidecar")["env"]}
    assert sidecar_env["DEVSTACK_WORKSPACE"] == "/srv/app"


def test_seeding_needs_nothing_in_the_app_image(example_chart: Path) -> None:
    """The devstack image hands a static copier to the app image through an emptyDir:
    the seed runs it from there, so a distroless or scratch app image works."""
    values = {"devstack": {**ENABLED, "workspace": {"path": "/srv/app"}}}
    pod = _pod(documents(render(example_chart, values)))
    tools, seed = pod["initContainers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # 1. the devstack image copies its busybox into the tools volume
    assert tools["name"] == "devstack-tools"
    assert tools["image"] == _container(pod, "devstack-sidecar")["image"]
    assert tools["command"] == [COPIER, "cp", COPIER, "/devstack-tools/busybox"]
    assert {m["name"]: m["mountPath"] for m in tools["volumeMounts"]} == {
        "devstack-tools": "/devstack-tools"
    }
    assert volumes["devstack-tools"] == {"name": "devstack-tools", "emptyDir": {}}
    assert tools["securityContext"]["runAsNonRoot"] is True
    # 2. the app image runs it from there (exec form: no shell, no tar, no cp of its own)
    assert seed["name"] == "devstack-seed"
    assert seed["image"] == _container(pod, "app")["image"]
    assert seed["command"] == [
        "/devstack-tools/busybox", "cp", "-a", "/srv/app/.", "/devstack-seed/",
    ]  # fmt: skip
    assert "args" not in seed
    mounts = {m["name"]: m for m in seed["volumeMounts"]}
    assert mounts["devstack-workspace"]["mountPath"] == "/devstack-seed"
    assert mounts["devstack-tools"] == {
        "name": "devstack-tools",
        "mountPath": "/devstack-tools",
        "readOnly": True,
    }
    # the copier comes from the volume the first init container filled, not the image
    assert seed["command"][0].startswith(mounts["devstack-tools"]["mountPath"] + "/")


def test_seed_source_can_differ_from_the_workspace(example_chart: Path) -> None:
    values = {"devstack": {**ENABLED, "workspace": {"seed": {"source": "/code/"}}}}
    _, seed = _pod(documents(render(example_chart, values)))["initContainers"]
    assert seed["command"][-2:] == ["/code/.", "/devstack-seed/"]


def test_a_custom_seed_command_runs_in_the_app_image_alone(example_chart: Path) -> None:
    command = ["/busybox/cp", "-a", "/code/.", "/devstack-seed/"]
    values = {"devstack": {**ENABLED, "workspace": {"seed": {"command": command}}}}
    pod = _pod(documents(render(example_chart, values)))
    (seed,) = pod["initContainers"]
    assert seed["command"] == command
    assert seed["image"] == _container(pod, "app")["image"]
    assert [m["name"] for m in seed["volumeMounts"]] == ["devstack-workspace"]
    assert "devstack-tools" not in {v["name"] for v in pod["volumes"]}


def test_no_seed_no_init_containers(example_chart: Path) -> None:
    values = {"devstack": {**ENABLED, "workspace": {"seed": {"enabled": False}}}}
    pod = _pod(documents(render(example_chart, values)))
    assert "initContainers" not in pod
    assert "devstack-tools" not in {v["name"] for v in pod["volumes"]}


def _all_strings(obj: Any) -> str:
    return json.dumps(obj)


@pytest.mark.parametrize("given", [True, False], ids=["user-supplied", "generated"])
def test_token_is_only_ever_in_a_secret(example_chart: Path, given: bool) -> None:
    token = "s3cret-t0ken-value-for-the-test"
    devstack: dict[str, Any] = {**ENABLED, "owner": "alice"}
    if given:
        devstack["token"] = {"value": token}
    docs = documents(render(example_chart, {"devstack": devstack}))
    secret = one(docs, "Secret", "hello-devstack-token")
    if not given:
        token = base64.b64decode(secret["data"]["token"]).decode()
        assert len(token) >= 32
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    encoded = base64.b64encode(token.encode()).decode()
    for doc in docs:
        if doc is secret:
            continue
        text = _all_strings(doc)
        assert token not in text, (doc["kind"], doc["metadata"]["name"])
        assert encoded not in text, (doc["kind"], doc["metadata"]["name"])
    # the sidecar reads it from a file, mounted from the Secret
    pod = _pod(docs)
    sidecar = _container(pod, "devstack-sidecar")
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["DEVSTACK_TOKEN_FILE"] == "/etc/devstack/token/token"
    volume = next(v for v in pod["volumes"] if v["name"] == "devstack-token")
    assert volume["secret"]["secretName"] == "hello-devstack-token"
    assert not [e for e in sidecar["env"] if "valueFrom" in e]


def test_existing_token_secret_is_used_and_not_created(example_chart: Path) -> None:
    values = {"devstack": {**ENABLED, "token": {"existingSecret": "team-token", "key": "tok"}}}
    docs = documents(render(example_chart, values))
    assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == ["hello-devstack-provision"]
    volume = next(v for v in _pod(docs)["volumes"] if v["name"] == "devstack-token")
    assert volume["secret"]["secretName"] == "team-token"
    assert volume["secret"]["items"] == [{"key": "tok", "path": "tok"}]


RELOAD_CASES: dict[str, tuple[dict[str, Any], list[str], bool]] = {
    "none": ({}, ["--reload", "none"], False),
    "signal by process name": (
        {"reload": "signal", "signal": {"processName": "gunicorn"}},
        ["--reload", "signal", "--signal", "HUP", "--process-name", "gunicorn"],
        True,
    ),
    "signal by pid file": (
        {"reload": "signal", "signal": {"name": "USR2", "pidFile": "/tmp/app.pid"}},
        ["--reload", "signal", "--signal", "USR2", "--pid-file", "/tmp/app.pid"],
        True,
    ),
    "exec": ({"reload": "exec", "exec": "npm run build"}, ["--exec", "npm run build"], False),
    "supervise": (
        {"reload": "supervise", "command": "python app.py"},
        ["--command", "python app.py"],
        False,
    ),
}


@pytest.mark.parametrize(
    ("sidecar", "expected", "shared_pids"), RELOAD_CASES.values(), ids=RELOAD_CASES.keys()
)
def test_reload_strategy_settings(
    example_chart: Path, sidecar: dict[str, Any], expected: list[str], shared_pids: bool
) -> None:
    pod = _pod(documents(render(example_chart, {"devstack": {**ENABLED, "sidecar": sidecar}})))
    args = _container(pod, "devstack-sidecar")["args"]
    assert args[0] == "sidecar"
    joined = " ".join(f"<{a}>" for a in args)
    assert " ".join(f"<{a}>" for a in expected) in joined
    assert pod.get("shareProcessNamespace", False) is shared_pids


def test_labels_the_agent_routes_by(example_chart: Path) -> None:
    baseline = documents(render(example_chart, {"devstack": ENABLED}))
    alice = documents(render(example_chart, {"devstack": {**ENABLED, "owner": "alice"}}))
    for docs, owner in ((baseline, None), (alice, "alice")):
        for kind in ("Deployment", "Service"):
            labels = one(docs, kind, "hello")["metadata"]["labels"]
            assert labels["devstack.dev/service"] == "hello"
            assert labels.get("devstack.dev/owner") == owner
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
        pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert pod_labels.get("devstack.dev/owner") == owner
    # the sync Service is not a routable service: no devstack.dev/service label
    sync = one(alice, "Service", "hello-devstack-sync")
    assert "devstack.dev/service" not in sync["metadata"]["labels"]


def test_ingress_route_carries_h2c_to_the_sidecar(example_chart: Path) -> None:
    values = {"devstack": {**ENABLED, "owner": "alice", "route": {"host": "hello-alice.sync.test"}}}
    docs = documents(render(example_chart, values))
    route = one(docs, "IngressRoute")
    (rule,) = route["spec"]["routes"]
    assert rule["match"] == "Host(`hello-alice.sync.test`)"
    (upstream,) = rule["services"]
    assert upstream["scheme"] == "h2c"
    service = one(docs, "Service", upstream["name"])
    (port,) = service["spec"]["ports"]
    assert port["port"] == upstream["port"]
    # the Service selects exactly this release's dev pod, on the sidecar's gRPC port
    pod_template = one(docs, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod_template["metadata"]["labels"].items()
    sidecar = _container(pod_template["spec"], "devstack-sidecar")
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports[port["targetPort"]] == 7070
    assert sidecar["readinessProbe"] == {"grpc": {"port": 7070}, "periodSeconds": 5}


def test_sidecar_runs_unprivileged(example_chart: Path) -> None:
    pod = _pod(documents(render(example_chart, {"devstack": ENABLED})))
    security = _container(pod, "devstack-sidecar")["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_a_routed_baseline_keeps_labels_and_hooks_but_no_sidecar(example_chart: Path) -> None:
    """``devstack.sidecar.enabled: false`` (what `devstack up` gives a baseline):
    the routing labels the agent finds it by and the provisioning hooks stay;
    nothing of the sidecar does (container, seed, workspace, token, sync
    Service and route, the sync pod label)."""
    values = {"devstack": {**ENABLED, "sidecar": {"enabled": False, "reload": "signal"}}}
    docs = documents(render(example_chart, values))
    pod = _pod(docs)
    assert [c["name"] for c in pod["containers"]] == ["app"]
    assert "initContainers" not in pod
    assert "volumes" not in pod
    assert "shareProcessNamespace" not in pod
    assert "volumeMounts" not in _container(pod, "app")
    assert not by_kind(docs, "IngressRoute")
    # the provisioning hook's credentials only: no sidecar token
    assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == ["hello-devstack-provision"]
    assert [s["metadata"]["name"] for s in by_kind(docs, "Service")] == ["hello"]
    for kind in ("Deployment", "Service"):
        assert one(docs, kind, "hello")["metadata"]["labels"]["devstack.dev/service"] == "hello"
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["devstack.dev/service"] == "hello"
    assert "devstack.dev/sync" not in pod_labels
    # provisioning stays: the hooks, and the app reads their outputs
    assert {j["metadata"]["annotations"]["helm.sh/hook"] for j in by_kind(docs, "Job")} == {
        "pre-install,pre-upgrade",
        "pre-delete",
    }
    assert "envFrom" in _container(pod, "app")
    env = {e["name"]: e["value"] for e in _container(pod, "app")["env"]}
    assert env["DEVSTACK_SERVICE"] == "hello"


def test_readiness_is_the_app_probe_and_the_sidecars_ready_url(example_chart: Path) -> None:
    """One value, ``devstack.readiness``: the app container's readinessProbe
    (with devstack on or off) and, for a supervised app, the URL the sidecar
    probes after each restart before it reports the reload done."""
    readiness = {"path": "/healthz", "port": 8000, "periodSeconds": 2, "startTimeoutSeconds": 20}
    sidecar = {"reload": "supervise", "command": "python /app/app.py"}
    on = _pod(
        documents(
            render(
                example_chart,
                {"devstack": {**ENABLED, "sidecar": sidecar, "readiness": readiness}},
            )
        )
    )
    probe = {
        "httpGet": {"path": "/healthz", "port": 8000},
        "periodSeconds": 2,
        "timeoutSeconds": 1,
        "failureThreshold": 3,
    }
    assert _container(on, "app")["readinessProbe"] == probe
    args = _container(on, "devstack-sidecar")["args"]
    at = args.index("--ready-url")
    assert args[at + 1] == "http://127.0.0.1:8000/healthz"
    assert args[args.index("--ready-timeout") + 1] == "20"
    # devstack off: the app keeps the probe; no sidecar to tell
    off = _pod(documents(render(example_chart, {"devstack": {"readiness": readiness}})))
    assert _container(off, "app")["readinessProbe"] == probe
    # no readiness value: the chart's own probe, and the sidecar probes nothing
    plain = _pod(documents(render(example_chart, {"devstack": {**ENABLED, "sidecar": sidecar}})))
    assert _container(plain, "app")["readinessProbe"] == {"httpGet": {"path": "/", "port": "http"}}
    assert "--ready-url" not in _container(plain, "devstack-sidecar")["args"]
    # a path needs a port
    with pytest.raises(Exception, match=r"devstack\.readiness\.port is required"):
        render(example_chart, {"devstack": {**ENABLED, "readiness": {"path": "/healthz"}}})


def test_a_supervised_app_in_the_sidecar_gets_the_apps_environment(example_chart: Path) -> None:
    """With ``reload: supervise`` the sidecar runs the app itself, so it needs
    what the app container gets: the chart's env (passed as ``appEnv``) and the
    provisioning outputs (envFrom). Other strategies leave the app in its own
    container: the sidecar gets neither."""
    values: dict[str, Any] = {
        "env": {"DEVSTACK_ROUTER_URL": "http://traefik.traefik.svc.cluster.local"},
        "devstack": {**ENABLED, "sidecar": {"reload": "supervise", "command": "python app.py"}},
    }
    pod = _pod(documents(render(example_chart, values)))
    app, sidecar = _container(pod, "app"), _container(pod, "devstack-sidecar")
    sidecar_env = {e["name"]: e.get("value") for e in sidecar["env"]}
    for item in app["env"]:
        assert sidecar_env[item["name"]] == item["value"], item["name"]
    assert sidecar_env["PORT"] == "8000"
    assert sidecar_env["DEVSTACK_ROUTER_URL"] == "http://traefik.traefik.svc.cluster.local"
    assert sidecar["envFrom"] == app["envFrom"]
    # the app's come first: on a duplicate name Kubernetes takes the last,
    # so the sidecar's own settings win
    names = [e["name"] for e in sidecar["env"]]
    assert names[:2] == ["PORT", "DEVSTACK_ROUTER_URL"]
    assert names.index("DEVSTACK_ROUTER_URL") < names.index("DEVSTACK_LISTEN")
    values["devstack"]["sidecar"] = {"reload": "none"}
    pod = _pod(documents(render(example_chart, values)))
    sidecar = _container(pod, "devstack-sidecar")
    assert "PORT" not in {e["name"] for e in sidecar["env"]}
    assert "envFrom" not in sidecar


def test_extra_args_reach_the_sidecar_after_the_charts_own(example_chart: Path) -> None:
    """The documented way to a sidecar without the session stream: the
    rendered arguments parse with the sidecar's own parser, the extra ones
    last."""
    values = {"devstack": {**ENABLED, "sidecar": {"extraArgs": ["--max-streams", "0"]}}}
    args = _container(_pod(documents(render(example_chart, values))), "devstack-sidecar")["args"]
    assert args[0] == "sidecar" and args[-2:] == ["--max-streams", "0"]
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    parsed = parser.parse_args(
        [*args[1:], "--workspace", "/app", "--token-file", "/var/run/devstack/token"]
    )
    assert command.max_streams(parsed.max_streams) == 0
