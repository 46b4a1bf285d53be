"""The pure plans of the cluster workflow: `devstack up` (which releases, copies
or baselines, in which order, with which injected values), `devstack down`
(only the owner's copies, dependents first), `devstack status` (which
releases it reports on), readiness of workloads, and where a copy's sidecar
is, each as tables of cases and their exact results or errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from devstack.agent.desired import AgentSettings
from devstack.cli.cluster_up import PlanError, check_context, plan_up
from devstack.cli.down import Removal, plan_down
from devstack.cli.images import BuildRecord
from devstack.cli.releases import Progress, progress, sidecar_access, summary
from devstack.cli.workflow_status import Target, preview_url, status_targets
from devstack.core.errors import ConfigError, DevstackError
from devstack.core.helmfile import Helmfile, HelmfileError, load
from devstack.core.owner import OwnerError

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "data" / "workflow"


def workflow_project(root: Path, *, prepare: bool = False) -> Path:
    """The fixture project at ``root/project``, with the example chart, the
    library chart and hello's own values (examples/hello/devstack.yaml) where
    its Helmfile finds them; ``prepare``: with the example chart's dependency
    resolved (to deploy it). Returns the Helmfile's path."""
    shutil.copytree(FIXTURE, root / "project")
    (root / "examples" / "hello").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "hello" / "devstack.yaml", root / "examples" / "hello")
    if prepare:
        from tests.helm.charts import prepare_example

        prepare_example(root)
    else:
        shutil.copytree(REPO / "examples" / "chart", root / "examples" / "chart")
    return root / "project" / "helmfile.yaml"


@pytest.fixture
def helmfile(tmp_path: Path) -> Helmfile:
    return load(workflow_project(tmp_path))


def shape(plan: Any) -> list[list[tuple[str, str, str]]]:
    return [[(r.release, r.role, r.action) for r in level] for level in plan.levels]


@pytest.mark.parametrize(
    ("services", "deployed", "levels", "present"),
    [
        # a copy of hello; every baseline it needs, transitively, first
        (
            ["hello"],
            set(),
            [
                [("db", "baseline", "install"), ("cache", "baseline", "install")],
                [("api", "baseline", "install")],
                [("hello--alice", "copy", "install")],
            ],
            [],
        ),
        # a baseline the cluster has is not deployed again
        (
            ["hello"],
            {("default", "db"), ("default", "bob-thing")},
            [
                [("cache", "baseline", "install")],
                [("api", "baseline", "install")],
                [("hello--alice", "copy", "install")],
            ],
            ["db"],
        ),
        # api is there: nothing below it is looked at
        (["hello"], {("default", "api")}, [[("hello--alice", "copy", "install")]], ["api"]),
        # in another namespace it does not count
        (
            ["hello"],
            {("other", "api"), ("default", "db"), ("default", "cache")},
            [[("api", "baseline", "install")], [("hello--alice", "copy", "install")]],
            ["db", "cache"],
        ),
        # no service named: copies of all, so no baseline is needed
        (
            [],
            set(),
            [
                [("db--alice", "copy", "install"), ("cache--alice", "copy", "install")],
                [("api--alice", "copy", "install")],
                [("hello--alice", "copy", "install")],
            ],
            [],
        ),
        # two named: api's copy replaces its baseline; an existing copy is upgraded
        (
            ["hello", "api"],
            {("default", "hello--alice")},
            [
                [("db", "baseline", "install"), ("cache", "baseline", "install")],
                [("api--alice", "copy", "install")],
                [("hello--alice", "copy", "upgrade")],
            ],
            [],
        ),
        # a leaf: nothing else
        (["db"], set(), [[("db--alice", "copy", "install")]], []),
        # the same service twice is one copy
        (["db", "db"], set(), [[("db--alice", "copy", "install")]], []),
    ],
)
def test_plan_up(
    helmfile: Helmfile,
    services: list[str],
    deployed: set[tuple[str, str]],
    levels: list[list[tuple[str, str, str]]],
    present: list[str],
) -> None:
    plan = plan_up(helmfile, "alice", services, deployed, namespace="default")
    assert shape(plan) == levels
    assert list(plan.present) == present


