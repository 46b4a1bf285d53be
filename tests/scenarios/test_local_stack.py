"""The local stack's stories: `devstack up --local` runs the shop's Helmfile
as processes on 127.0.0.1 (real Traefik, a real moto server), and what
`down`, `status`, `logs` and `curl` read of it from the one state file.

Each test works on its own copy of examples/shop and its own owner, and
provisions into the session's moto server, so what `down` deletes (and
keeps) can be looked at afterwards.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from devstack.cli import localstack
from devstack.cli.project import Project, load_project
from tests.scenarios.test_up import devstack, processes_under, shop_copy
from tests.support.aws import moto_endpoint  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def up(shop: Path, owner: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        devstack("up", "--local", "-f", str(shop), "--owner", owner, "--port", "0", *args),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done


def project(shop: Path, owner: str) -> Project:
    return load_project(argparse.Namespace(file=str(shop), owner=owner))


def get(state: localstack.LocalState, host: str, **headers: str) -> dict[str, Any]:
    req = urllib.request.Request(state.router_url + "/", headers={"Host": host, **headers})
    with urllib.request.urlopen(req, timeout=30) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def chain(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(service, owner) of each hop: web, the api it called, the stock api called."""
    hops = []
    node: Any = doc
    while isinstance(node, dict) and "service" in node:
        hops.append((node["service"], node["owner"]))
        node = node.get("api") or node.get("stock")
    return hops


def queues(endpoint: str) -> set[str]:
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    return {url.rsplit("/", 1)[-1] for url in sqs.list_queues().get("QueueUrls", [])}


