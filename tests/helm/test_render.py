"""Every chart, rendered by Helm's own engine for the main combinations of values,
linted strictly and validated against the Kubernetes and Traefik CRD schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helm.charts import (
    AGENT_CHART,
    EXAMPLE_CHART,
    LIB_CHART,
    REPO,
    by_kind,
    documents,
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
    for values in ({}, {"devstack": {"enabled": False, "owner": "alice"}}):
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


ROUTING_RULES = {("", "services", v) for v in ("get", "list", "watch")} | {
    ("traefik.io", r, v)
    for r in ("ingressroutes", "middlewares")
    for v in ("get", "list", "watch", "create", "update", "patch", "delete")
}


def test_cluster_scope_grants_exactly_the_routing_rules_cluster_wide() -> None:
    docs = documents(render(AGENT_CHART, {}, name="devstack", namespace="devstack-system"))
    assert _rules(one(docs, "ClusterRole")) == ROUTING_RULES
    (lease_role,) = by_kind(docs, "Role")
    assert lease_role["metadata"]["namespace"] == "devstack-system"
    assert _rules(lease_role) == {
        ("coordination.k8s.io", "leases", v) for v in ("create", "get", "update", "patch")
    }
    named = [r for r in lease_role["rules"] if "get" in r["verbs"]]
    assert named[0]["resourceNames"] == ["devstack-agent"]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "devstack", "namespace": "devstack-system"}
    ]
    config = one(docs, "ConfigMap")
    assert config["data"]["DEVSTACK_NAMESPACES"] == ""


def test_namespaced_scope_has_no_cluster_role_and_one_role_per_namespace() -> None:
    values = {"scope": "namespaced", "namespaces": ["team-a", "team-b"]}
    docs = documents(render(AGENT_CHART, values, name="devstack", namespace="devstack-system"))
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    routing = {
        d["metadata"]["namespace"]: _rules(d)
        for d in by_kind(docs, "Role")
        if "leader" not in d["metadata"]["name"]
    }
    assert routing == {"team-a": ROUTING_RULES, "team-b": ROUTING_RULES}
    bindings = {d["metadata"]["namespace"] for d in by_kind(docs, "RoleBinding")}
    assert bindings == {"team-a", "team-b", "devstack-system"}
    assert one(docs, "ConfigMap")["data"]["DEVSTACK_NAMESPACES"] == "team-a,team-b"


def test_traefik_2_also_grants_the_legacy_api_group() -> None:
    docs = documents(render(AGENT_CHART, {"traefikVersion": "2.9"}, name="devstack"))
    groups = {g for g, _, _ in _rules(one(docs, "ClusterRole"))}
    assert groups == {"", "traefik.io", "traefik.containo.us"}


def test_provisioning_hooks_run_provision_before_install_and_teardown_before_delete(
    example_chart: Path,
) -> None:
    docs = documents(render(example_chart, {"devstack": {**ENABLED, "owner": "alice"}}))
    jobs = {
        d["metadata"]["annotations"]["helm.sh/hook"]: d["spec"]["template"]["spec"]
        for d in by_kind(docs, "Job")
    }
    assert set(jobs) == {"pre-install,pre-upgrade", "pre-delete"}
    install = jobs["pre-install,pre-upgrade"]["containers"][0]
    teardown = jobs["pre-delete"]["containers"][0]
    assert install["args"][0] == "provision" and "--teardown" not in install["args"]
    assert teardown["args"][-1] == "--teardown"
    assert install["args"][install["args"].index("--outputs-configmap") + 1] == "hello-devstack-aws"
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
    # the app reads the outputs as environment variables
    app = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert app["envFrom"] == [{"configMapRef": {"name": "hello-devstack-aws"}}]


def test_the_provision_spec_is_devstack_aws_verbatim(example_chart: Path) -> None:
    import base64

    import yaml

    aws = {"sqs": [{"name": "jobs", "fifo": True}], "s3": [{"name": "uploads"}]}
    docs = documents(render(example_chart, {"devstack": {**ENABLED, "aws": aws}}))
    secret = one(docs, "Secret", "hello-devstack-provision")
    assert yaml.safe_load(base64.b64decode(secret["data"]["spec.yaml"])) == aws
    assert not [c for c in by_kind(docs, "ConfigMap") if "spec.yaml" in c.get("data", {})]


def test_no_aws_resources_means_no_hooks(example_chart: Path) -> None:
    docs = documents(render(example_chart, {"devstack": {**ENABLED, "aws": None}}))
    assert by_kind(docs, "Job") == []
    app = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in app


def test_example_chart_runs_the_example_app() -> None:
    assert (REPO / "examples" / "hello" / "app.py").is_file()
    import yaml

    values = yaml.safe_load((EXAMPLE_CHART / "values.yaml").read_text())
    assert values["command"][-1] == "/app/app.py"
    assert values["devstack"]["workspace"]["path"] == "/app"
