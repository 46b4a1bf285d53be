"""`devstack up` with remote charts, on the testbed's real control plane:
a Helmfile whose copy (web, a local chart) needs two baselines whose charts
are remote, db from a Helm chart repository and cache from an OCI registry,
both served on 127.0.0.1 by the test (tests/support/chart_repo.py,
tests/support/registry.py).

- `up --dry-run` downloads nothing;
- `up web` pulls db's chart at its pinned version and cache's newest,
  installs both on the API server, waits until their Pods are Ready, then
  deploys web--alice; Helm's release records name the chart versions pulled;
- a second `up` (alice's copy of db, from the same chart) reads the cache:
  the repository sees no request at all;
- a version the repository lacks ends `up` with one line naming the release,
  the chart, the repository and the fix, exit 1, no traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.cli.releases import decode_release
from tests.cluster.test_workflow import deployments, devstack, flags
from tests.support.chart_repo import PLAIN, serve_repo
from tests.support.registry import running_registry
from tests.support.testbed import Kube, Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def chart_version(admin: Kube, namespace: str, release: str) -> str:
    """The chart version of ``release``'s newest Helm record."""
    records = admin.get(
        f"/api/v1/namespaces/{namespace}/secrets", labelSelector=f"owner=helm,name={release}"
    )["items"]
    newest = max(records, key=lambda r: int(r["metadata"]["labels"]["version"]))
    return str(decode_release(newest)["chart"]["metadata"]["version"])


def write_helmfile(path: Path, repo_url: str, registry: str, db_version: str) -> None:
    data: dict[str, Any] = {
        "repositories": [
            {"name": "local", "url": repo_url},
            {"name": "reg", "url": f"{registry}/charts", "oci": True},
        ],
        "releases": [
            {
                "name": "db",
                "chart": "local/plain",
                "version": db_version,
                "values": [{"replicas": 2}],
            },
            {"name": "cache", "chart": "reg/plain"},
            {"name": "web", "chart": "./charts/plain", "needs": ["db", "cache"]},
        ],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_up_deploys_baselines_from_a_repository_and_a_registry(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    with (
        serve_repo(tmp_path / "repo") as repo,
        running_registry(tmp_path / "registry") as registry,
    ):
        repo.add("0.1.0", "0.2.0", "0.3.0")
        registry.push("1.0.0", "1.1.0", "1.2.0-rc.1")
        project = tmp_path / "project"
        shutil.copytree(PLAIN, project / "charts" / "plain")
        helmfile = project / "helmfile.yaml"
        write_helmfile(helmfile, repo.url, registry.host, "0.2.0")
        alice = flags(testbed, helmfile, namespace, "alice")
        env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
        pushed = registry.settled()

        # --dry-run: the plan, and no chart is downloaded (nor an index read)
        run = devstack("up", "web", "--dry-run", *alice, env=env)
        assert run.returncode == 0, run.stderr
        assert [line.split()[1] for line in run.stdout.splitlines()[1:4]] == [
            "db",
            "cache",
            "web--alice",
        ]
        assert "local/plain" in run.stdout and "reg/plain" in run.stdout
        assert repo.log() == []
        assert registry.settled() == pushed

        # up: both baselines from their remote charts, Ready, then the copy
        run = devstack("up", "web", *alice, env=env)
        assert run.returncode == 0, run.stderr
        for release in ("db", "cache", "web--alice"):
            assert f"{release}: ready" in run.stderr.splitlines(), run.stderr
        apps = deployments(admin, namespace)
        assert apps["db"]["status"]["readyReplicas"] == 2
        assert apps["cache"]["status"]["readyReplicas"] == 1
        assert chart_version(admin, namespace, "db") == "0.2.0"  # as pinned
        assert chart_version(admin, namespace, "cache") == "1.1.0"  # the newest release
        assert repo.log() == [("/index.yaml", 200), ("/plain-0.2.0.tgz", 200)]
        pulled = registry.settled()[len(pushed) :]
        assert "GET /v2/charts/plain/tags/list" in pulled
        charts = tmp_path / "cache" / "devstack" / "charts"
        assert sorted(p.name for p in charts.glob("*/plain-*")) == ["plain-0.2.0", "plain-1.1.0"]

        # a second up of the same chart: from the cache, the repository sees nothing
        run = devstack("up", "db", *alice, env=env)
        assert run.returncode == 0, run.stderr
        assert "db--alice: ready" in run.stderr.splitlines(), run.stderr
        assert chart_version(admin, namespace, "db--alice") == "0.2.0"
        assert repo.log() == [("/index.yaml", 200), ("/plain-0.2.0.tgz", 200)]

        # a version the repository lacks: one line, exit 1
        write_helmfile(helmfile, repo.url, registry.host, "9.9.9")
        run = devstack("up", "db", *alice, env=env)
        assert run.returncode == 1, run.stderr
        line = next(x for x in run.stderr.splitlines() if x.startswith("devstack up: "))
        db_line = helmfile.read_text().splitlines().index("- name: db") + 1
        assert line == (
            f"devstack up: release db: chart local/plain: {repo.url} has no version '9.9.9' of "
            "plain (it has: 0.3.0, 0.2.0, 0.1.0): set version to one of them in "
            f"{helmfile}:{db_line}"
        )
        assert chart_version(admin, namespace, "db--alice") == "0.2.0"  # untouched
