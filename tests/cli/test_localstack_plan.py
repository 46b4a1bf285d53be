"""The pure half of the local stack: which releases run and how
(`devstack.local` of each release), and the routes Traefik gets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from devstack.cli import localstack
from devstack.core.errors import ConfigError
from devstack.core.helmfile import load

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "chart").mkdir(exist_ok=True)
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "helmfile.yaml").write_text(text)
    return tmp_path


def test_the_shop_runs_in_needs_order_with_a_copy_of_what_is_named() -> None:
    plan = localstack.plan(load(SHOP), SHOP, "alice", ["stock"])
    assert [s.name for s in plan.services] == ["stock", "api", "web"]
    assert [s.copy for s in plan.services] == [True, False, False]
    stock = plan.service("stock")
    assert stock.source == SHOP / "stock"
    assert stock.argv == ("python", "app.py")
    assert stock.ready_path == "/healthz"
    assert stock.aws == {"sqs": [{"name": "reservations"}]}
    assert stock.reload_on == ("*.py",)
    # devstack.local.env only: not the chart's env (examples/shop/cluster.yaml, for a cluster)
    assert plan.service("api").env == {"STOCK_HOST": "stock.${DEVSTACK_DOMAIN}"}
    assert plan.service("web").env == {"API_HOST": "api.${DEVSTACK_DOMAIN}"}
    assert stock.env == {}
    every = localstack.plan(load(SHOP), SHOP, "alice", [])
    assert [s.copy for s in every.services] == [True, True, True]


def test_a_string_command_is_split_and_expanded(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        """releases:
  - name: one
    chart: ./chart
    values:
      - devstack:
          local:
            dir: src
            command: "python -m http.server $PORT --bind '127.0.0.1'"
            env: {GREETING: "hi ${DEVSTACK_SERVICE}", N: 3, FLAG: true}
""",
    )
    plan = localstack.plan(load(root), root, "alice", [])
    one = plan.service("one")
    assert one.argv == ("python", "-m", "http.server", "$PORT", "--bind", "127.0.0.1")
    assert one.env == {"GREETING": "hi ${DEVSTACK_SERVICE}", "N": "3", "FLAG": "true"}
    assert (one.ready_path, one.ready_timeout, one.aws) == ("/", 60.0, None)
    env = {"PORT": "4321", "DEVSTACK_SERVICE": "one"}
    assert localstack.command_argv(one.argv, env) == [
        sys.executable,
        "-m",
        "http.server",
        "4321",
        "--bind",
        "127.0.0.1",
    ]
    assert localstack.expand(one.env["GREETING"], env) == "hi one"
    assert localstack.expand("${UNKNOWN} $PORT", env) == "${UNKNOWN} 4321"


def test_every_problem_is_named(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        """releases:
  - name: nocommand
    chart: ./chart
  - name: nofolder
    chart: ./chart
    values:
      - devstack: {local: {dir: missing, command: [x]}}
  - name: a-very-long-service-name
    chart: ./chart
    values:
      - devstack: {local: {command: [x]}}
""",
    )
    with pytest.raises(ConfigError) as e:
        localstack.plan(
            load(root), root, "alice-the-engineer", ["ghost", "a-very-long-service-name"]
        )
    text = str(e.value)
    assert "no installed release named ghost" in text
    assert "release nocommand: no devstack.local.command" in text
    assert "release nofolder: devstack.local.dir 'missing': no such folder" in text
    assert "release a-very-long-service-name:" in text and "copy name" in text


def test_a_bad_local_block_fails_with_the_charts_schema(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        """releases:
  - name: one
    chart: ./chart
    values:
      - devstack: {local: {command: [x], readyPath: healthz, port: 80}}
""",
    )
    with pytest.raises(ConfigError) as e:
        load(root)
    text = str(e.value)
    assert "devstack.local.readyPath" in text
    assert "devstack.local.port" in text or "'port'" in text


def test_routes_are_the_agents_own() -> None:
    config, objects = localstack.routes(
        "alice",
        {"web": ("http://127.0.0.1:1", "http://127.0.0.1:2"), "api": ("http://127.0.0.1:3", None)},
    )
    # web: baseline + copy IngressRoutes and the copy's Middleware; api: its baseline's.
    assert objects == 4
    routers = config["http"]["routers"]
    services = config["http"]["services"]

    def upstream(router: dict[str, str]) -> str:
        return str(services[router["service"]]["loadBalancer"]["servers"][0]["url"])

    by_rule = {
        r["rule"]: (r["priority"], upstream(r), r.get("middlewares")) for r in routers.values()
    }
    assert by_rule["Host(`web.localtest.me`)"][:2] == (1000, "http://127.0.0.1:1")
    assert by_rule["Host(`web--alice.preview.localtest.me`)"][1] == "http://127.0.0.1:2"
    assert by_rule["Host(`web--alice.preview.localtest.me`)"][2]
    tagged = [v for k, v in by_rule.items() if "web.localtest.me" in k and "alice" in k]
    assert sorted(p for p, _, _ in tagged) == [2000, 3000]
    assert {u for _, u, _ in tagged} == {"http://127.0.0.1:2"}
    assert not any("api" in k and "alice" in k for k in by_rule)
    assert config["http"]["middlewares"]


def test_the_readiness_path_defaults_to_the_charts_own(tmp_path: Path) -> None:
    """One value for both places: without ``local.readyPath`` the local stack
    probes ``devstack.readiness.path``, the path the chart's readinessProbe and
    the sidecar use; ``local.readyPath`` still wins, and ``/`` is the last
    resort."""
    root = write(
        tmp_path,
        """releases:
  - name: chart-probe
    chart: ./chart
    values:
      - devstack:
          readiness: {path: /ready, port: 8000}
          local: {command: [python, app.py]}
  - name: local-probe
    chart: ./chart
    values:
      - devstack:
          readiness: {path: /ready, port: 8000}
          local: {command: [python, app.py], readyPath: /local}
  - name: none
    chart: ./chart
    values:
      - devstack:
          local: {command: [python, app.py]}
""",
    )
    plan = localstack.plan(load(root), root, "alice", [])
    assert [plan.service(n).ready_path for n in ("chart-probe", "local-probe", "none")] == [
        "/ready",
        "/local",
        "/",
    ]
