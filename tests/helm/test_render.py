"""Every chart, rendered by Helm's own engine for the main combinations of values,
linted strictly and validated against the Kubernetes and Traefik CRD schemas."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from helm_python.errors import HelmValuesError

from devstack.core.helmfile import load
from devstack.core.helmfile.values import merge
from devstack.core.routing import crd_group_for
from tests.helm.charts import (
    AGENT_CHART,
    EXAMPLE_CHART,
    HELLO_VALUES,
    LIB_CHART,
    REPO,
    by_kind,
    documents,
    hello_values,
    lint_problems,
    one,
    render,
    validate,
)

PLAIN_CHART = Path(__file__).parent / "data" / "hello-without-devstack"

AGENT_CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced, release namespace": {"scope": "namespaced"},
    "namespaced, listed, traefik 2.10": {
        "scope": "namespaced",
        "namespaces": ["team-a", "team-b"],
        "traefikVersion": "2.10",
    },
    "two replicas, no service": {"replicaCount": 2, "service": {"enabled": False}},
    "bring your own service account": {
        "serviceAccount": {"create": False, "name": "agent"},
        "rbac": {"create": False},
    },
}

ENABLED: dict[str, Any] = {"enabled": True}

EXAMPLE_CASES: dict[str, dict[str, Any]] = {
    "disabled": {},
    "baseline": {"devstack": ENABLED},
    "owner alice": {"devstack": {**ENABLED, "owner": "alice"}},
    "reload signal": {
        "devstack": {
            **ENABLED,
            "sidecar": {"reload": "signal", "signal": {"name": "USR1", "processName": "python"}},
        }
    },
    "reload exec with rules": {
        "devstack": {
            **ENABLED,
            "sidecar": {
                "reload": "exec",
                "exec": "make assets",
                "reloadOn": ["**/*.py", "static/**"],
                "reloadConfig": {"rules": [{"match": ["*.css"], "exec": ["make css"]}]},
            },
        }
    },
    "reload supervise, replica mode, owner uid": {
        "devstack": {
            **ENABLED,
            "sidecar": {
                "reload": "supervise",
                "command": "python /app/app.py",
                "mode": "replica",
                "owner": "1000:1000",
                "fileMode": "0644",
            },
        }
    },
    "no route, existing token, no seed": {
        "devstack": {
            **ENABLED,
            "route": {"enabled": False},
            "token": {"existingSecret": "my-token"},
            "workspace": {"seed": {"enabled": False}, "sizeLimit": "1Gi"},
        }
    },
    "no AWS resources": {"devstack": {**ENABLED, "aws": None}},
    "hello's AWS resources": hello_values(ENABLED),
    "env map": {"env": {"GREETING": "hi", "N": 3, "ON": True}, "devstack": ENABLED},
    "env list": {
        "env": [
            {"name": "GREETING", "value": "hi"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ]
    },
    "outputs secret, no teardown, own credentials": {
        "devstack": {
            **ENABLED,
            "provision": {
                "outputs": {"secret": "hello-aws-secrets"},
                "teardown": False,
                "credentials": {"existingSecret": "aws-creds"},
                "endpoint": "http://moto.aws.svc:5000",
                "region": "eu-west-1",
            },
        }
    },
    "traefik 2 api, tls": {
        "devstack": {
            **ENABLED,
            "route": {
                "apiVersion": "traefik.containo.us/v1alpha1",
                "entryPoints": ["websecure"],
                "tls": {"secretName": "wildcard"},
            },
        }
    },
}


@pytest.mark.parametrize("chart", [AGENT_CHART, LIB_CHART], ids=["agent", "library"])
def test_charts_lint_strictly(chart: Path) -> None:
    assert lint_problems(chart) == []


@pytest.mark.parametrize("values", EXAMPLE_CASES.values(), ids=EXAMPLE_CASES.keys())
def test_example_chart_lints_strictly(example_chart: Path, values: dict[str, Any]) -> None:
    assert lint_problems(example_chart, values) == []


@pytest.mark.parametrize("values", AGENT_CASES.values(), ids=AGENT_CASES.keys())
def test_agent_chart_renders_valid_manifests(values: dict[str, Any]) -> None:
    docs = documents(render(AGENT_CHART, values, name="devstack", namespace="devstack-system"))
    assert validate(docs) == len(docs) >= 3
    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "agent"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("values", EXAMPLE_CASES.values(), ids=EXAMPLE_CASES.keys())
def test_example_chart_renders_valid_manifests(example_chart: Path, values: dict[str, Any]) -> None:
    docs = documents(render(example_chart, values))
    assert validate(docs) == len(docs) >= 2
    one(docs, "Deployment", "hello")
    one(docs, "Service", "hello")


def test_disabled_renders_exactly_as_the_chart_without_devstack(example_chart: Path) -> None:
    for values in (
        {},
        {"devstack": {"enabled": False, "owner": "alice"}},
        {"env": {"A": "1"}, "devstack": {"enabled": False}},
    ):
        with_lib = render(example_chart, values)
        plain = render(PLAIN_CHART, {k: v for k, v in values.items() if k != "devstack"})
        assert with_lib.pop("hello/templates/devstack.yaml").strip() == ""
        assert with_lib == plain


def test_the_reference_chart_matches_the_example_outside_devstack() -> None:
    """The byte-for-byte test is only meaningful if the reference chart is the example
    chart minus devstack: same helpers and the same values outside `devstack:`."""
    ours = (EXAMPLE_CHART / "templates" / "_helpers.tpl").read_text()
    assert (PLAIN_CHART / "templates" / "_helpers.tpl").read_text() == ours
    import yaml

    example_values = yaml.safe_load((EXAMPLE_CHART / "values.yaml").read_text())
    example_values.pop("devstack")
    assert yaml.safe_load((PLAIN_CHART / "values.yaml").read_text()) == example_values
    for name in ("deployment.yaml", "service.yaml"):
        example_lines = [
            line
            for line in (EXAMPLE_CHART / "templates" / name).read_text().splitlines()
            if "devstack" not in line
        ]
        plain_lines = (PLAIN_CHART / "templates" / name).read_text().splitlines()
        # every line of the reference is in the example, in order
        it = iter(example_lines)
        assert all(any(line == e for e in it) for line in plain_lines), name


def _rules(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_scope_grants_the_routing_rules_cluster_wide_and_the_lease_by_name() -> None:
    """Which verbs: tests/cluster/test_rbac.py compares them with the audit log.
    Here: where they are granted."""
    docs = documents(render(AGENT_CHART, {}, name="devstack", namespace="devstack-system"))
    cluster = _rules(one(docs, "ClusterRole"))
    assert {(g, r) for g, r, _ in cluster} == {
        ("", "services"),
        ("", "pods"),
        ("", "persistentvolumeclaims"),
        ("metrics.k8s.io", "pods"),
        ("apps", "deployments"),
        ("apps", "deployments/scale"),
        ("traefik.io", "ingressroutes"),
        ("traefik.io", "middlewares"),
    }
    lease_role = one(docs, "Role", "devstack-leader-election")
    assert lease_role["metadata"]["namespace"] == "devstack-system"
    assert {(g, r) for g, r, _ in _rules(lease_role)} == {("coordination.k8s.io", "leases")}
    for rule in lease_role["rules"]:
        # only `create` cannot be limited by name
        assert rule.get("resourceNames") == (
            None if rule["verbs"] == ["create"] else ["devstack-agent"]
        )
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "devstack", "namespace": "devstack-system"}
    ]
    config = one(docs, "ConfigMap", "devstack")
    assert config["data"]["DEVSTACK_NAMESPACES"] == ""


def test_namespaced_scope_has_no_cluster_role_and_one_role_per_namespace() -> None:
    cluster = _rules(one(documents(render(AGENT_CHART, {}, name="devstack")), "ClusterRole"))
    values = {"scope": "namespaced", "namespaces": ["team-a", "team-b"]}
    docs = documents(render(AGENT_CHART, values, name="devstack", namespace="devstack-system"))
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    routing = {
        d["metadata"]["namespace"]: _rules(d)
        for d in by_kind(docs, "Role")
        # the release namespace's own Roles: the Lease, the sleep and usage records
        if d["metadata"]["namespace"] != "devstack-system"
    }
    assert routing == {"team-a": cluster, "team-b": cluster}
    bindings = {d["metadata"]["namespace"] for d in by_kind(docs, "RoleBinding")}
    assert bindings == {"team-a", "team-b", "devstack-system"}
    assert one(docs, "ConfigMap", "devstack")["data"]["DEVSTACK_NAMESPACES"] == "team-a,team-b"


def test_leader_election_timings_reach_the_agent_as_it_reads_them() -> None:
    """The chart's values become the environment `devstack agent` reads, and
    that environment gives the agent exactly those timings."""
    from devstack.agent.command import add_arguments, config_from_args

    values = {"leaderElection": {"leaseDuration": 30, "renewDeadline": 20, "retryPeriod": 0.5}}
    data = one(documents(render(AGENT_CHART, values, name="devstack")), "ConfigMap", "devstack")[
        "data"
    ]
    parser = argparse.ArgumentParser()
    with mock.patch.dict(os.environ, data, clear=True):
        add_arguments(parser)
        lease = config_from_args(parser.parse_args([]), env=data).lease
    assert (lease.lease_duration, lease.renew_deadline, lease.retry_period) == (30.0, 20.0, 0.5)
    with pytest.raises(HelmValuesError):
        render(AGENT_CHART, {"leaderElection": {"leaseDuration": 0}}, name="devstack")


@pytest.mark.parametrize("version", ["3", "2.10", "2.11", "2.9", "2", "v2.9.6", "v3.1"])
def test_the_traefik_api_group_is_the_one_the_agent_writes(version: str) -> None:
    docs = documents(render(AGENT_CHART, {"traefikVersion": version}, name="devstack"))
    groups = {g for g, _, _ in _rules(one(docs, "ClusterRole"))}
    assert groups == {"", "apps", "metrics.k8s.io", crd_group_for(version)}
    assert one(docs, "ConfigMap", "devstack")["data"]["DEVSTACK_TRAEFIK_VERSION"] == version


def _jobs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Hook event -> the Job's pod spec."""
    return {
        d["metadata"]["annotations"]["helm.sh/hook"]: d["spec"]["template"]["spec"]
        for d in by_kind(docs, "Job")
    }


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_provisioning_hooks_run_provision_before_install_and_teardown_before_delete(
    example_chart: Path,
) -> None:
    docs = documents(render(example_chart, {"devstack": {**ENABLED, "owner": "alice"}}))
    names = {
        d["metadata"]["annotations"]["helm.sh/hook"]: d["metadata"]["name"]
        for d in by_kind(docs, "Job")
    }
    assert names == {
        "pre-install,pre-upgrade": "hello-devstack-provision",
        "pre-delete": "hello-devstack-teardown",
    }
    jobs = _jobs(docs)
    install = jobs["pre-install,pre-upgrade"]["containers"][0]
    teardown = jobs["pre-delete"]["containers"][0]
    assert install["args"][0] == "provision" and "--teardown" not in install["args"]
    assert install["args"][-1] == "--prune"
    assert teardown["args"][-1] == "--teardown" and "--prune" not in teardown["args"]
    for job in (install, teardown):
        assert _arg(job["args"], "--outputs-configmap") == "hello-devstack-aws"
        assert _arg(job["args"], "--outputs-secret") == "hello-devstack-aws"
        assert _arg(job["args"], "--release") == "hello"
    env = {e["name"]: e.get("value") for e in install["env"]}
    assert env["DEVSTACK_OWNER"] == "alice"
    assert env["AWS_ENDPOINT_URL"] == "http://localstack.localstack.svc.cluster.local:4566"
    assert env["AWS_REGION"] == "us-east-1"
    # what the Jobs need exists before them: lower hook weight, same hook events
    for kind in ("ServiceAccount", "Role", "RoleBinding", "Secret"):
        support = [d for d in by_kind(docs, kind) if d["metadata"].get("annotations")]
        assert support, kind
        for d in support:
            ann = d["metadata"]["annotations"]
            assert int(ann["helm.sh/hook-weight"]) < 0
            assert set(ann["helm.sh/hook"].split(",")) == {
                "pre-install",
                "pre-upgrade",
                "pre-delete",
            }
    # the app reads the outputs as environment variables: the ConfigMap, and the
    # Secret with the secret values (optional: it may not exist yet)
    app = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert app["envFrom"] == [
        {"configMapRef": {"name": "hello-devstack-aws"}},
        {"secretRef": {"name": "hello-devstack-aws", "optional": True}},
    ]