def test_the_values_devstack_injects(helmfile: Helmfile) -> None:
    plan = plan_up(helmfile, "alice", ["hello"], set())
    by = {r.release: r for r in plan.releases}
    copy = by["hello--alice"]
    # the library chart's own values: devstack and its sidecar on, the owner
    # and the service label the agent routes by
    injected = {
        "devstack": {
            "enabled": True,
            "owner": "alice",
            "service": "hello",
            "sidecar": {"enabled": True},
        }
    }
    assert copy.injected == injected
    # merged over the Helmfile's values, which stay
    assert copy.values["devstack"] == {
        "enabled": True,
        "owner": "alice",
        "service": "hello",
        "sidecar": {"reload": "supervise", "command": "python app.py", "enabled": True},
        "provision": {"endpoint": "http://127.0.0.1:4566"},
        # examples/hello/devstack.yaml's (the example chart declares none)
        "aws": {
            "sqs": [{"name": "jobs", "deadLetter": {"maxReceiveCount": 5}}],
            "s3": [{"name": "uploads"}],
        },
    }
    # a baseline of a chart without devstack gets nothing
    assert by["db"].injected == {}
    assert by["db"].values == {"replicas": 2}
    assert by["api"].needs == ("db", "cache")
    assert plan.as_json()["levels"][2][0] == {
        "release": "hello--alice",
        "service": "hello",
        "role": "copy",
        "namespace": "",
        "action": "install",
        "chart": "../examples/chart",
        "needs": ["api"],
        "injectedValues": injected,
    }


FRONT = """
releases:
  - name: hello
    chart: ../examples/chart
    namespace: shop
    values:
      - devstack: {enabled: true, service: greeter}
  - name: front
    chart: ./charts/plain
    namespace: shop
    needs: [hello]
  - name: old
    chart: ./charts/plain
    installed: false
"""


def test_a_baseline_with_devstack_gets_the_empty_owner_and_its_service_label(
    tmp_path: Path,
) -> None:
    path = workflow_project(tmp_path)
    path.write_text(FRONT)
    plan = plan_up(load(path), "alice", ["front"], set(), namespace="default")
    assert shape(plan) == [
        [("hello", "baseline", "install")],
        [("front--alice", "copy", "install")],
    ]
    (hello,), _ = plan.levels
    assert hello.namespace == "shop"
    # a baseline with a devstack block: devstack on without the sidecar (its
    # routing labels and provisioning hooks), the empty owner; the service
    # label is the one the Helmfile gives, for copies too
    baseline = {"enabled": True, "owner": "", "service": "greeter", "sidecar": {"enabled": False}}
    assert hello.injected == {"devstack": baseline}
    assert hello.values["devstack"] == baseline
    plan = plan_up(load(path), "alice", ["hello"], set())
    assert plan.releases[0].injected["devstack"]["service"] == "greeter"
    # deployed is read per namespace
    plan = plan_up(load(path), "alice", ["front"], {("shop", "hello")}, namespace="default")
    assert shape(plan) == [[("front--alice", "copy", "install")]]


BUILT = """
releases:
  - name: api
    chart: ./charts/plain
    values:
      - containers:
          - {name: app, image: {repository: api, tag: old}}
          - {name: proxy, image: {repository: envoy, tag: "1"}}
        devstack:
          build:
            image: registry.example.com/team/api
            values: {repository: "containers[0].image.repository", tag: "containers[0].image.tag"}
  - name: web
    chart: ./charts/plain
    needs: [api]
    values:
      - image: {repository: web, tag: "1.0", pullPolicy: Always}
        devstack: {build: {image: registry.example.com/team/web}}
  - name: docs
    chart: ./charts/plain
    values:
      - annotations: {owner: team}
        devstack:
          build:
            image: registry.example.com/team/docs
            values: {repository: image, tag: 'annotations.app\\.kubernetes\\.io/version'}
"""


