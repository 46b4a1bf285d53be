"""The usage ledger's pure core, with fake time: spans from objects,
integration by each object's own lifetime, day records split at UTC
midnight, watermarks across restarts and leader changes, and the report.

The expected numbers are computed a different way from the code's: second
by second over the scripted timeline (every instant in it is a whole
second), summing what is alive at each second."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from devstack.agent.usage.actual import PodUsage, pod_usage, used_spans
from devstack.agent.usage.ledger import (
    ActualUsage,
    DayRecord,
    Prices,
    advance,
    build_report,
    day_of,
    integrate,
    parse_by,
    parse_since,
    row_deltas,
    watermark,
)
from devstack.agent.usage.model import (
    GIB,
    Amounts,
    PodSpan,
    SpanTracker,
    load_balancer_span,
    parse_quantity,
    pod_requests,
    pod_span,
    volume_span,
)
from devstack.agent.usage.spans import SleepSpan
from devstack.core.routing import OWNER_LABEL, TEAM_LABEL
from devstack.core.timestamps import format_time

Obj = dict[str, Any]
#: 23:50 UTC: the timeline crosses midnight after 600 s.
BASE = datetime.datetime(2026, 12, 1, 23, 50, tzinfo=datetime.UTC).timestamp()
TEAMS = {"alice": "payments"}


def team_of(owner: str) -> str:
    return TEAMS.get(owner, "")


def ts(offset: float) -> str:
    return format_time(BASE + offset)


def meta(uid: str, owner: str, *, team: str | None = None, created: float = 0) -> Obj:
    labels = {OWNER_LABEL: owner}
    if team:
        labels[TEAM_LABEL] = team
    return {
        "name": uid,
        "namespace": "dev",
        "uid": uid,
        "labels": labels,
        "creationTimestamp": ts(created),
    }


def pod(
    uid: str,
    owner: str,
    *,
    cpu: str,
    memory: str,
    start: float | None,
    team: str | None = None,
    finished: float | None = None,
    deleted: float | None = None,
    grace: int = 30,
) -> Obj:
    m = meta(uid, owner, team=team)
    if deleted is not None:
        m["deletionTimestamp"] = ts(deleted + grace)
        m["deletionGracePeriodSeconds"] = grace
    status: Obj = {"phase": "Pending"}
    if start is not None:
        status = {"phase": "Running", "startTime": ts(start)}
    if finished is not None:
        status = {
            "phase": "Succeeded",
            "startTime": ts(start or 0),
            "containerStatuses": [{"state": {"terminated": {"finishedAt": ts(finished)}}}],
        }
    return {
        "metadata": m,
        "spec": {"containers": [{"resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
        "status": status,
    }


def pvc(uid: str, owner: str, *, size: str, created: float, deleted: float | None = None) -> Obj:
    m = meta(uid, owner, created=created)
    if deleted is not None:
        m["deletionTimestamp"] = ts(deleted)
    return {"metadata": m, "spec": {"resources": {"requests": {"storage": size}}}}


def lb(uid: str, owner: str, *, created: float, team: str | None = None) -> Obj:
    return {
        "metadata": meta(uid, owner, created=created, team=team),
        "spec": {"type": "LoadBalancer"},
    }


# --- objects -> spans -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("250m", 0.25), ("1", 1.0), ("1.5", 1.5), ("128Mi", 128 * 2**20), ("1G", 1e9), ("1e3", 1e3)],
)
def test_quantities_parse_as_kubernetes_writes_them(text: str, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


def test_a_bad_quantity_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("12 apples")


def test_pod_requests_count_init_containers_sidecars_and_overhead_as_the_scheduler_does() -> None:
    spec = {
        "containers": [
            {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
            {"resources": {"requests": {"cpu": "200m"}}},
        ],
        "initContainers": [
            {"resources": {"requests": {"cpu": "1", "memory": "32Mi"}}},
            {"restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
        ],
        "overhead": {"cpu": "10m", "memory": "1Mi"},
    }
    cpu, memory = pod_requests(spec)
    # max(0.3 + 0.05 sidecar, 1 init) + 0.01; max(64Mi, 32Mi) + 1Mi
    assert cpu == pytest.approx(1.01)
    assert memory == 65 * 2**20


def test_a_pod_lives_from_its_start_to_its_completion_or_its_deletion_request() -> None:
    running = pod_span(pod("a", "alice", cpu="1", memory="1Gi", start=10), team_of)
    assert running is not None and running.since == BASE + 10 and running.until is None
    assert running.team == "payments"  # from the mapping
    done = pod_span(pod("b", "bob", cpu="1", memory="1Gi", start=10, finished=70), team_of)
    assert done is not None and done.until == BASE + 70
    deleted = pod_span(pod("c", "bob", cpu="1", memory="1Gi", start=10, deleted=100), team_of)
    assert deleted is not None and deleted.until == BASE + 100  # not + the 30 s grace
    assert pod_span(pod("d", "bob", cpu="1", memory="1Gi", start=None), team_of) is None
    labelled = pod_span(pod("e", "alice", cpu="1", memory="1", start=0, team="search"), team_of)
    assert labelled is not None and labelled.team == "search"  # the label wins


def test_only_load_balancer_services_count() -> None:
    assert load_balancer_span(lb("s", "bob", created=5), team_of) is not None
    cluster_ip = {"metadata": meta("t", "bob"), "spec": {"type": "ClusterIP"}}
    assert load_balancer_span(cluster_ip, team_of) is None


def test_a_tracker_closes_a_pod_that_vanished_without_a_deletion_time_when_it_saw_it_go() -> None:
    tracker = SpanTracker(lambda o: pod_span(o, team_of))
    p = pod("a", "alice", cpu="1", memory="1Gi", start=0)
    tracker.update(None, p, BASE + 1)
    tracker.update(p, None, BASE + 42)  # a forced delete: no deletionTimestamp
    (span,) = tracker.spans()
    assert span.until == BASE + 42
    tracker.prune(BASE + 41)
    assert len(tracker) == 1
    tracker.prune(BASE + 42)
    assert len(tracker) == 0


def test_a_pods_end_is_the_first_deletion_request_not_the_kubelets_final_delete() -> None:
    """A graceful delete at 100 (30 s grace) is followed, once the kubelet
    stopped the pod, by its delete with grace 0: the server then moves
    ``deletionTimestamp`` to that instant (101 here) and the grace to 0. The
    span ends at the request, whichever of the two events comes last."""
    tracker = SpanTracker(lambda o: pod_span(o, team_of))
    running = pod("a", "bob", cpu="1", memory="1Gi", start=0)
    asked = pod("a", "bob", cpu="1", memory="1Gi", start=0, deleted=100)
    final = pod("a", "bob", cpu="1", memory="1Gi", start=0, deleted=101, grace=0)
    tracker.update(None, running, BASE + 1)
    tracker.update(running, asked, BASE + 100)
    tracker.update(asked, final, BASE + 101)
    tracker.update(final, None, BASE + 101)
    (span,) = tracker.spans()
    assert span.until == BASE + 100
    # An informer that saw only the final state can do no better than it says.
    late = SpanTracker(lambda o: pod_span(o, team_of))
    late.update(None, final, BASE + 102)
    late.update(final, None, BASE + 102)
    (span,) = late.spans()
    assert span.until == BASE + 101


# --- integration ------------------------------------------------------------------------


def test_integration_follows_lifetimes_and_splits_at_midnight() -> None:
    span = PodSpan("a", "alice", "payments", BASE + 500, BASE + 700, 0.5, 2 * GIB)
    cells = integrate([span], BASE, BASE + 1000)
    before, after = day_of(BASE), day_of(BASE + 600)
    assert before != after
    assert cells[(before, "alice", "payments")].pod_seconds == 100
    assert cells[(after, "alice", "payments")].pod_seconds == 100
    assert cells[(after, "alice", "payments")].cpu_core_seconds == 50
    assert cells[(after, "alice", "payments")].memory_gib_seconds == 200
    # clipped to the interval asked for
    assert integrate([span], BASE + 650, BASE + 660)[(after, "alice", "payments")].pod_seconds == 10


# --- the scripted timeline ------------------------------------------------------------------


@dataclass
class Change:
    at: float
    kind: str  # pods | volumes | balancers
    old: Obj | None
    new: Obj | None


P1 = pod("p1", "alice", cpu="500m", memory="256Mi", start=10)
P1_DELETING = pod("p1", "alice", cpu="500m", memory="256Mi", start=10, deleted=1000)
P2 = pod("p2", "bob", team="search", cpu="1", memory="1Gi", start=65)
P2_DONE = pod("p2", "bob", team="search", cpu="1", memory="1Gi", start=65, finished=130)
P3 = pod("p3", "alice", cpu="250m", memory="128Mi", start=700)
P4 = pod("p4", "bob", cpu="2", memory="2Gi", start=1090)  # between two samples, then gone
P4_DELETING = pod("p4", "bob", cpu="2", memory="2Gi", start=1090, deleted=1115, grace=0)
# seen late: after the samples at 180 s (its start) and 240 s (its deletion)
P5 = pod("p5", "bob", cpu="1", memory="1Gi", start=178)
P5_DELETING = pod("p5", "bob", cpu="1", memory="1Gi", start=178, deleted=236)
# ends and is gone between two samples, just before a restart at 850 s
P6 = pod("p6", "alice", cpu="1", memory="512Mi", start=770)
P6_DELETING = pod("p6", "alice", cpu="1", memory="512Mi", start=770, deleted=842)
V1 = pvc("v1", "alice", size="10Gi", created=30)
V1_DELETING = pvc("v1", "alice", size="10Gi", created=30, deleted=900)
S1 = lb("s1", "bob", created=0)
SLEEP = SleepSpan("dev/carol-api", "carol", "", BASE + 100, BASE + 400, 2.0, 4 * GIB)

#: (when, kind, old, new): what the informers report; the pending pods'
#: first events (no startTime yet) come before they start.
TIMELINE: list[Change] = [
    Change(0, "balancers", None, S1),
    Change(5, "pods", None, pod("p1", "alice", cpu="500m", memory="256Mi", start=None)),
    Change(11, "pods", None, P1),
    Change(31, "volumes", None, V1),
    Change(66, "pods", None, P2),
    Change(131, "pods", P2, P2_DONE),
    Change(183, "pods", None, P5),
    Change(243, "pods", P5, P5_DELETING),
    Change(244, "pods", P5_DELETING, None),
    Change(771, "pods", None, P6),
    Change(843, "pods", P6, P6_DELETING),
    Change(844, "pods", P6_DELETING, None),
    Change(701, "pods", None, P3),
    Change(901, "volumes", V1, V1_DELETING),
    Change(902, "volumes", V1_DELETING, None),
    Change(1001, "pods", P1, P1_DELETING),
    Change(1003, "pods", P1_DELETING, None),
    Change(1091, "pods", None, P4),
    Change(1116, "pods", P4, P4_DELETING),
    Change(1117, "pods", P4_DELETING, None),
]
END = 1200.0
SETTLE = 10.0  # the service's default


def alive(offset: int) -> list[tuple[str, str, Amounts]]:
    """What is held during second ``[offset, offset + 1)`` of the script,
    read straight off the script (not through the code under test)."""
    out: list[tuple[str, str, Amounts]] = []
    mib = 2**20 / GIB

    def held(owner: str, team: str, **amounts: float) -> None:
        out.append((owner, team, Amounts(**amounts)))

    if 10 <= offset < 1000:
        held("alice", "payments", cpu_core_seconds=0.5, memory_gib_seconds=256 * mib, pod_seconds=1)
    if 65 <= offset < 130:
        held("bob", "search", cpu_core_seconds=1, memory_gib_seconds=1, pod_seconds=1)
    if offset >= 700:
        held(
            "alice", "payments", cpu_core_seconds=0.25, memory_gib_seconds=128 * mib, pod_seconds=1
        )
    if 178 <= offset < 236:
        held("bob", "", cpu_core_seconds=1, memory_gib_seconds=1, pod_seconds=1)
    if 770 <= offset < 842:
        held("alice", "payments", cpu_core_seconds=1, memory_gib_seconds=0.5, pod_seconds=1)
    if 1090 <= offset < 1115:
        held("bob", "", cpu_core_seconds=2, memory_gib_seconds=2, pod_seconds=1)
    if 30 <= offset < 900:
        held("alice", "payments", storage_gib_seconds=10)
    held("bob", "", load_balancer_seconds=1)
    if 100 <= offset < 400:
        held("carol", "", sleep_seconds=1, saved_core_seconds=2, saved_gib_seconds=4)
    return out


def expected(start: int, end: int) -> dict[tuple[str, str, str], Amounts]:
    out: dict[tuple[str, str, str], Amounts] = {}
    for offset in range(start, end):
        for owner, team, amounts in alive(offset):
            out.setdefault((day_of(BASE + offset), owner, team), Amounts()).add(amounts)
    return out


class Conflict(Exception):
    pass


@dataclass
class Store:
    """The ConfigMaps, with resourceVersions (as conditional writes see them)."""

    records: dict[str, DayRecord] = field(default_factory=dict)
    version: int = 0

    def load(self) -> dict[str, DayRecord]:
        return {d: r.copy() for d, r in self.records.items()}

    def write(self, record: DayRecord) -> DayRecord:
        current = self.records.get(record.day)
        if (current.resource_version if current else None) != record.resource_version:
            raise Conflict(record.day)
        self.version += 1
        out = record.copy()
        out.resource_version = str(self.version)
        self.records[record.day] = out.copy()
        return out


@dataclass
class Replica:
    """A replica as the service runs one: trackers fed by its informers,
    the records it read or wrote, and its counters."""

    name: str
    pods: SpanTracker = field(default_factory=lambda: SpanTracker(lambda o: pod_span(o, team_of)))
    volumes: SpanTracker = field(
        default_factory=lambda: SpanTracker(lambda o: volume_span(o, team_of))
    )
    balancers: SpanTracker = field(
        default_factory=lambda: SpanTracker(lambda o: load_balancer_span(o, team_of))
    )
    records: dict[str, DayRecord] = field(default_factory=dict)
    counters: dict[tuple[str, str], Amounts] = field(default_factory=dict)
    conflicts: int = 0

    def see(self, change: Change) -> None:
        getattr(self, change.kind).update(change.old, change.new, BASE + change.at)

    def relist(self, objects: dict[str, dict[str, Obj]], at: float) -> None:
        for kind, items in objects.items():
            for obj in items.values():
                getattr(self, kind).update(None, obj, BASE + at)

    def spans(self) -> list[Any]:
        return [*self.pods.spans(), *self.volumes.spans(), *self.balancers.spans(), SLEEP]

    def flush(self, store: Store, at: float, *, stale: bool = False) -> None:
        """As the service flushes: up to ``SETTLE`` before now (objects
        ended by now are counted to their end)."""
        if not stale:
            self.records = store.load()
        for _ in range(5):
            plan = advance(
                self.records, self.spans(), BASE + at - SETTLE, now=BASE + at, origin=BASE
            )
            try:
                for record in plan:
                    old = self.records.get(record.day)
                    written = store.write(record)
                    self.records[record.day] = written
                    for key, delta in row_deltas(old, written).items():
                        self.counters.setdefault(key, Amounts()).add(delta)
                break
            except Conflict:
                self.conflicts += 1
                self.records = store.load()
        until = watermark(self.records.values())
        assert until is not None
        for tracker in (self.pods, self.volumes, self.balancers):
            tracker.prune(until)


def run_script(
    leaders: list[tuple[float, str]],
    *,
    restarts: dict[float, str] | None = None,
    race_at: float | None = None,
) -> tuple[Store, dict[str, Replica]]:
    """Play the timeline: ``leaders`` says who leads from when; a replica
    named in ``restarts`` at an instant stops then (a leader writes what it
    holds on the way out, as the service does) and a fresh one that saw
    nothing before relists; samples every 60 s. At ``race_at`` both
    replicas flush from the same stale records."""
    store = Store()
    replicas = {"a": Replica("a"), "b": Replica("b")}
    restarts = restarts or {}
    current: dict[str, dict[str, Obj]] = {"pods": {}, "volumes": {}, "balancers": {}}
    events = sorted(
        [(c.at, 0, c) for c in TIMELINE]
        + [(float(t), 1, None) for t in range(60, int(END) + 1, 60)]
        + [(t, 2, name) for t, name in restarts.items()]
    )
    for at, order, item in events:
        if order == 0:
            assert isinstance(item, Change)
            obj = item.new or item.old
            assert obj is not None
            uid = obj["metadata"]["uid"]
            if item.new is None:
                current[item.kind].pop(uid, None)
            else:
                current[item.kind][uid] = item.new
            for r in replicas.values():
                r.see(item)
        elif order == 2:
            assert isinstance(item, str)
            if [name for since, name in leaders if since <= at][-1] == item:
                replicas[item].flush(store, at)
            replicas[item] = Replica(item)
            replicas[item].relist(current, at)
        else:
            leader = [name for since, name in leaders if since <= at][-1]
            if race_at == at:
                other = "b" if leader == "a" else "a"
                for r in (replicas[leader], replicas[other]):
                    r.records = store.load()
                replicas[other].flush(store, at, stale=True)
                replicas[leader].flush(store, at, stale=True)
            else:
                replicas[leader].flush(store, at)
    return store, replicas


def totals(
    store: Store, replica: Replica | None = None, at: float = END
) -> dict[tuple[str, str, str], Amounts]:
    """The records' sums; with ``replica``, plus what it has not written
    yet, up to ``at`` (as its ``/v1/usage`` adds it)."""
    records = store.load()
    if replica is not None:
        for record in advance(records, replica.spans(), BASE + at, now=BASE + at, origin=BASE):
            records[record.day] = record
    return {
        (record.day, owner, team): amounts
        for record in records.values()
        for (owner, team), amounts in record.rows.items()
    }


def assert_same(got: dict[Any, Amounts], want: dict[Any, Amounts]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        for name, value in want[key].as_dict().items():
            assert getattr(got[key], name) == pytest.approx(value, abs=1e-6), (key, name)


@pytest.mark.parametrize(
    ("case", "leaders", "restarts", "race_at"),
    [
        ("one leader throughout", [(0.0, "a")], {}, None),
        # a stops leading after its flush at 300 s (it crashed at 330 s); b,
        # which saw everything, takes over at 345 s: its first flush, at
        # 360 s, continues from a's watermark
        ("a leader change", [(0.0, "a"), (345.0, "b")], {}, None),
        # the only replica restarts at 850 s: the new process saw nothing
        # before (p2 completed long ago; v1 is still there) and relists
        ("a restart", [(0.0, "a")], {850.0: "a"}, None),
        # the leader changes back and forth across midnight, and the new one
        # restarted before leading
        ("leader changes across midnight", [(0, "a"), (590, "b"), (610, "a")], {605.0: "a"}, None),
        # both believe they lead at 660 s (a Lease just expired): one write
        # conflicts, is re-read and recomputed
        ("two leaders at once", [(0.0, "a")], {}, 660.0),
    ],
)
def test_the_records_equal_the_lifetimes_whoever_wrote_them(
    case: str,
    leaders: list[tuple[float, str]],
    restarts: dict[float, str],
    race_at: float | None,
) -> None:
    store, replicas = run_script(leaders, restarts=restarts, race_at=race_at)
    last = replicas[leaders[-1][1]]
    # written: complete to SETTLE before the last sample
    assert_same(totals(store), expected(0, int(END - SETTLE)))
    # with what the leader has not written yet: everything to the end
    want = expected(0, int(END))
    assert_same(totals(store, last), want)
    # the counters of all leaders together added exactly what was written
    added: dict[Any, Amounts] = {}
    for r in replicas.values():
        for key, amounts in r.counters.items():
            added.setdefault(key, Amounts()).add(amounts)
    by_owner: dict[Any, Amounts] = {}
    for (_, owner, team), amounts in expected(0, int(END - SETTLE)).items():
        by_owner.setdefault((owner, team), Amounts()).add(amounts)
    if not restarts:  # a restarted process's counters start again from zero
        assert_same(added, by_owner)
    # every day record is complete to its midnight, the last one to the end
    days = sorted(store.records)
    assert len(days) == 2
    assert store.records[days[0]].complete_until == BASE + 600
    assert store.records[days[1]].complete_until == BASE + END - SETTLE
    if race_at is not None:
        assert sum(r.conflicts for r in replicas.values()) >= 1


def test_sampling_more_often_changes_nothing() -> None:
    spans: list[SleepSpan | PodSpan] = [
        SLEEP,
        PodSpan("x", "alice", "payments", BASE + 7, BASE + 97, 1.0, GIB),
    ]
    once = advance({}, spans, BASE + 200, origin=BASE)
    records: dict[str, DayRecord] = {}
    for t in range(1, 201):
        for record in advance(records, spans, BASE + t, origin=BASE):
            records[record.day] = record
    (a,) = once
    (b,) = records.values()
    assert_same(a.rows, b.rows)


def test_a_crash_between_two_days_writes_continues_from_midnight() -> None:
    spans = [PodSpan("x", "alice", "payments", BASE, None, 1.0, GIB)]
    first, _second = advance({}, spans, BASE + 900, origin=BASE)
    # only the older day was written before the crash
    records = {first.day: first}
    assert watermark(records.values()) == BASE + 600
    (second,) = advance(records, spans, BASE + 960, origin=BASE)
    assert second.rows[("alice", "payments")].pod_seconds == 360


def test_a_record_survives_its_configmap_form() -> None:
    (record,) = advance({}, [SLEEP], BASE + 500, origin=BASE + 0.123456)
    back = DayRecord.from_data(record.to_data())
    assert back.complete_until == record.complete_until
    assert_same(back.rows, record.rows)
    with pytest.raises(ValueError, match="not a usage record"):
        DayRecord.from_data({"rows.json": "[]"})


# --- actual use --------------------------------------------------------------------------


def test_a_sample_counts_from_the_previous_sample_within_the_pods_life() -> None:
    span = PodSpan("u", "alice", "payments", BASE + 30, BASE + 100, 1.0, GIB)
    samples = [PodUsage("dev", "p", 0.2, GIB / 2), PodUsage("dev", "other", 5.0, GIB)]
    assert used_spans(samples, {("dev", "p"): span}, previous=None, now=BASE + 60) == []
    (used,) = used_spans(samples, {("dev", "p"): span}, previous=BASE, now=BASE + 60)
    assert (used.since, used.until) == (BASE + 30, BASE + 60)
    (late,) = used_spans(samples, {("dev", "p"): span}, previous=BASE + 60, now=BASE + 120)
    assert (late.since, late.until) == (BASE + 60, BASE + 100)
    cells = integrate([used, late], BASE, BASE + 200)
    cell = cells[(day_of(BASE), "alice", "payments")]
    assert cell.cpu_used_core_seconds == pytest.approx(0.2 * 70)
    assert cell.memory_used_gib_seconds == pytest.approx(0.5 * 70)


def test_pod_metrics_read_as_the_sum_of_their_containers() -> None:
    item = {
        "metadata": {"namespace": "dev", "name": "p"},
        "containers": [
            {"usage": {"cpu": "150m", "memory": "100Mi"}},
            {"usage": {"cpu": "50000000n", "memory": "28Mi"}},
        ],
    }
    usage = pod_usage(item)
    assert usage is not None
    assert usage.cpu_cores == pytest.approx(0.2)
    assert usage.memory_bytes == 128 * 2**20
    assert pod_usage({"metadata": {}}) is None


# --- the report ------------------------------------------------------------------------------


NOW = BASE + 7 * 3600  # 2026-12-02T06:50:00Z


@pytest.mark.parametrize(
    ("text", "since"),
    [
        ("30m", NOW - 1800),
        ("12h", NOW - 12 * 3600),
        ("7d", NOW - 7 * 86400),
        ("2w", NOW - 14 * 86400),
        ("2026-11-25T00:00:00Z", datetime.datetime(2026, 11, 25, tzinfo=datetime.UTC).timestamp()),
        (
            "2026-11-25T01:00:00+01:00",
            datetime.datetime(2026, 11, 25, tzinfo=datetime.UTC).timestamp(),
        ),
    ],
)
def test_since_reads_durations_and_rfc3339(text: str, since: float) -> None:
    assert parse_since(text, NOW) == since


@pytest.mark.parametrize("text", ["7", "7y", "yesterday", "2026-11-25", "2026-11-25T00:00:00", ""])
def test_a_bad_since_says_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match=r"use a duration \(30m, 12h, 7d, 2w\) or an RFC 3339"):
        parse_since(text, NOW)


def test_by_is_owner_or_team() -> None:
    assert parse_by("team") == "team"
    with pytest.raises(ValueError, match="use owner or team"):
        parse_by("person")


def _records() -> list[DayRecord]:
    store, _ = run_script([(0.0, "a")])
    return list(store.records.values())


def test_the_report_by_owner_has_the_contracts_shape_and_order() -> None:
    prices = Prices(core_hour=0.031, gib_hour=0.004, storage_gib_hour=0.0001, currency="EUR")
    report = build_report(
        _records(),
        pending={},
        since=BASE - 3600,
        until=BASE + END,
        by="owner",
        interval=60,
        actual=ActualUsage(
            available=False, reason="metrics.k8s.io is not served: no metrics-server"
        ),
        prices=prices,
    )
    assert report["since"] == format_time(BASE - 23 * 3600 - 50 * 60)  # that day's midnight
    assert report["until"] == format_time(BASE + END)
    assert report["by"] == "owner"
    assert report["interval_seconds"] == 60.0
    assert report["actual_usage"] == {
        "available": False,
        "reason": "metrics.k8s.io is not served: no metrics-server",
    }
    assert report["prices"] == {
        "core_hour": 0.031,
        "gib_hour": 0.004,
        "storage_gib_hour": 0.0001,
        "currency": "EUR",
    }
    rows = report["rows"]
    costs = [r["cost"] for r in rows]
    assert costs == sorted(costs, reverse=True)
    want: dict[tuple[str, str], Amounts] = {}
    for (_, owner, team), amounts in expected(0, int(END - SETTLE)).items():
        want.setdefault((owner, team), Amounts()).add(amounts)
    assert sorted((r["owner"], r["team"]) for r in rows) == sorted(want)
    for row in rows:
        a = want[(row["owner"], row["team"])]
        assert row["cpu_core_seconds"] == pytest.approx(a.cpu_core_seconds)
        assert row["cpu_used_core_seconds"] is None and row["memory_used_gib_seconds"] is None
        assert row["cost"] == pytest.approx(
            (a.cpu_core_seconds * 0.031 + a.memory_gib_seconds * 0.004
             + a.storage_gib_seconds * 0.0001) / 3600, abs=1e-6
        )  # fmt: skip
        assert row["saved_cost"] == pytest.approx(
            (a.saved_core_seconds * 0.031 + a.saved_gib_seconds * 0.004) / 3600, abs=1e-6
        )
        assert list(row) == [
            "owner", "team", "cpu_core_seconds", "memory_gib_seconds", "pod_seconds",
            "storage_gib_seconds", "load_balancer_seconds", "cpu_used_core_seconds",
            "memory_used_gib_seconds", "sleep_seconds", "saved_core_seconds",
            "saved_gib_seconds", "cost", "saved_cost",
        ]  # fmt: skip
    total = report["totals"]
    assert total["pod_seconds"] == pytest.approx(sum(a.pod_seconds for a in want.values()))
    assert "owner" not in total


def test_the_report_by_team_without_prices_sorts_by_core_seconds_and_adds_pending() -> None:
    records = _records()
    extra = {(day_of(BASE + END), "dave", "payments"): Amounts(cpu_core_seconds=1e6)}
    report = build_report(
        records,
        pending=extra,
        since=BASE + 700,  # the second day only
        until=BASE + END,
        by="team",
        interval=60,
        actual=ActualUsage(available=True),
        prices=None,
    )
    assert report["prices"] is None and report["actual_usage"] == {"available": True}
    rows = report["rows"]
    assert all("owner" not in r for r in rows)
    assert rows[0]["team"] == "payments"
    second_day = expected(600, int(END - SETTLE))
    payments = sum(a.cpu_core_seconds for (_, _, t), a in second_day.items() if t == "payments")
    assert rows[0]["cpu_core_seconds"] == pytest.approx(payments + 1e6)
    cores = [r["cpu_core_seconds"] for r in rows]
    assert cores == sorted(cores, reverse=True)
    assert rows[0]["cost"] is None and rows[0]["cpu_used_core_seconds"] == 0.0
    assert not math.isnan(report["totals"]["sleep_seconds"])


def test_a_span_counted_to_its_end_ahead_of_the_watermark_is_not_counted_again() -> None:
    """A flush counts an ended span to its end at once (past ``end``, which
    trails ``now``); the next flush, a report, or another leader, starting
    from the same watermark, must not count that part again."""
    ended = PodSpan("x", "alice", "payments", BASE + 100, BASE + 195, 1.0, GIB)
    running = PodSpan("y", "bob", "", BASE + 100, None, 1.0, GIB)
    records: dict[str, DayRecord] = {}
    for at in (150.0, 200.0, 201.0, 202.0, 260.0):
        for record in advance(
            records, [ended, running], BASE + at - SETTLE, now=BASE + at, origin=BASE
        ):
            records[record.day] = DayRecord.from_data(record.to_data(), "1")  # as stored
    (record,) = records.values()
    assert record.rows[("alice", "payments")].pod_seconds == pytest.approx(95)
    assert record.rows[("bob", "")].pod_seconds == pytest.approx(150)
    assert record.done == {}  # forgotten once the watermark passed its end
    # a report right after the flush at 200 s: the ended pod is not counted twice
    at_200: dict[str, DayRecord] = {}
    for at in (150.0, 200.0):
        for r in advance(at_200, [ended], BASE + at - SETTLE, now=BASE + at, origin=BASE):
            at_200[r.day] = r
    (r200,) = at_200.values()
    assert r200.done == {"pod:x": BASE + 195}
    (report,) = advance(at_200, [ended], BASE + 200, now=BASE + 200, origin=BASE)
    assert report.rows[("alice", "payments")].pod_seconds == pytest.approx(95)


def test_after_a_long_quiet_time_only_the_days_with_usage_get_a_record() -> None:
    old = DayRecord("2020-01-01", datetime.datetime(2020, 1, 2, tzinfo=datetime.UTC).timestamp())
    running = PodSpan("y", "bob", "", BASE + 100, None, 1.0, GIB)
    plan = advance({old.day: old}, [running], BASE + 200, origin=BASE)
    assert [r.day for r in plan] == [day_of(BASE)]
    assert plan[0].rows[("bob", "")].pod_seconds == pytest.approx(100)
    assert watermark(plan) == BASE + 200
