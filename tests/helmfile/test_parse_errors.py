"""Every problem the Helmfile reader reports, with its exact message: a table of
small Helmfiles (each a few files written into a fresh folder) and what
`devstack.core.helmfile.load` says about them."""

# ruff: noqa: E501 (the table holds whole problem lines, as a person reads them)
from __future__ import annotations

from pathlib import Path

import pytest

from devstack.core.helmfile import HelmfileError, load

CHART = {"charts/app/Chart.yaml": "apiVersion: v2\nname: app\nversion: 0.1.0\n"}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in {**CHART, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def problems(tmp_path: Path, files: dict[str, str], environment: str = "default") -> list[str]:
    write(tmp_path, files)
    with pytest.raises(HelmfileError) as caught:
        load(tmp_path / "helmfile.yaml", environment=environment)
    return list(caught.value.problems)


R = "releases:\n- name: app\n  chart: ./charts/app\n"

CASES: dict[str, tuple[dict[str, str], list[str]]] = {
    "not YAML": (
        {"helmfile.yaml": "releases: [\n"},
        ["helmfile.yaml:2: not valid YAML: expected the node content, but found '<stream end>'"],
    ),
    "a document that is not a mapping": (
        {"helmfile.yaml": "- a\n"},
        ["helmfile.yaml:1: must be a mapping, not a list"],
    ),
    "unknown top-level key": (
        {"helmfile.yaml": R + "bases:\n- base.yaml\n"},
        [
            "helmfile.yaml:4: bases: unknown key (devstack reads: releases, repositories, "
            "helmfiles, environments, helmDefaults; see docs/helmfile.md)"
        ],
    ),
    "unknown release key": (
        {"helmfile.yaml": R + "  wait: true\n"},
        [
            "helmfile.yaml:4: releases[0].wait: unknown key (devstack reads: name, chart, "
            "version, namespace, values, set, needs, labels, installed; see docs/helmfile.md)"
        ],
    ),
    "a key set twice": (
        {"helmfile.yaml": R + "  chart: ./charts/app\n"},
        ["helmfile.yaml:4: releases[0].chart: is set twice (first at line 3)"],
    ),
    "release without a name": (
        {"helmfile.yaml": "releases:\n- chart: ./charts/app\n"},
        ["helmfile.yaml:2: releases[0].name: is required"],
    ),
    "release name Helm refuses": (
        {"helmfile.yaml": "releases:\n- name: My_App\n  chart: ./charts/app\n"},
        [
            "helmfile.yaml:2: releases[0].name: 'My_App' is not a Helm release name (1-53 "
            "lowercase letters, digits and -, starting and ending with a letter or digit)"
        ],
    ),
    "duplicate release names": (
        {"helmfile.yaml": R + "- name: app\n  chart: ./charts/app\n  namespace: other\n"},
        [
            "helmfile.yaml:4: releases[1].name: release 'app' is already declared at "
            "helmfile.yaml:2 (devstack names a service by its release: names are unique)"
        ],
    ),
    "version as a number": (
        {"helmfile.yaml": R + "  version: 1.10\n"},
        ['helmfile.yaml:4: releases[0].version: must be a string, not a number (quote it: "1.1")'],
    ),
    "installed not a boolean": (
        {"helmfile.yaml": R + "  installed: yes please\n"},
        ["helmfile.yaml:4: releases[0].installed: must be true or false, not a string"],
    ),
    "bad namespace": (
        {"helmfile.yaml": R + "  namespace: Shop\n"},
        ["helmfile.yaml:4: releases[0].namespace: 'Shop' is not a namespace name"],
    ),
    "label not a string": (
        {"helmfile.yaml": R + "  labels:\n    tier: 1\n"},
        [
            "helmfile.yaml:5: releases[0].labels.tier: must be a string, not a number "
            '(quote it: "1")'
        ],
    ),
    "no chart folder": (
        {"helmfile.yaml": "releases:\n- name: app\n  chart: ./charts/nope\n"},
        [
            "helmfile.yaml:3: releases[0].chart: './charts/nope': there is no chart folder charts/nope"
        ],
    ),
    "repo/chart of an undeclared repository": (
        {"helmfile.yaml": "releases:\n- name: db\n  chart: bitnami/postgresql\n"},
        [
            "helmfile.yaml:3: releases[0].chart: 'bitnami/postgresql': no repository 'bitnami' "
            "is declared (repositories: none) and there is no chart folder bitnami/postgresql"
        ],
    ),
    "a chart URL that is not oci://": (
        {"helmfile.yaml": "releases:\n- name: db\n  chart: https://example.invalid/db.tgz\n"},
        [
            "helmfile.yaml:3: releases[0].chart: 'https://example.invalid/db.tgz': a chart is a "
            "local path, <repository>/<chart> or oci://… (see docs/helmfile.md)"
        ],
    ),
    "oci:// without a chart": (
        {"helmfile.yaml": "releases:\n- name: db\n  chart: oci://127.0.0.1:5000\n"},
        [
            "helmfile.yaml:3: releases[0].chart: 'oci://127.0.0.1:5000' names no chart (oci://host/path/chart)"
        ],
    ),
    "repository without url, and an unknown key": (
        {"helmfile.yaml": "repositories:\n- name: bitnami\n  username: me\n" + R},
        [
            "helmfile.yaml:3: repositories[0].username: unknown key (devstack reads: name, url, "
            "oci; see docs/helmfile.md)",
            "helmfile.yaml:2: repositories[0].url: is required",
        ],
    ),
    "repository url without a scheme": (
        {"helmfile.yaml": "repositories:\n- name: b\n  url: 127.0.0.1:8879\n" + R},
        [
            "helmfile.yaml:3: repositories[0].url: must be an http:// or https:// URL, not "
            "'127.0.0.1:8879' (an OCI registry needs oci: true)"
        ],
    ),
    "OCI repository url with a scheme": (
        {
            "helmfile.yaml": "repositories:\n- name: r\n  url: oci://127.0.0.1:5000\n  oci: true\n"
            + R
        },
        [
            "helmfile.yaml:3: repositories[0].url: an OCI repository's url has no scheme "
            "(host/path, not 'oci://127.0.0.1:5000')"
        ],
    ),
    "repository declared twice": (
        {
            "helmfile.yaml": "repositories:\n- name: b\n  url: http://127.0.0.1:1\n"
            "- name: b\n  url: http://127.0.0.1:2\n" + R
        },
        ["helmfile.yaml:4: repositories[1].name: repository 'b' is declared twice"],
    ),
    "values file that does not exist": (
        {"helmfile.yaml": R + "  values:\n  - values/app.yaml\n"},
        ["helmfile.yaml:5: releases[0].values[0]: values file values/app.yaml does not exist"],
    ),
    "values not a list": (
        {"helmfile.yaml": R + "  values:\n    replicas: 2\n"},
        [
            "helmfile.yaml:4: releases[0].values: must be a list of values files and maps, not a mapping"
        ],
    ),
    "values entry neither file nor map": (
        {"helmfile.yaml": R + "  values:\n  - 3\n"},
        ["helmfile.yaml:5: releases[0].values[0]: must be a values file or a map, not a number"],
    ),
    "values file that is not a mapping": (
        {"helmfile.yaml": R + "  values:\n  - app.yaml\n", "app.yaml": "- 1\n"},
        ["app.yaml:1: a values file must be a mapping, not a list"],
    ),
    "values file that is not YAML": (
        {"helmfile.yaml": R + "  values:\n  - app.yaml\n", "app.yaml": "a: [\n"},
        ["app.yaml:2: not valid YAML: expected the node content, but found '<stream end>'"],
    ),
    "values file of two documents": (
        {"helmfile.yaml": R + "  values:\n  - app.yaml\n", "app.yaml": "a: 1\n---\nb: 2\n"},
        ["app.yaml:3: a values file has one document"],
    ),
    "set without exactly one of value, values, file": (
        {"helmfile.yaml": R + "  set:\n  - name: a\n  - name: b\n    value: 1\n    file: f\n"},
        [
            "helmfile.yaml:5: releases[0].set[0]: needs exactly one of value, values and file",
            "helmfile.yaml:6: releases[0].set[1]: needs exactly one of value, values and file "
            "(has value, file)",
        ],
    ),
    "set with a bad name": (
        {
            "helmfile.yaml": R
            + "  set:\n  - name: a..b\n    value: 1\n  - name: a[x]\n    value: 1\n"
        },
        [
            "helmfile.yaml:5: releases[0].set[0].name: 'a..b' has an empty key",
            "helmfile.yaml:7: releases[0].set[1].name: 'a[x]' has a list index that is not [<number>]",
        ],
    ),
    "set with a float, a map and a missing file": (
        {
            "helmfile.yaml": R + "  set:\n  - name: a\n    value: 1.5\n  - name: b\n"
            "    values: [{x: 1}]\n  - name: c\n    file: nope.txt\n  - name: d\n    key: 1\n"
        },
        [
            'helmfile.yaml:6: releases[0].set[0].value: quote it ("1.5"): Helm reads a number '
            "here as text",
            "helmfile.yaml:8: releases[0].set[1].values[0]: must be a string, number or boolean, "
            "not a mapping",
            "helmfile.yaml:10: releases[0].set[2].file: file nope.txt does not exist",
            "helmfile.yaml:12: releases[0].set[3].key: unknown key (devstack reads: name, value, "
            "values, file; see docs/helmfile.md)",
            "helmfile.yaml:11: releases[0].set[3]: needs exactly one of value, values and file",
        ],
    ),
    "needs naming nothing": (
        {"helmfile.yaml": R + "  needs:\n  - db\n"},
        ["helmfile.yaml:5: releases[0].needs[0]: 'db' names no release (as 'db'); releases: app"],
    ),
    "needs in the wrong namespace": (
        {
            "helmfile.yaml": R + "  namespace: shop\n  needs:\n  - db\n"
            "- name: db\n  chart: ./charts/app\n  namespace: data\n"
        },
        [
            "helmfile.yaml:6: releases[0].needs[0]: 'db' names no release (as 'shop/db'); "
            "release 'db' is in namespace 'data': write 'data/db'"
        ],
    ),
    "needs in the wrong kube context": (
        {
            "helmfile.yaml": "helmDefaults:\n  kubeContext: dev\n" + R + "  needs:\n  - prod//db\n"
            "- name: db\n  chart: ./charts/app\n"
        },
        ["helmfile.yaml:7: releases[0].needs[0]: 'prod//db' is not [kubecontext/][namespace/]name"],
    ),
    "needs of the wrong kube context": (
        {
            "helmfile.yaml": "helmDefaults:\n  kubeContext: dev\n"
            + R
            + "  needs:\n  - prod/ns/db\n"
            "- name: db\n  chart: ./charts/app\n  namespace: ns\n"
        },
        [
            "helmfile.yaml:7: releases[0].needs[0]: 'prod/ns/db' names no release (as "
            "'prod/ns/db'); release 'db' is in namespace 'ns', kube context 'dev': write 'dev/ns/db'"
        ],
    ),
    "needs not a list": (
        {"helmfile.yaml": R + "  needs: db\n"},
        ["helmfile.yaml:4: releases[0].needs: must be a list of release names, not a string"],
    ),
    "needs a release that is not installed": (
        {
            "helmfile.yaml": R + "  needs:\n  - db\n"
            "- name: db\n  chart: ./charts/app\n  installed: false\n"
        },
        [
            "helmfile.yaml:5: releases[0].needs[0]: 'db' is installed: false; mark it installed "
            "or remove it from 'app''s needs"
        ],
    ),
    "a release that needs itself": (
        {"helmfile.yaml": R + "  needs:\n  - app\n"},
        ["helmfile.yaml:4: releases[0].needs: release 'app' needs itself"],
    ),
    "a cycle": (
        {
            "helmfile.yaml": "releases:\n"
            "- name: a\n  chart: ./charts/app\n  needs: [b]\n"
            "- name: b\n  chart: ./charts/app\n  needs: [c]\n"
            "- name: c\n  chart: ./charts/app\n  needs: [a]\n"
            "- name: d\n  chart: ./charts/app\n"
        },
        [
            "helmfile.yaml:4: releases[0].needs: releases need each other in a cycle: a -> b -> c -> a"
        ],
    ),
    "unknown helmDefaults key and bad types": (
        {"helmfile.yaml": "helmDefaults:\n  verify: true\n  wait: 1\n  timeout: soon\n" + R},
        [
            "helmfile.yaml:2: helmDefaults.verify: unknown key (devstack reads: kubeContext, wait, "
            "waitForJobs, timeout, createNamespace, atomic; see docs/helmfile.md)",
            "helmfile.yaml:3: helmDefaults.wait: must be true or false, not a number",
            "helmfile.yaml:4: helmDefaults.timeout: must be a number of seconds, not a string",
        ],
    ),
    "environments and releases in one document": (
        {"helmfile.yaml": "environments:\n  default: {}\n" + R},
        [
            "helmfile.yaml:1: environments: environments and releases must be in separate "
            "documents (as Helmfile v1 requires): put --- between them"
        ],
    ),
    "environments after releases": (
        {"helmfile.yaml": R + "---\nenvironments:\n  default: {}\n"},
        ["helmfile.yaml:5: environments: must come before releases (as Helmfile v1 requires)"],
    ),
    "environment with an unknown key and a missing values file": (
        {
            "helmfile.yaml": "environments:\n  dev:\n    kubeContext: dev\n    values:\n"
            "    - env/dev.yaml\n---\n" + R
        },
        [
            "helmfile.yaml:3: environments.dev.kubeContext: unknown key (devstack reads: values; "
            "see docs/helmfile.md)",
            "helmfile.yaml:5: environments.dev.values[0]: values file env/dev.yaml does not exist",
        ],
    ),
    "releases in two documents": (
        {"helmfile.yaml": R + "---\n" + R.replace("app\n  chart", "other\n  chart")},
        [
            "helmfile.yaml:5: releases: is also set in document 1 (line 1); Helmfile keeps only "
            "the last list: declare them in one document"
        ],
    ),
    "an environment declared in two documents": (
        {"helmfile.yaml": "environments:\n  dev: {}\n---\nenvironments:\n  dev: {}\n---\n" + R},
        [
            "helmfile.yaml:5: environments.dev: is also declared in document 1; declare each "
            "environment once"
        ],
    ),
    "sub-helmfile that does not exist, a glob, and an unknown key": (
        {
            "helmfile.yaml": "helmfiles:\n- nope/helmfile.yaml\n- '*/helmfile.yaml'\n"
            "- path: a.yaml\n  values: [x.yaml]\n" + R,
            "a.yaml": "",
        },
        [
            "helmfile.yaml:2: helmfiles[0]: sub-helmfile nope/helmfile.yaml does not exist",
            "helmfile.yaml:3: helmfiles[1]: '*/helmfile.yaml': globs are not supported; list each file",
            "helmfile.yaml:5: helmfiles[2].values: unknown key (devstack reads: path; see "
            "docs/helmfile.md)",
        ],
    ),
    "sub-helmfiles that include each other": (
        {
            "helmfile.yaml": "helmfiles:\n- sub/helmfile.yaml\n" + R,
            "sub/helmfile.yaml": "helmfiles:\n- ../helmfile.yaml\n",
        },
        [
            "sub/helmfile.yaml:2: helmfiles[0]: includes helmfile.yaml again "
            "(helmfile.yaml -> sub/helmfile.yaml -> helmfile.yaml)"
        ],
    ),
    "problems in a sub-helmfile name its file": (
        {
            "helmfile.yaml": "helmfiles:\n- sub/helmfile.yaml\n" + R,
            "sub/helmfile.yaml": "releases:\n- name: app\n  chart: ../charts/app\n",
        },
        [
            "helmfile.yaml:4: releases[0].name: release 'app' is already declared at "
            "sub/helmfile.yaml:2 (devstack names a service by its release: names are unique)"
        ],
    ),
    "an undeclared environment": (
        {"helmfile.yaml": "environments:\n  dev: {}\n---\n" + R, "environment": "prod"},
        ["helmfile.yaml: environment 'prod' is not declared (environments: dev)"],
    ),
    "no helmfile": ({}, ["helmfile.yaml: Helmfile helmfile.yaml does not exist"]),
    "devstack: not a mapping": (
        {"helmfile.yaml": R + "  values:\n  - devstack: true\n"},
        ["helmfile.yaml:5: releases[0].values[0]: devstack: must be a mapping, not a boolean"],
    ),
    "devstack: an unknown key of the library chart, inline": (
        {
            "helmfile.yaml": R
            + "  values:\n  - devstack:\n      enabled: true\n      sidecars: {}\n"
        },
        [
            "helmfile.yaml:7: releases[0].values[0]: devstack.sidecars: unknown key of the library "
            "chart (expected one of: aws, build, enabled, image, imagePullSecrets, labels, local, name, "
            "owner, provision, readiness, route, service, sidecar, team, test, token, workspace)"
        ],
    ),
    "devstack: a bad value in a values file names that file": (
        {
            "helmfile.yaml": R + "  values:\n  - app.yaml\n",
            "app.yaml": "replicas: 1\ndevstack:\n  sidecar:\n    reload: restart\n",
        },
        ["app.yaml:4: devstack.sidecar.reload: must be one of: none, signal, exec, supervise"],
    ),
    "devstack: the owner rule of the library chart": (
        {"helmfile.yaml": R + "  set:\n  - name: devstack.owner\n    value: Alice_Smith\n"},
        [
            "helmfile.yaml:5: releases[0].set[0]: devstack.owner: 'Alice_Smith' does not fit: the "
            "engineer this copy belongs to: 1-20 lowercase letters, digits and single '-' between "
            "them (the one owner rule, devstack.core.owner; docs/helmfile.md); empty is the baseline"
        ],
    ),
    "devstack: the aws spec of the library chart": (
        {
            "helmfile.yaml": R + "  values:\n  - devstack:\n      aws:\n        sqs:\n"
            "        - visibility: 30\n"
        },
        [
            "helmfile.yaml:8: releases[0].values[0]: devstack.aws.sqs[0].visibility: unknown key of "
            "the library chart (expected one of: attributes, contentBasedDeduplication, deadLetter, "
            "fifo, name)",
            "helmfile.yaml:8: releases[0].values[0]: devstack.aws.sqs[0].name: is required",
        ],
    ),
}


@pytest.mark.parametrize(("files", "expected"), CASES.values(), ids=CASES.keys())
def test_each_problem_is_one_line_naming_file_line_and_field(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    environment = files.pop("environment", "default")
    assert problems(tmp_path, files, environment) == expected


def test_the_error_says_bad_helmfile_and_lists_every_problem(tmp_path: Path) -> None:
    write(tmp_path, {"helmfile.yaml": R + "  wait: true\n  needs: [db]\n"})
    with pytest.raises(HelmfileError) as caught:
        load(tmp_path)
    assert str(caught.value).splitlines() == [
        "bad Helmfile:",
        "  helmfile.yaml:4: releases[0].wait: unknown key (devstack reads: name, chart, version, "
        "namespace, values, set, needs, labels, installed; see docs/helmfile.md)",
        "  helmfile.yaml:5: releases[0].needs[0]: 'db' names no release (as 'db'); releases: app",
    ]
