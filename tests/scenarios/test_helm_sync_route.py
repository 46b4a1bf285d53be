"""alice connects to her dev pod's sidecar through the cluster's Traefik, on the
route the example chart renders: the chart's sync Service and IngressRoute are
applied to the Kubernetes emulator, an EndpointSlice (what the cluster's
EndpointSlice controller would make for the pod) points at a real
`devstack sidecar` started with the chart's own arguments and token, and real
Traefik reads it all through its kubernetesCRD provider. `devstack connect
--authority <the chart's sync host>` then syncs through Traefik's entry point, as
the chart's NOTES tell her to."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helm.charts import documents, one, prepare_example, render
from tests.support.kube import EmulatorThread, kube, wait_until  # noqa: F401
from tests.support.sync import Sidecar, devstack_cmd, tree_state
from tests.support.traefik import CrdTraefik

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RELEASE = "hello-alice"
NAMESPACE = "dev"


def test_connect_through_the_charts_route(
    kube: EmulatorThread,  # noqa: F811
    tmp_path: Path,
) -> None:
    chart = prepare_example(tmp_path / "charts")
    values = {"devstack": {"enabled": True, "owner": "alice"}}
    docs = documents(render(chart, values, name=RELEASE, namespace=NAMESPACE))
    route = one(docs, "IngressRoute")
    (rule,) = route["spec"]["routes"]
    (upstream,) = rule["services"]
    service = one(docs, "Service", upstream["name"])
    token = base64.b64decode(one(docs, "Secret", "hello-alice-devstack-token")["data"]["token"])
    pod = one(docs, "Deployment")["spec"]["template"]
    sidecar_spec = next(c for c in pod["spec"]["containers"] if c["name"] == "devstack-sidecar")
    host = rule["match"].removeprefix("Host(`").removesuffix("`)")
    assert host == "hello-alice-sync.localtest.me"

    # The sidecar, as the chart runs it (its own arguments), on a free local port.
    workspace, token_file = tmp_path / "workspace", tmp_path / "token"
    workspace.mkdir()
    token_file.write_bytes(token)
    assert sidecar_spec["args"][0] == "sidecar"
    sidecar = Sidecar(workspace, token_file, *sidecar_spec["args"][1:]).start()
    traefik = None
    try:
        em = kube.emulator
        em.create(em.resource("v1", "services"), service)
        em.create(em.resource(route["apiVersion"], "ingressroutes"), route)
        # What the EndpointSlice controller makes for the pod: the Service's port
        # name, the pod's port (the container port the targetPort names).
        (port,) = service["spec"]["ports"]
        container_ports = {p["name"]: p["containerPort"] for p in sidecar_spec["ports"]}
        assert container_ports[port["targetPort"]] == port["port"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        endpoints: dict[str, Any] = {
            "metadata": {
                "name": f"{service['metadata']['name']}-pod",
                "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": service["metadata"]["name"]},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            # here the pod is a process on 127.0.0.1, at the port it could bind
            "ports": [{"name": port["name"], "port": sidecar.port, "protocol": "TCP"}],
        }
        em.create(em.resource("discovery.k8s.io/v1", "endpointslices"), endpoints)

        traefik = CrdTraefik(tmp_path, kube.url).start()
        wait_until(
            lambda: any(r.get("rule") == rule["match"] for r in traefik.routers().values()),  # type: ignore[union-attr]
            timeout=30,
        )

        src = tmp_path / "src"
        src.mkdir()
        (src / "app.py").write_text("print('hello from alice')\n")
        (src / "static").mkdir()
        (src / "static" / "site.css").write_text("body { color: teal }\n")
        connect = devstack_cmd(
            "connect", str(src), "--to", f"127.0.0.1:{traefik.port}", "--authority", host,
            "--token-file", str(token_file), "--once",
        )  # fmt: skip
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        run = subprocess.run(connect, capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 0, run.stderr + traefik.log()
        assert tree_state(workspace) == tree_state(src)
    finally:
        if traefik is not None:
            traefik.stop()
        sidecar.stop()
