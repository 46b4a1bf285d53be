"""The agent's metrics: prometheus_client objects on a registry of the agent's
own, scraped through the API's ``/metrics`` in Prometheus' text format."""

from __future__ import annotations

import math

import httpx
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Metric
from prometheus_client.parser import text_string_to_metric_families

from devstack.agent.api import make_app
from devstack.agent.metrics import RECONCILE_BUCKETS, Metrics
from tests.support.net import free_port


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_the_exposition_parses_and_holds_the_process_series() -> None:
    m = Metrics()
    m.inc("devstack_agent_writes_total", verb="create", kind="IngressRoute")
    m.inc("devstack_agent_writes_total", verb="create", kind="IngressRoute")
    m.set("devstack_agent_is_leader", 1)
    m.observe("devstack_agent_reconcile_seconds", 0.003)
    found = families(m.render())

    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds"):
        assert name in found, sorted(found)
        (sample,) = found[name].samples
        assert sample.value > 0
    assert "python_info" in found
    assert "python_gc_collections" in found

    writes = found["devstack_agent_writes"]
    assert writes.type == "counter"
    assert [(s.name, s.labels, s.value) for s in writes.samples] == [
        ("devstack_agent_writes_total", {"kind": "IngressRoute", "verb": "create"}, 2.0)
    ]
    assert found["devstack_agent_is_leader"].type == "gauge"
    assert found["devstack_agent_is_leader"].samples[0].value == 1.0

    hist = found["devstack_agent_reconcile_seconds"]
    assert hist.type == "histogram"
    bounds = [float(s.labels["le"]) for s in hist.samples if s.name.endswith("_bucket")]
    assert bounds == [*RECONCILE_BUCKETS, math.inf]
    counts = {s.name: s.value for s in hist.samples if not s.name.endswith("_bucket")}
    assert counts == {
        "devstack_agent_reconcile_seconds_count": 1.0,
        "devstack_agent_reconcile_seconds_sum": 0.003,
    }


def test_no_created_series_and_labelled_series_appear_once_used() -> None:
    m = Metrics()
    text = m.render()
    assert "_created" not in text
    assert "devstack_agent_writes_total{" not in text  # no series before a write
    assert "devstack_agent_problems 0.0" in text  # unlabelled gauges start at 0
    assert m.get("devstack_agent_writes_total", verb="create", kind="Middleware") == 0
    assert "devstack_agent_writes_total{" not in m.render()  # reading creates nothing


def test_get_reads_back_counters_gauges_and_histogram_counts() -> None:
    m = Metrics()
    m.inc("devstack_agent_watch_restarts_total", resource="services", reason="gone")
    m.inc("devstack_agent_watch_restarts_total", 2, resource="services", reason="gone")
    m.inc("devstack_agent_copy_expirations_total")
    m.set("devstack_agent_services", 7)
    m.observe("devstack_agent_reconcile_seconds", 0.2)
    m.observe("devstack_agent_reconcile_seconds", 20)
    assert m.get("devstack_agent_watch_restarts_total", resource="services", reason="gone") == 3
    assert m.get("devstack_agent_watch_restarts_total", resource="services", reason="ended") == 0
    assert m.get("devstack_agent_copy_expirations_total") == 1
    assert m.get("devstack_agent_services") == 7
    assert m.get("devstack_agent_reconcile_seconds") == 2


def test_every_agent_has_its_own_registry_that_other_collectors_join() -> None:
    """Two agents in one process do not share series; a collector registered
    on one agent's registry (as the usage ledger does) is in its scrape only."""
    a, b = Metrics(), Metrics()
    a.inc("devstack_agent_reconciles_total", result="ok")
    extra = Counter("devstack_test_things", "Things.", ["owner"], registry=a.registry)
    extra.labels(owner="alice").inc(5)
    assert b.get("devstack_agent_reconciles_total", result="ok") == 0
    in_a, in_b = families(a.render()), families(b.render())
    assert "devstack_test_things" in in_a and "devstack_test_things" not in in_b
    assert "devstack_test_things_created" not in a.render()


async def test_the_api_serves_the_registry_with_prometheus_content_type() -> None:
    class Status:
        ready = True

        def healthy(self) -> bool:
            return True

        def routes(self) -> dict[str, object]:
            return {}

    m = Metrics()
    m.inc("devstack_agent_reconciles_total", result="retry")
    runner = web.AppRunner(make_app(Status(), m))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        await runner.cleanup()
    assert r.status_code == 200
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    found = families(r.text)
    assert "process_resident_memory_bytes" in found
    (sample,) = found["devstack_agent_reconciles"].samples
    assert (sample.labels, sample.value) == ({"result": "retry"}, 1.0)