def test_the_hook_role_may_write_only_the_outputs(example_chart: Path) -> None:
    """Where the verbs apply; which verbs: tests/cluster/test_rbac.py."""
    values = {"devstack": {**ENABLED, "provision": {"outputs": {"secret": "hello-secrets"}}}}
    role = one(documents(render(example_chart, values)), "Role", "hello-devstack-provision")
    named = {
        (resource, tuple(rule["resourceNames"]))
        for rule in role["rules"]
        if "resourceNames" in rule
        for resource in rule["resources"]
    }
    assert named == {("configmaps", ("hello-devstack-aws",)), ("secrets", ("hello-secrets",))}
    unnamed = [r for r in role["rules"] if "resourceNames" not in r]
    assert all(r["verbs"] == ["create"] for r in unnamed)


def test_outputs_names_are_configurable(example_chart: Path) -> None:
    outputs = {"configMap": "hello-aws", "secret": "hello-aws-secret"}
    docs = documents(
        render(example_chart, {"devstack": {**ENABLED, "provision": {"outputs": outputs}}})
    )
    install = _jobs(docs)["pre-install,pre-upgrade"]["containers"][0]
    assert _arg(install["args"], "--outputs-configmap") == "hello-aws"
    assert _arg(install["args"], "--outputs-secret") == "hello-aws-secret"
    app = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert app["envFrom"] == [
        {"configMapRef": {"name": "hello-aws"}},
        {"secretRef": {"name": "hello-aws-secret", "optional": True}},
    ]