def _record(service: str, tag: str) -> BuildRecord:
    return BuildRecord(service, f"{REG}/{service}", tag, "sha256:0", "2025-01-01T00:00:00Z")


REG = "registry.example.com/team"
API_VALUES = {
    "containers": [
        {"name": "app", "image": {"repository": "api", "tag": "old"}},
        {"name": "proxy", "image": {"repository": "envoy", "tag": "1"}},
    ]
}


@pytest.mark.parametrize(
    ("services", "built", "injected", "values"),
    [
        # the copy gets its recorded image at the default paths (image.repository
        # and image.tag), over the Helmfile's values, which stay
        (
            ["web"],
            ["web", "api"],
            {"web--alice": {"image": {"repository": f"{REG}/web", "tag": "t-web"}}, "api": {}},
            {"web--alice": {"image": {"repository": f"{REG}/web", "tag": "t-web",
                                      "pullPolicy": "Always"}},
             # the baseline of a built service keeps its own image
             "api": API_VALUES},
        ),
        # paths with [N]: set into the list's entry, the other entries kept
        (
            ["api"],
            ["api"],
            {"api--alice": {"containers": [{"image": {"repository": f"{REG}/api",
                                                      "tag": "t-api"}}]}},
            {"api--alice": {"containers": [
                {"name": "app", "image": {"repository": f"{REG}/api", "tag": "t-api"}},
                {"name": "proxy", "image": {"repository": "envoy", "tag": "1"}},
            ]}},
        ),
        # an escaped dot is part of a key; a scalar path replaces the value
        (
            ["docs"],
            ["docs"],
            {"docs--alice": {"image": f"{REG}/docs",
                             "annotations": {"app.kubernetes.io/version": "t-docs"}}},
            {"docs--alice": {"image": f"{REG}/docs",
                             "annotations": {"owner": "team",
                                             "app.kubernetes.io/version": "t-docs"}}},
        ),
        # no record: nothing of the image injected, the Helmfile's values as they are
        (
            ["web"],
            ["api"],
            {"web--alice": {}, "api": {}},
            {"web--alice": {"image": {"repository": "web", "tag": "1.0", "pullPolicy": "Always"}},
             "api": API_VALUES},
        ),
    ],
)  # fmt: skip
def test_a_copy_deploys_the_image_devstack_build_recorded(
    tmp_path: Path,
    services: list[str],
    built: list[str],
    injected: dict[str, dict[str, Any]],
    values: dict[str, dict[str, Any]],
) -> None:
    path = workflow_project(tmp_path)
    path.write_text(BUILT)
    builds = {s: _record(s, f"t-{s}") for s in built}
    plan = plan_up(load(path), "alice", services, set(), builds=builds)
    by = {r.release: r for r in plan.releases}
    assert set(by) == set(injected)
    for release, want in injected.items():
        got = {k: v for k, v in by[release].injected.items() if k != "devstack"}
        assert got == want, release
        assert by[release].as_json()["injectedValues"] == dict(by[release].injected)
    for release, want in values.items():
        got = {k: v for k, v in by[release].values.items() if k != "devstack"}
        assert got == want, release
        # devstack's own settings are there as the Helmfile set them
        assert by[release].values["devstack"]["build"]["image"].startswith(REG)
    # without builds (the default) nothing of the image is injected
    plain = plan_up(load(path), "alice", services, set())
    assert all(set(r.injected) <= {"devstack"} for r in plain.releases)


@pytest.mark.parametrize(
    ("services", "message"),
    [
        (
            ["nope"],
            "{path} declares no service 'nope' (it declares: hello, front)",
        ),
        (["old"], "service 'old' is installed: false in {path}"),
        (
            ["front", "nope", "old"],
            "{path} declares no service 'nope' (it declares: hello, front); "
            "service 'old' is installed: false in {path}",
        ),
    ],
)
def test_plan_up_errors(tmp_path: Path, services: list[str], message: str) -> None:
    path = workflow_project(tmp_path)
    path.write_text(FRONT)
    with pytest.raises(PlanError) as e:
        plan_up(load(path), "alice", services, set())
    assert str(e.value) == message.format(path=path)


