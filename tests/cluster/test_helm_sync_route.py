"""alice connects to her dev pod's sidecar through Traefik, on the route the
example chart renders, with the real API server in between.

The chart's sync Service and IngressRoute, rendered by Helm's engine, are
applied to the testbed's API server as they are. The pod is a real
`devstack sidecar` started with the chart's own arguments and token, as a
local process (the testbed runs no containers and has no pod network):
an EndpointSlice of our own points the chart's Service at it on
127.0.0.1 (an ``FQDN`` slice: the server refuses a loopback ``IPv4`` one,
see tests/cluster/test_routing_traefik.py). Real Traefik reads it all
through its ``kubernetesCRD`` provider, as the ServiceAccount and ClusterRole
Traefik's documentation gives. `devstack connect --authority <the chart's
sync host>` then syncs through Traefik's entry point, as the chart's NOTES
tell her to."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_routing_traefik import (  # the module's Traefik access (fixture)
    SLICE_MANAGER,
    TraefikAccess,
    traefik_access,  # noqa: F401
)
from tests.helm.charts import documents, one, prepare_example, render
from tests.support.sync import Sidecar, devstack_cmd, tree_state
from tests.support.testbed import Kube, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RELEASE = "hello-alice"


def test_connect_through_the_charts_route(
    traefik_access: TraefikAccess,  # noqa: F811
    admin: Kube,
    namespace: str,
    tmp_path: Path,
) -> None:
    chart = prepare_example(tmp_path / "charts")
    values = {"devstack": {"enabled": True, "owner": "alice"}}
    docs = documents(render(chart, values, name=RELEASE, namespace=namespace))
    route = one(docs, "IngressRoute")
    (rule,) = route["spec"]["routes"]
    (upstream,) = rule["services"]
    service = one(docs, "Service", upstream["name"])
    token = base64.b64decode(one(docs, "Secret", "hello-alice-devstack-token")["data"]["token"])
    pod = one(docs, "Deployment")["spec"]["template"]
    sidecar_spec = next(c for c in pod["spec"]["containers"] if c["name"] == "devstack-sidecar")
    host = rule["match"].removeprefix("Host(`").removesuffix("`)")
    assert host == "hello-alice-sync.localtest.me"
    # the chart's Service selects the pod and names the sidecar's container port
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in sidecar_spec["ports"]}
    assert container_ports[port["targetPort"]] == port["port"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()

    # The sidecar, as the chart runs it (its own arguments), on a free local port.
    workspace, token_file = tmp_path / "workspace", tmp_path / "token"
    workspace.mkdir()
    token_file.write_bytes(token)
    assert sidecar_spec["args"][0] == "sidecar"
    sidecar = Sidecar(workspace, token_file, *sidecar_spec["args"][1:]).start()
    traefik = None
    try:
        # the chart's objects, admitted by the real server as rendered
        admin.create(service)
        stored = admin.create(route)
        assert stored["spec"] == route["spec"]
        # What the EndpointSlice controller would make for the pod: the
        # Service's port name, the pod's port; here the pod is a process on
        # 127.0.0.1, at the port it could bind.
        slice_: dict[str, Any] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service['metadata']['name']}-pod",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": service["metadata"]["name"],
                    "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                },
            },
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": port["name"], "port": sidecar.port, "protocol": "TCP"}],
        }
        admin.create(slice_)

        traefik = traefik_access.start(tmp_path / "traefik")
        wait_for(
            lambda: any(r.get("rule") == rule["match"] for r in traefik.routers().values()),
            timeout=90,
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