def test_the_provision_spec_is_devstack_aws_verbatim(example_chart: Path) -> None:
    import base64

    import yaml

    aws = {"sqs": [{"name": "jobs", "fifo": True}], "s3": [{"name": "uploads"}]}
    docs = documents(render(example_chart, {"devstack": {**ENABLED, "aws": aws}}))
    secret = one(docs, "Secret", "hello-devstack-provision")
    assert yaml.safe_load(base64.b64decode(secret["data"]["spec.yaml"])) == aws
    assert not [c for c in by_kind(docs, "ConfigMap") if "spec.yaml" in c.get("data", {})]


def test_an_empty_spec_still_prunes_and_tears_down(example_chart: Path) -> None:
    """An upgrade that empties devstack.aws (to null: an empty mapping merges with the
    chart's defaults) must remove what the release created before, and uninstalling
    must still run the teardown: the hooks stay."""
    import base64

    import yaml

    aws = None
    docs = documents(render(example_chart, {"devstack": {**ENABLED, "aws": aws}}))
    secret = one(docs, "Secret", "hello-devstack-provision")
    assert yaml.safe_load(base64.b64decode(secret["data"]["spec.yaml"])) == {}
    jobs = _jobs(docs)
    assert jobs["pre-install,pre-upgrade"]["containers"][0]["args"][-1] == "--prune"
    assert jobs["pre-delete"]["containers"][0]["args"][-1] == "--teardown"