def test_a_copy_name_too_long_is_the_owner_rules_error(tmp_path: Path) -> None:
    path = workflow_project(tmp_path)
    path.write_text("releases:\n  - name: a-rather-long-service-name\n    chart: ./charts/plain\n")
    with pytest.raises(OwnerError) as e:
        plan_up(load(path), "alice-smith-jones", [], set())
    assert str(e.value) == (
        "the copy name 'a-rather-long-service-name--alice-smith-jones' is 45 characters; the "
        "service's name and the owner together may have 38 (shorten the release name or set "
        "DEVSTACK_OWNER to a shorter owner)"
    )


@pytest.mark.parametrize(
    ("needs", "message"),
    [
        ({"a": ["b"], "b": ["a"]}, "releases need each other in a cycle: a -> b -> a"),
        ({"a": ["a"], "b": []}, "release 'a' needs itself"),
        ({"a": ["ghost"], "b": []}, "names no release"),
    ],
)
def test_needs_problems_are_the_parsers_errors(
    tmp_path: Path, needs: dict[str, list[str]], message: str
) -> None:
    path = workflow_project(tmp_path)
    releases = "".join(
        f"  - name: {n}\n    chart: ./charts/plain\n    needs: [{', '.join(ns)}]\n"
        for n, ns in needs.items()
    )
    path.write_text("releases:\n" + releases)
    with pytest.raises(HelmfileError) as e:
        load(path)
    assert message in str(e.value)


def test_a_release_for_another_kube_context_is_refused(tmp_path: Path) -> None:
    path = workflow_project(tmp_path)
    path.write_text(
        "helmDefaults:\n  kubeContext: prod\nreleases:\n  - name: db\n    chart: ./charts/plain\n"
    )
    plan = plan_up(load(path), "alice", [], set())
    assert plan.releases[0].kube_context == "prod"
    check_context(plan, "prod")
    with pytest.raises(PlanError) as e:
        check_context(plan, "dev")
    assert str(e.value) == (
        "helmDefaults.kubeContext names another kube context than dev for: db--alice (prod); "
        "devstack up deploys to one context: pass --context"
    )
    # the Helmfile names none: the project's context
    check_context(plan_up(load(workflow_project(tmp_path / "b")), "alice", [], set()), "dev")


# --- down ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("services", "deployed", "levels"),
    [
        (
            [],
            {
                ("default", "hello--alice"),
                ("default", "db--alice"),
                ("default", "api"),  # a baseline
                ("default", "db"),
                ("default", "hello--bob"),  # someone else's
                ("other", "cache--alice"),  # not where the Helmfile puts cache
            },
            [
                (Removal("hello", "hello--alice", ""),),
                (Removal("db", "db--alice", ""),),
            ],
        ),
        (
            ["db"],
            {("default", "hello--alice"), ("default", "db--alice")},
            [(Removal("db", "db--alice", ""),)],
        ),
        ([], {("default", "hello"), ("default", "hello--bob")}, []),
        (
            [],
            {("default", "db--alice"), ("default", "cache--alice"), ("default", "api--alice")},
            [
                (Removal("api", "api--alice", ""),),
                (Removal("db", "db--alice", ""), Removal("cache", "cache--alice", "")),
            ],
        ),
    ],
)
def test_plan_down(
    helmfile: Helmfile,
    services: list[str],
    deployed: set[tuple[str, str]],
    levels: list[tuple[Removal, ...]],
) -> None:
    assert list(plan_down(helmfile, "alice", services, deployed, namespace="default")) == levels


def test_plan_down_of_an_unknown_service(helmfile: Helmfile) -> None:
    with pytest.raises(PlanError, match="declares no service 'web'"):
        plan_down(helmfile, "alice", ["web"], set())


# --- status ----------------------------------------------------------------------------------


