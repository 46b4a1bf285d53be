"""`devstack build`, then `devstack up`, through the command line, on the
testbed's real control plane (tests/support/testbed.py): the image `build`
recorded is the one Helm deploys in the copy, and a baseline keeps its
chart's own, in the plan `up --dry-run -o json` prints and in the
Deployments the API server holds afterwards.

The `docker` on the PATH is a stand-in written by this test that records its
argv and exits 0: this machine has no container engine (nor registry), and
the testbed's kwok nodes pull no images. Everything after the builder is
real: the record file, `up`'s plan, Helm's install and the server's objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.sync import devstack_cmd
from tests.support.testbed import Kube, Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHART_YAML = "apiVersion: v2\nname: app\nversion: 0.1.0\n"
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels: {app.kubernetes.io/instance: {{ .Release.Name | quote }}}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/instance: {{ .Release.Name | quote }}}
  template:
    metadata:
      labels: {app.kubernetes.io/instance: {{ .Release.Name | quote }}}
    spec:
      containers:
        - name: app
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
"""
VALUES = "image: {repository: registry.invalid/app, tag: '1.0'}\n"
HELMFILE = """\
releases:
  - name: api
    chart: ./chart
    values:
      - devstack: {build: {image: registry.example.com:5000/team/api}}
  - name: web
    chart: ./chart
    needs: [api]
    values:
      - devstack: {build: {image: registry.example.com:5000/team/web, context: web}}
"""
STAND_IN = """\
#!{python}
# A stand-in for docker's CLI: records its argv (this machine has no container engine).
import json, os, sys
with open(os.environ["BUILD_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def devstack(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        devstack_cmd(*args), capture_output=True, text=True, timeout=400, env={**os.environ, **env}
    )
    assert "Traceback" not in run.stderr, run.stderr
    return run


def _project(root: Path) -> Path:
    (root / "chart" / "templates").mkdir(parents=True)
    (root / "chart" / "Chart.yaml").write_text(CHART_YAML)
    (root / "chart" / "values.yaml").write_text(VALUES)
    (root / "chart" / "templates" / "deployment.yaml").write_text(DEPLOYMENT)
    (root / "web").mkdir()
    (root / "web" / "Dockerfile").write_text("FROM scratch\nCOPY app.txt /\n")
    (root / "web" / "app.txt").write_text("web\n")
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "helmfile.yaml").write_text(HELMFILE)
    return root / "helmfile.yaml"


def _image(admin: Kube, namespace: str, name: str) -> str:
    d: dict[str, Any] = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    return str(d["spec"]["template"]["spec"]["containers"][0]["image"])


def test_up_deploys_the_image_build_recorded(
    testbed: Testbed, admin: Kube, namespace: str, tmp_path: Path
) -> None:
    helmfile = _project(tmp_path / "p")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(STAND_IN.format(python=sys.executable))
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "BUILD_LOG": str(log),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    alice = ["-f", str(helmfile), "--owner", "alice"]
    kube = ["--kubeconfig", str(testbed.admin_kubeconfig), "-n", namespace]

    run = devstack("build", "web", "api", "-o", "json", *alice, env=env)
    assert run.returncode == 0, run.stderr
    built = {b["service"]: b for b in json.loads(run.stdout)["builds"]}
    web_ref, api_ref = built["web"]["ref"], built["api"]["ref"]
    assert web_ref.startswith("registry.example.com:5000/team/web:dev-alice-")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # in the Helmfile's order, each built then pushed
    assert [c[:1] + c[-1:] for c in calls] == [
        ["build", str(helmfile.parent.resolve())],
        ["push", api_ref],
        ["build", str((helmfile.parent / "web").resolve())],
        ["push", web_ref],
    ]

    # the plan: the copy gets the recorded image, the baseline nothing of it
    run = devstack("up", "web", "--dry-run", "-o", "json", *alice, *kube, env=env)
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    by = {r["release"]: r for level in plan["levels"] for r in level}
    assert set(by) == {"api", "web--alice"}
    repository, tag = web_ref.rsplit(":", 1)
    assert by["web--alice"]["injectedValues"]["image"] == {"repository": repository, "tag": tag}
    assert "image" not in by["api"]["injectedValues"]

    # and Helm deploys exactly that
    run = devstack("up", "web", "--wait-timeout", "240", *alice, *kube, env=env)
    assert run.returncode == 0, run.stderr
    assert _image(admin, namespace, "web--alice") == web_ref
    assert _image(admin, namespace, "api") == "registry.invalid/app:1.0"