def test_provisioning_off_renders_no_hooks(example_chart: Path) -> None:
    docs = documents(
        render(example_chart, {"devstack": {**ENABLED, "provision": {"enabled": False}}})
    )
    assert by_kind(docs, "Job") == []
    app = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in app


def test_no_prune_and_no_teardown(example_chart: Path) -> None:
    values = {"devstack": {**ENABLED, "provision": {"prune": False, "teardown": False}}}
    jobs = _jobs(documents(render(example_chart, values)))
    assert set(jobs) == {"pre-install,pre-upgrade"}
    args = jobs["pre-install,pre-upgrade"]["containers"][0]["args"]
    assert "--prune" not in args and "--teardown" not in args


def test_hook_jobs_take_extra_volumes_and_environment(example_chart: Path) -> None:
    """A hook script mounted from a ConfigMap, with its own settings (docs/helm.md)."""
    provision: dict[str, Any] = {
        "extraVolumes": [
            {"name": "hooks", "configMap": {"name": "hello-hooks", "defaultMode": 0o555}}
        ],
        "extraVolumeMounts": [
            {"name": "hooks", "mountPath": "/etc/devstack/hooks", "readOnly": True}
        ],
        "extraEnv": [{"name": "SEED_ROWS", "value": "10"}],
        "extraEnvFrom": [{"secretRef": {"name": "seed-credentials"}}],
    }
    aws = {
        "sqs": [{"name": "jobs"}],
        "hooks": [{"name": "seed", "command": ["python", "/etc/devstack/hooks/seed.py"]}],
    }
    docs = documents(
        render(example_chart, {"devstack": {**ENABLED, "aws": aws, "provision": provision}})
    )
    assert validate(docs) == len(docs)
    for pod in _jobs(docs).values():
        (container,) = pod["containers"]
        assert provision["extraVolumes"][0] in pod["volumes"]
        assert {
            "name": "spec",
            "secret": {
                "secretName": "hello-devstack-provision",
                "items": [{"key": "spec.yaml", "path": "spec.yaml"}],
            },
        } in pod["volumes"]
        assert provision["extraVolumeMounts"][0] in container["volumeMounts"]
        assert {"name": "SEED_ROWS", "value": "10"} in container["env"]
        assert container["envFrom"] == [{"secretRef": {"name": "seed-credentials"}}]
        # the chart's own settings are still there
        assert {e["name"] for e in container["env"]} >= {"DEVSTACK_OWNER", "AWS_ENDPOINT_URL"}