def test_status_targets_and_urls(helmfile: Helmfile) -> None:
    deployed = {
        ("default", "hello--alice"),
        ("default", "hello"),
        ("default", "db"),
        ("default", "db--bob"),
        ("default", "api--alice"),
    }
    targets = status_targets(helmfile, "alice", deployed, namespace="default")
    assert targets == [
        Target("db", "db", "", "default", "db"),
        Target("api", "api--alice", "alice", "default", "api"),
        Target("hello", "hello--alice", "alice", "default", "hello"),
        Target("hello", "hello", "", "default", "hello"),
    ]
    settings = AgentSettings(domain="dev.example.com", preview_domain="preview.example.com")
    assert [preview_url(t, settings) for t in targets] == [
        "http://db.dev.example.com",
        "http://api--alice.preview.example.com",
        "http://hello--alice.preview.example.com",
        "http://hello.dev.example.com",
    ]


# --- readiness -------------------------------------------------------------------------------


def deployment(want: int | None, **status: Any) -> dict[str, Any]:
    spec = {} if want is None else {"replicas": want}
    return {
        "kind": "Deployment",
        "metadata": {"name": "d", "generation": 2},
        "spec": spec,
        "status": {"observedGeneration": 2, **status},
    }


def job(*conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "kind": "Job",
        "metadata": {"name": "j", "generation": 1},
        "status": {
            "conditions": [{"type": t, "status": s, "message": m} for t, s, m in conditions]
        },
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (deployment(2, replicas=2, readyReplicas=2, updatedReplicas=2), (2, 2, True, None)),
        (deployment(2, replicas=2, readyReplicas=1, updatedReplicas=2), (1, 2, False, None)),
        # an old Pod still going away
        (deployment(2, replicas=3, readyReplicas=2, updatedReplicas=2), (2, 2, False, None)),
        # the controller has not seen the new generation yet
        (
            {
                **deployment(1, replicas=1, readyReplicas=1, updatedReplicas=1),
                "metadata": {"name": "d", "generation": 3},
            },
            (1, 1, False, None),
        ),
        # replicas unset means 1
        (deployment(None), (0, 1, False, None)),
        (deployment(0, replicas=0), (0, 0, True, None)),
        (
            deployment(
                1,
                conditions=[
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "slow",
                    }
                ],
            ),
            (0, 1, False, "slow"),
        ),
        (job(), (0, 1, False, None)),
        (job(("Complete", "True", "")), (1, 1, True, None)),
        (job(("Failed", "True", "BackoffLimitExceeded")), (0, 1, False, "BackoffLimitExceeded")),
        (
            {
                "kind": "DaemonSet",
                "metadata": {"name": "x"},
                "status": {
                    "desiredNumberScheduled": 3,
                    "numberReady": 3,
                    "updatedNumberScheduled": 3,
                },
            },
            (3, 3, True, None),
        ),
        (
            {
                "kind": "StatefulSet",
                "metadata": {"name": "x"},
                "spec": {"replicas": 2},
                "status": {"readyReplicas": 1, "updatedReplicas": 2, "replicas": 2},
            },
            (1, 2, False, None),
        ),
    ],
)
def test_progress(obj: dict[str, Any], expected: tuple[int, int, bool, str | None]) -> None:
    p = progress(obj)
    assert (p.ready, p.want, p.done, p.failed) == expected


@pytest.mark.parametrize(
    ("items", "text"),
    [
        ([], "ready (no workloads)"),
        ([Progress("Deployment", "a", 2, 2, True)], "ready"),
        (
            [Progress("Deployment", "a", 1, 2, False), Progress("Deployment", "b", 1, 1, True)],
            "waiting: 2/3 pods ready",
        ),
        (
            [Progress("Deployment", "a", 1, 1, True), Progress("Job", "j", 0, 1, False)],
            "waiting: 1/1 pods ready, 0/1 jobs complete",
        ),
        (
            [Progress("Deployment", "a", 0, 1, False, failed="ProgressDeadlineExceeded")],
            "failed: Deployment a: ProgressDeadlineExceeded",
        ),
    ],
)
def test_summary(items: list[Progress], text: str) -> None:
    assert summary(items) == text


