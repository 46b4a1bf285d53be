"""The pure part of `devstack logs` in a cluster (devstack.cli.podlogs):
durations, selectors, which container, whether it started, how lines are
asked for, split and labelled. The command itself runs against the testbed
in tests/cluster/test_logs.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from devstack.agent.kube import KubeApi
from devstack.cli.podlogs import (
    ContainerState,
    Lines,
    LogOptions,
    LogsError,
    PodLogs,
    Target,
    choose_containers,
    container_state,
    default_container,
    label_selector,
    line_prefix,
    log_query,
    parse_duration,
    since_time,
    split_timestamp,
)
from devstack.core.errors import ConfigError

Obj = dict[str, Any]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("1m5s", 65), ("90s", 90)],
)
def test_durations_as_kubectl_takes_them(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "m", "1d", "5ms", "-5s", "0s", "1h 5m"])
def test_a_bad_duration_is_one_line_with_examples(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--since .*(30s, 5m|at least 1s)"):
        parse_duration(text)


def test_a_workloads_selector_as_a_label_selector() -> None:
    selector = {
        "matchLabels": {"app.kubernetes.io/name": "hello", "app.kubernetes.io/instance": "h"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["web", "api"]},
            {"key": "canary", "operator": "NotIn", "values": ["yes"]},
            {"key": "owned", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    }
    assert label_selector(selector) == (
        "app.kubernetes.io/instance=h,app.kubernetes.io/name=hello,"
        "tier in (api,web),canary notin (yes),owned,!legacy"
    )
    with pytest.raises(LogsError, match="Deployment x has an empty selector"):
        label_selector({}, what="Deployment x")
    with pytest.raises(LogsError, match="operator 'Near'"):
        label_selector({"matchExpressions": [{"key": "k", "operator": "Near"}]})


def pod(*containers: str, annotation: str | None = None, **status: Any) -> Obj:
    meta: Obj = {"name": "p", "uid": "u"}
    if annotation:
        meta["annotations"] = {"kubectl.kubernetes.io/default-container": annotation}
    return {
        "metadata": meta,
        "spec": {"nodeName": "n", "containers": [{"name": c} for c in containers]},
        "status": status,
    }


def test_the_default_container_is_the_apps_not_the_sidecar() -> None:
    assert default_container(pod("devstack-sidecar", "web")) == "web"
    assert default_container(pod("app", "devstack-sidecar")) == "app"
    assert default_container(pod("devstack-sidecar")) == "devstack-sidecar"
    # kubectl's annotation wins, when it names one of the pod's containers
    assert default_container(pod("app", "worker", annotation="worker")) == "worker"
    assert default_container(pod("app", "worker", annotation="gone")) == "app"


def test_which_containers_are_read() -> None:
    p = pod("app", "devstack-sidecar")
    assert choose_containers(p, LogOptions()) == ["app"]
    assert choose_containers(p, LogOptions(container="devstack-sidecar")) == ["devstack-sidecar"]
    assert choose_containers(p, LogOptions(container="other")) == []
    assert choose_containers(p, LogOptions(all_containers=True)) == ["app", "devstack-sidecar"]


def statuses(**state: Any) -> list[Obj]:
    return [{"name": "app", "restartCount": state.pop("restarts", 0), **state}]


@pytest.mark.parametrize(
    ("p", "want"),
    [
        (
            pod("app", containerStatuses=statuses(state={"running": {}}, restarts=2)),
            ContainerState(True, True, 2),
        ),
        (
            pod("app", containerStatuses=statuses(state={"terminated": {"exitCode": 0}})),
            ContainerState(True, False, 0),
        ),
        # waiting to run again: its last run has output
        (
            pod(
                "app",
                containerStatuses=statuses(
                    state={"waiting": {"reason": "CrashLoopBackOff"}},
                    lastState={"terminated": {"exitCode": 1}},
                    restarts=3,
                ),
            ),
            ContainerState(True, False, 3, "CrashLoopBackOff"),
        ),
        (
            pod(
                "app", containerStatuses=statuses(state={"waiting": {"reason": "ImagePullBackOff"}})
            ),
            ContainerState(False, False, 0, "ImagePullBackOff"),
        ),
        (pod("app", phase="Pending"), ContainerState(False, False, 0, "Pending")),
    ],
)
def test_whether_a_container_has_output(p: Obj, want: ContainerState) -> None:
    assert container_state(p, "app") == want


def test_a_pod_not_scheduled_says_why() -> None:
    p = pod("app")
    p["spec"].pop("nodeName")
    p["status"] = {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available",
            }
        ]
    }
    assert container_state(p, "app") == ContainerState(
        False, False, 0, "not scheduled: 0/1 nodes are available"
    )
    p["status"] = {}
    assert container_state(p, "app").reason == "not scheduled"


def test_prefixes_as_kubectl_prints_them() -> None:
    assert line_prefix("p-1", "app", pods=True, containers=False) == b"[pod/p-1/app] "
    assert line_prefix("p-1", "app", pods=True, containers=True) == b"[pod/p-1/app] "
    assert line_prefix("p-1", "app", pods=False, containers=True) == b"[app] "
    assert line_prefix("p-1", "app", pods=False, containers=False) == b""


def test_timestamps_are_split_off_to_the_nanosecond() -> None:
    ns, stamp, rest = split_timestamp(b"2024-03-01T10:00:00.5Z hello world\n")
    assert (stamp, rest) == (b"2024-03-01T10:00:00.5Z ", b"hello world\n")
    assert ns == 1709287200_500000000
    later, _, _ = split_timestamp(b"2024-03-01T10:00:00.500000001Z x\n")
    assert later == ns + 1  # (as text, ".5Z" sorts after ".500000001Z")
    offset, _, _ = split_timestamp(b"2024-03-01T11:00:00+01:00 x\n")
    assert offset == 1709287200_000000000
    assert split_timestamp(b"no stamp here\n") == (None, b"", b"no stamp here\n")
    assert since_time(ns) == "2024-03-01T10:00:00Z"


def test_chunks_become_whole_lines() -> None:
    lines = Lines()
    assert lines.feed(b"one\ntw") == [b"one\n"]
    assert lines.feed(b"o\n\nthr") == [b"two\n", b"\n"]
    assert lines.feed(b"ee") == []
    assert lines.rest() == [b"three\n"]
    assert lines.rest() == []


def test_the_query_of_a_first_read_and_of_a_read_again() -> None:
    options = LogOptions(follow=True, tail=5, since_seconds=600)
    assert log_query("app", options, first=True, after=None) == {
        "container": "app",
        "timestamps": True,
        "follow": True,
        "tailLines": 5,
        "sinceSeconds": 600,
    }
    # again (a restart, a dropped stream, a new pod): from the last line shown on
    assert log_query("app", options, first=False, after=1709287200_500000000) == {
        "container": "app",
        "timestamps": True,
        "follow": True,
        "sinceTime": "2024-03-01T10:00:00Z",
    }
    assert log_query("app", LogOptions(tail=0), first=True, after=None) == {
        "container": "app",
        "timestamps": True,
        "tailLines": 0,
    }


# --- a container that restarts while followed --------------------------------------------


class RestartingCluster:
    """A fake of the three calls :class:`PodLogs` makes (``list``, ``watch``
    and ``stream`` of devstack.agent.kube.KubeApi), for the one thing the
    testbed cannot show: a container that restarts. kwok runs no containers,
    and its log stream never ends because a container stopped (a kubelet's
    does), so tests/cluster/test_logs.py cannot reach this path.

    The first stream delivers two lines and ends (the container exited);
    then the watch reports the pod running again with ``restartCount`` 1;
    the second stream, asked ``sinceTime``, repeats the line of that second
    (as a server does: ``sinceTime`` is whole seconds) and brings a new one."""

    def __init__(self) -> None:
        self.queries: list[dict[str, Any]] = []
        self.exited = asyncio.Event()

    @staticmethod
    def pod(restarts: int) -> Obj:
        p = pod("app", "devstack-sidecar")
        p["metadata"]["resourceVersion"] = str(10 + restarts)
        p["status"] = {
            "containerStatuses": [
                {"name": "app", "restartCount": restarts, "state": {"running": {}}}
            ]
        }
        return p

    async def list(self, resource: Any, **_: Any) -> tuple[list[Obj], str]:
        return [self.pod(0)], "10"

    async def watch(self, resource: Any, **_: Any) -> AsyncIterator[dict[str, Any]]:
        await self.exited.wait()
        yield {"type": "MODIFIED", "object": self.pod(1)}
        await asyncio.Event().wait()  # a watch that stays open

    async def stream(self, path: str, *, query: dict[str, Any]) -> AsyncIterator[bytes]:
        assert path == "/api/v1/namespaces/ns/pods/p/log"
        self.queries.append(dict(query))
        if len(self.queries) == 1:
            yield b"2024-03-01T10:00:00.1Z one\n2024-03-01T10:00:01.2Z tw"
            yield b"o\n"
            self.exited.set()
            return
        yield b"2024-03-01T10:00:01.2Z two\n2024-03-01T10:00:01.7Z three\n"
        await asyncio.Event().wait()  # following


class Collected:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        pass


async def test_a_restarted_container_is_followed_again_after_its_last_line() -> None:
    api = RestartingCluster()
    out, notices = Collected(), list[str]()
    target = Target("hello", "hello--alice", "ns", ("app=hello",))
    logs = PodLogs(cast(KubeApi, api), target, LogOptions(follow=True, tail=5), out, notices.append)
    task = asyncio.create_task(logs.follow())
    async with asyncio.timeout(20):
        while out.data.count(b"\n") < 3:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out.data == b"one\ntwo\nthree\n"
    assert notices == ["container app of pod p restarted (restart 1): following it"]
    first, again = api.queries
    assert first == {"container": "app", "timestamps": True, "follow": True, "tailLines": 5}
    assert again == {
        "container": "app",
        "timestamps": True,
        "follow": True,
        "sinceTime": "2024-03-01T10:00:01Z",
    }