def test_the_example_chart_runs_the_example_app_from_the_workspace(example_chart: Path) -> None:
    """The app container runs a file of examples/hello from the shared workspace, so
    a sync of examples/hello is what the pod runs."""
    pod = one(documents(render(example_chart, {"devstack": ENABLED})), "Deployment")["spec"][
        "template"
    ]["spec"]
    app = next(c for c in pod["containers"] if c["name"] == "app")
    workspace = next(
        m["mountPath"] for m in app["volumeMounts"] if m["name"] == "devstack-workspace"
    )
    script = Path(app["command"][-1])
    assert script.is_relative_to(workspace)
    assert (REPO / "examples" / "hello" / script.relative_to(workspace)).is_file()


def _app(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "app")


@pytest.mark.parametrize(
    ("env", "rendered"),
    [
        pytest.param(None, [], id="none"),
        pytest.param({}, [], id="empty"),
        pytest.param(
            {"B": "two words", "A": 1, "C": True, "D": ""},
            [
                {"name": "A", "value": "1"},
                {"name": "B", "value": "two words"},
                {"name": "C", "value": "true"},
                {"name": "D", "value": ""},
            ],
            id="map-in-name-order-as-text",
        ),
        pytest.param(
            [
                {"name": "Z", "value": "z"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            [
                {"name": "Z", "value": "z"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            id="list-as-given",
        ),
    ],
)
def test_the_example_charts_env_reaches_the_app_container(
    example_chart: Path, env: Any, rendered: list[dict[str, Any]]
) -> None:
    """PORT first, then ``env``, then devstack's own variables."""
    values: dict[str, Any] = {"devstack": {**ENABLED, "owner": "alice"}, "env": env}
    docs = documents(render(example_chart, values))
    assert validate(docs) == len(docs)
    assert _app(docs)["env"] == [
        {"name": "PORT", "value": "8000"},
        *rendered,
        {"name": "DEVSTACK_SERVICE", "value": "hello"},
        {"name": "DEVSTACK_OWNER", "value": "alice"},
    ]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"A": {"nested": 1}}, "at '/env/A'"),
        ([{"value": "no name"}], "at '/env/0'"),
        ({"1BAD": "x"}, "'1BAD' does not match pattern"),
        ("A=1", "at '/env'"),
    ],
)
def test_a_bad_env_is_refused_by_the_schema(example_chart: Path, env: Any, problem: str) -> None:
    with pytest.raises(HelmValuesError) as refused:
        render(example_chart, {"env": env})
    assert problem in str(refused.value)