# --- where the sidecar is ----------------------------------------------------------------------


def test_sidecar_access_from_the_charts_manifest(tmp_path: Path) -> None:
    from tests.helm.charts import documents, prepare_example, render

    chart = prepare_example(tmp_path / "charts")
    values = {"devstack": {"enabled": True, "owner": "alice"}}
    docs = documents(render(chart, values, name="hello--alice", namespace="dev"))
    access = sidecar_access(docs, release="hello--alice")
    assert (access.host, access.tls, access.secret, access.key) == (
        "hello--alice-sync.localtest.me",
        False,
        "hello--alice-devstack-token",
        "token",
    )
    assert access.default_address == "hello--alice-sync.localtest.me:80"
    # TLS on the route, another key, a Secret of one's own
    values["devstack"].update(  # type: ignore[attr-defined]
        {"route": {"tls": {"secretName": "x"}}, "token": {"existingSecret": "mine", "key": "k"}}
    )
    docs = documents(render(chart, values, name="hello--alice", namespace="dev"))
    access = sidecar_access(docs, release="hello--alice")
    assert (access.tls, access.secret, access.key, access.default_address) == (
        True,
        "mine",
        "k",
        "hello--alice-sync.localtest.me:443",
    )
    # a baseline (devstack off) has neither
    docs = documents(render(chart, {}, name="hello", namespace="dev"))
    with pytest.raises(ConfigError, match="release hello has no devstack sync route"):
        sidecar_access(docs, release="hello")


# --- Helm's release records ------------------------------------------------------------------


def record(name: str, version: int, release: dict[str, Any], *, gzipped: bool = True) -> Any:
    import base64
    import gzip
    import json

    raw = json.dumps(release).encode()
    helm = base64.b64encode(gzip.compress(raw) if gzipped else raw)
    return {
        "metadata": {
            "name": f"sh.helm.release.v1.{name}.v{version}",
            "labels": {"owner": "helm", "name": name, "version": str(version)},
        },
        "data": {"release": base64.b64encode(helm).decode()},
    }


def test_helm_release_records() -> None:
    from devstack.cli.releases import decode_release, latest_records

    records = [
        record("db", 1, {"name": "db", "manifest": "kind: Deployment\n"}),
        record("db", 2, {"name": "db", "manifest": "kind: StatefulSet\n"}, gzipped=False),
        record("api", 1, {"name": "api"}),
    ]
    latest = latest_records(reversed(records))
    assert sorted(latest) == ["api", "db"]
    assert decode_release(latest["db"]) == {"name": "db", "manifest": "kind: StatefulSet\n"}
    broken = {"metadata": {"name": "sh.helm.release.v1.x.v1"}, "data": {"release": "bm90IGhlbG0="}}
    with pytest.raises(DevstackError, match=r"Helm's release record sh\.helm\.release\.v1\.x\.v1 "):
        decode_release(broken)


def test_up_baseline_plans_the_shared_baselines_not_copies(helmfile: Helmfile) -> None:
    """``devstack up --baseline``: the platform team's deploy. The named
    services' baselines (every installed one when none is named), routed and
    provisioned without a sidecar, each installed or upgraded; what they need
    and the cluster lacks comes first; no copy of anyone."""
    plan = plan_up(helmfile, "alice", [], set(), baseline=True)
    assert shape(plan) == [
        [("db", "baseline", "install"), ("cache", "baseline", "install")],
        [("api", "baseline", "install")],
        [("hello", "baseline", "install")],
    ]
    hello = plan.levels[2][0]
    assert hello.injected == {
        "devstack": {
            "enabled": True,
            "owner": "",
            "service": "hello",
            "sidecar": {"enabled": False},
        }
    }
    # one named, its needs partly there: the named one is upgraded, the missing
    # need installed, the present one left alone
    plan = plan_up(
        helmfile, "alice", ["api"], {("default", "api"), ("default", "db")}, baseline=True
    )
    assert shape(plan) == [[("cache", "baseline", "install")], [("api", "baseline", "upgrade")]]
    assert plan.present == ("db",)