def test_one_copy_two_hops_deep_then_down_leaves_nothing(
    tmp_path: Path,
    moto_endpoint: str,  # noqa: F811
) -> None:
    shop = shop_copy(tmp_path)
    owner = "bob"
    done = up(shop, owner, "stock", "--aws", moto_endpoint, "--detach")
    proj = project(shop, owner)
    state = localstack.read_state(proj)
    assert state is not None, done.stdout

    # Baselines start in needs order (stock, api, web); only stock gets bob's copy.
    started = [(p.role, p.service) for p in state.processes if p.role in ("baseline", "sidecar")]
    assert started == [
        ("baseline", "stock"),
        ("sidecar", "stock"),
        ("baseline", "api"),
        ("baseline", "web"),
    ]
    ready = [line for line in done.stdout.splitlines() if "ready:" in line]
    assert [re.findall(r"(\w+) \(baseline", line) for line in ready] == [
        ["stock"],
        ["api"],
        ["web"],
    ], done.stdout
    assert [s.copy is not None for s in state.services] == [True, False, False]

    # Untagged: every baseline. Tagged: the baselines of web and api pass the
    # key on, and bob's copy of stock answers two hops deep, on its own queue.
    untagged = get(state, "web.localtest.me")
    assert chain(untagged) == [("web", "baseline"), ("api", "baseline"), ("stock", "baseline")]
    assert untagged["api"]["stock"]["queue"] == "reservations"
    tagged = get(state, "web.localtest.me", baggage=f"devstack-route={owner}")
    assert chain(tagged) == [("web", "baseline"), ("api", "baseline"), ("stock", owner)]
    assert tagged["api"]["stock"]["queue"] == f"{owner}-reservations"

    # The preview URL of bob's copy reaches it (and tags what it calls).
    stock = state.service("stock")
    assert stock.copy is not None
    assert stock.copy.preview_url.startswith(f"http://stock--{owner}.preview.localtest.me:")
    preview = get(state, f"stock--{owner}.preview.localtest.me")
    assert (preview["service"], preview["owner"], preview["routing_key"]) == (
        "stock",
        owner,
        owner,
    )

    # curl tags with the owner's key; logs show the supervised app's own output.
    status, body = localstack.curl(state, "web")
    assert status == 200
    assert chain(json.loads(body))[-1] == ("stock", owner)
    app_log = localstack.log_file(state, "stock")
    wait_for(lambda: f"[stock {owner}]" in app_log.read_text(), 30, "the app's request log")
    # The sidecar's own log (it logged starting the app) is a file of its own.
    assert "process.started" in Path(stock.copy.sidecar_log).read_text()
    assert "process.started" not in app_log.read_text()

    # The same through the commands: `curl` (tagged, and not), and `logs -f` streaming.
    cli = subprocess.run(
        devstack("curl", "web", "-f", str(shop), "--owner", owner),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert chain(json.loads(cli.stdout))[-1] == ("stock", owner)
    cli = subprocess.run(
        devstack("curl", "web", "--untagged", "-f", str(shop), "--owner", owner),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert chain(json.loads(cli.stdout))[-1] == ("stock", "baseline")
    follow = subprocess.Popen(
        devstack("logs", "stock", "-f", "--tail", "0", "--file", str(shop), "--owner", owner),
        stdout=subprocess.PIPE,
        text=True,
    )
    streamed: list[str] = []
    reader = threading.Thread(target=lambda: streamed.extend(iter(follow.stdout.readline, "")))
    reader.start()
    try:

        def request_streams() -> bool:
            get(state, "stock.localtest.me", **{"x-devstack-route": owner})
            return any(f"[stock {owner}]" in line and "GET /" in line for line in streamed)

        wait_for(request_streams, 60, "a request's log line from `devstack logs -f`")
    finally:
        follow.terminate()
        follow.wait(30)
        reader.join(30)

    rows = localstack.status_rows(proj)
    assert [(r.service, r.owner, r.ready) for r in rows] == [
        ("stock", "", True),
        ("stock", owner, True),
        ("api", "", True),
        ("web", "", True),
    ]
    assert rows[1].preview_url == stock.copy.preview_url
    assert rows[1].sync == "idle"

    assert {f"{owner}-reservations", "reservations"} <= queues(moto_endpoint)
    localstack.down(proj)
    assert localstack.read_state(proj) is None
    assert not (shop / ".devstack").exists()
    assert processes_under(tmp_path) == []
    with pytest.raises(OSError):
        urllib.request.urlopen(state.router_url + "/", timeout=5)
    left = queues(moto_endpoint)
    assert f"{owner}-reservations" not in left, "down left the owner's queue"
    assert "reservations" in left, "down deleted the baseline's queue"
    assert localstack.status_rows(proj) == []


def test_an_edit_synced_to_the_sidecar_in_the_state_reloads_the_copy(
    tmp_path: Path,
    moto_endpoint: str,  # noqa: F811
) -> None:
    shop = shop_copy(tmp_path)
    owner = "carol"
    up(shop, owner, "--aws", moto_endpoint, "--detach")
    proj = project(shop, owner)
    state = localstack.read_state(proj)
    assert state is not None
    try:
        tagged = get(state, "web.localtest.me", **{"x-devstack-route": owner})
        assert chain(tagged) == [("web", owner), ("api", owner), ("stock", owner)]
        stock = state.service("stock")
        assert stock.copy is not None
        assert Path(stock.copy.source) == shop / "stock"
        app = shop / "stock" / "app.py"
        app.write_text(re.sub(r"^MESSAGE = .*$", 'MESSAGE = "edited"', app.read_text(), flags=re.M))
        synced = subprocess.run(
            devstack(
                "connect",
                str(shop / "stock"),
                "--to",
                stock.copy.sidecar,
                "--token-file",
                stock.copy.token_file,
                "--once",
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert synced.returncode == 0, synced.stdout + synced.stderr

        def deep_message(**headers: str) -> str:
            try:
                doc = get(state, "web.localtest.me", **headers)
            except OSError:
                return ""
            return str(doc["api"]["stock"]["message"])

        wait_for(lambda: deep_message(**{"x-devstack-route": owner}) == "edited", 90, "the reload")
        assert deep_message() == "stock from the shop example", "the baseline changed"
        row = next(r for r in localstack.status_rows(proj) if r.service == "stock" and r.owner)
        assert row.last_reload.startswith("reload-finished"), row
    finally:
        localstack.down(proj)
    assert processes_under(tmp_path) == []


def test_a_second_up_is_refused_while_one_runs(
    tmp_path: Path,
    moto_endpoint: str,  # noqa: F811
) -> None:
    shop = shop_copy(tmp_path)
    up(shop, "dave", "web", "--aws", moto_endpoint, "--detach")
    proj = project(shop, "dave")
    try:
        again = subprocess.run(
            devstack("up", "--local", "-f", str(shop), "--owner", "dave", "--port", "0"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 2
        assert "a local stack already runs here" in again.stderr
        assert "devstack down" in again.stderr
        state = localstack.read_state(proj)
        assert state is not None and all(p.alive() for p in state.processes)
    finally:
        localstack.down(proj)
    assert processes_under(tmp_path) == []


def test_a_release_that_cannot_run_locally_is_named(tmp_path: Path) -> None:
    shop = shop_copy(tmp_path)
    helmfile = shop / "helmfile.yaml"
    text = helmfile.read_text()
    helmfile.write_text(text.replace("            command: [python, app.py]\n", "", 1))
    done = subprocess.run(
        devstack("up", "--local", "-f", str(shop), "--owner", "erin", "nope"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no installed release named nope" in done.stderr
    assert "release stock: no devstack.local.command" in done.stderr
    assert not (shop / ".devstack").exists()
