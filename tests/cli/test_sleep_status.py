"""``devstack status`` shows a copy the agent put to sleep (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devstack.agent.sleep import SleepRecord
from devstack.cli.cluster_up import dump
from devstack.cli.project import StatusRow
from devstack.cli.workflow_status import asleep_since, format_rows
from devstack.core.timestamps import parse_time

SINCE = "2026-12-02T05:10:00Z"


def deployment(name: str, replicas: int | None) -> dict[str, Any]:
    spec = {} if replicas is None else {"replicas": replicas}
    return {"metadata": {"name": name, "namespace": "dev"}, "spec": spec}


def record() -> SleepRecord:
    since = parse_time(SINCE)
    assert since is not None
    return SleepRecord(
        owner="alice",
        team="",
        service="web",
        since=since,
        reason="idle",
        replicas=1,
        cpu_cores=0.1,
        memory_bytes=1.0,
    )


@pytest.mark.parametrize(
    ("deployments", "records", "expected"),
    [
        # awake: some replicas (an absent field means the default, 1)
        ([deployment("web-alice", 1)], {}, None),
        ([deployment("web-alice", None)], {}, None),
        ([deployment("web-alice", 0), deployment("worker-alice", 2)], {}, None),
        # no Deployment at all: nothing to say
        ([], {}, None),
        # at zero, with the agent's record: since when
        ([deployment("web-alice", 0)], {("dev", "web-alice"): record()}, SINCE),
        # at zero, no record to read (not allowed) or none there
        ([deployment("web-alice", 0)], None, "unknown"),
        ([deployment("web-alice", 0)], {("other", "web-alice"): record()}, "unknown"),
    ],
)
def test_asleep_since(
    deployments: list[dict[str, Any]],
    records: dict[tuple[str, str], SleepRecord] | None,
    expected: str | None,
) -> None:
    assert asleep_since(deployments, records) == expected


def rows() -> list[StatusRow]:
    return [
        StatusRow(
            service="web",
            owner="alice",
            ready=False,
            sync="asleep",
            last_reload="",
            preview_url="http://web--alice.preview.localtest.me",
            asleep_since=SINCE,
        ),
        StatusRow(
            service="web",
            owner="",
            ready=True,
            sync="no sidecar",
            last_reload="",
            preview_url="http://web.localtest.me",
        ),
    ]


def test_the_table_says_since_when_a_copy_sleeps() -> None:
    header, alice, baseline = format_rows(rows()).splitlines()
    assert header.split()[:4] == ["SERVICE", "OWNER", "READY", "SYNC"]
    assert f"asleep since {SINCE}" in alice
    assert alice.split()[:2] == ["web", "alice"]
    assert "asleep" not in baseline and baseline.split()[2] == "yes"


def test_json_says_since_when_a_copy_sleeps() -> None:
    out = json.loads(dump({"services": [r.as_json() for r in rows()]}, "json"))
    assert [s["asleep_since"] for s in out["services"]] == [SINCE, None]
    assert out["services"][0]["ready"] is False