SHOP = REPO / "examples" / "shop" / "helmfile.yaml"


def test_the_shops_pods_get_the_router_and_the_hosts_they_call(example_chart: Path) -> None:
    """In a cluster, each of the shop's apps calls the next through Traefik's
    Service, by the host the agent routes: the Helmfile gives their pods
    what ``devstack up --local`` gives the local processes."""
    router = "http://traefik.traefik.svc.cluster.local"
    calls = {"stock": {}, "api": {"STOCK_HOST": "stock.localtest.me"}}
    calls["web"] = {"API_HOST": "api.localtest.me"}
    for release in load(SHOP).releases:
        values = merge(release.values, {"devstack": ENABLED})
        docs = documents(render(example_chart, dict(values), name=release.name))
        env = {e["name"]: e.get("value") for e in _app(docs)["env"]}
        assert env == {
            "PORT": "8000",
            "DEVSTACK_ROUTER_URL": router,
            "DEVSTACK_DOMAIN": "localtest.me",
            **calls[release.name],
            "DEVSTACK_SERVICE": release.name,
            "DEVSTACK_OWNER": "",
        }, release.name


def _spec(docs: list[dict[str, Any]]) -> Any:
    """The spec the release's provisioning hook runs with."""
    import base64

    import yaml

    (secret,) = [
        d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-devstack-provision")
    ]
    return yaml.safe_load(base64.b64decode(secret["data"]["spec.yaml"]))


def test_a_release_provisions_only_what_its_own_values_declare(example_chart: Path) -> None:
    """Helm merges a chart's defaults into every release of it: the example
    chart declares no AWS resources, so each of the shop's releases
    provisions what it declares (stock its queue; api and web nothing), and
    hello what examples/hello/devstack.yaml declares."""
    import yaml

    declared = {}
    for release in load(SHOP).releases:
        values = merge(release.values, {"devstack": ENABLED})
        docs = documents(render(example_chart, dict(values), name=release.name))
        declared[release.name] = _spec(docs)
    assert declared == {"stock": {"sqs": [{"name": "reservations"}]}, "api": {}, "web": {}}
    hello = yaml.safe_load(HELLO_VALUES.read_text())["devstack"]["aws"]
    assert hello == {
        "sqs": [{"name": "jobs", "deadLetter": {"maxReceiveCount": 5}}],
        "s3": [{"name": "uploads"}],
    }
    assert _spec(documents(render(example_chart, hello_values(ENABLED)))) == hello
    assert _spec(documents(render(example_chart, {"devstack": ENABLED}))) == {}
