"""When a copy is idle and what the agent does about it (pure: fake time)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

import pytest

from devstack.agent.desired import (
    ASLEEP_OWNER_LABEL,
    AgentSettings,
    ObjectRef,
    desired_state,
)
from devstack.agent.sleep import (
    ASLEEP_HEADER,
    CopyFacts,
    Gone,
    IdleTracker,
    Sleep,
    SleepRecord,
    Woke,
    asleep_message,
    format_time,
    parse_duration,
    read_records,
    record_key,
    route_base_of,
    service_requests,
    traefik_route_base,
)
from devstack.core.errors import ConfigError
from devstack.core.routing import OWNER_LABEL, SERVICE_LABEL

T0 = 1_800_000_000.0  # the agent starts
HOUR = 3600.0
URL = "http://traefik:9100/metrics"
HASH = "0123456789abcdef0123"  # Traefik: 20 hex digits of the route's rule
ALICE_ROUTES = traefik_route_base("dev", "devstack-web--alice")
ALICE_SVC = f"{ALICE_ROUTES}-{HASH}@kubernetescrd"


def copy(**kw: object) -> CopyFacts:
    base = CopyFacts(
        key=("dev", "web-alice"),
        service="web",
        owner="alice",
        team="payments",
        replicas=2,
        created_at=T0 - 10 * HOUR,
        last_sync=None,
        traefik_routes=ALICE_ROUTES,
        expired=False,
        pod_cpu_cores=0.25,
        pod_memory_bytes=2.0**27,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def record(**kw: object) -> SleepRecord:
    base = SleepRecord(
        owner="alice",
        team="payments",
        service="web",
        since=T0 + HOUR,
        reason="idle",
        replicas=2,
        cpu_cores=0.5,
        memory_bytes=2.0**28,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def kinds(actions: Sequence[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


# --- what counts as activity -----------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "now", "expected"),
    [
        # the agent's start counts: a restart never sleeps a copy at once
        (copy(), T0 + 2 * HOUR - 1, []),
        (copy(), T0 + 2 * HOUR, ["Sleep"]),
        # created later than the start: from its creation
        (copy(created_at=T0 + HOUR), T0 + 2 * HOUR, []),
        (copy(created_at=T0 + HOUR), T0 + 3 * HOUR, ["Sleep"]),
        # a sync session (the connect heartbeat) restarts the idle clock
        (copy(last_sync=T0 + 1.5 * HOUR), T0 + 3 * HOUR, []),
        (copy(last_sync=T0 + 1.5 * HOUR), T0 + 3.5 * HOUR, ["Sleep"]),
        # at zero replicas already (scaled by hand): nothing to do
        (copy(replicas=0), T0 + 9 * HOUR, []),
        # expired: asleep at once, idle or not
        (copy(expired=True, last_sync=T0), T0 + 1, ["Sleep"]),
    ],
)
def test_idle_after_the_last_activity(facts: CopyFacts, now: float, expected: list[str]) -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    assert kinds(tracker.decide([facts], {}, now)) == expected


def test_the_sleep_records_why_and_what_the_copy_held() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    (idle,) = tracker.decide([copy(last_sync=T0 + HOUR)], {}, T0 + 3 * HOUR)
    assert isinstance(idle, Sleep)
    assert idle.idle_since == T0 + HOUR
    assert idle.record == record(since=T0 + 3 * HOUR)
    (expired,) = tracker.decide([copy(expired=True)], {}, T0 + 5)
    assert isinstance(expired, Sleep)
    assert (expired.record.reason, expired.idle_since) == ("expired", None)


def test_sleeping_idle_copies_can_be_off_but_expiry_still_scales_down() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    facts = [copy(), copy(key=("dev", "api-bob"), owner="bob", expired=True)]
    actions = tracker.decide(facts, {}, T0 + 5 * HOUR, sleep_idle=False)
    assert [(type(a).__name__, a.key) for a in actions] == [("Sleep", ("dev", "api-bob"))]


def test_a_request_routed_to_the_copy_keeps_it_awake() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    other = f"{traefik_route_base('dev', 'devstack-web')}-{HASH}@kubernetescrd"
    # The first scrape only sets where the counters stand.
    tracker.scraped(URL, {ALICE_SVC: 10.0, other: 500.0}, T0 + 60)
    tracker.scraped(URL, {ALICE_SVC: 10.0, other: 900.0}, T0 + HOUR)  # the baseline's grew
    assert kinds(tracker.decide([copy()], {}, T0 + 2 * HOUR)) == ["Sleep"]
    tracker.scraped(URL, {ALICE_SVC: 11.0, other: 900.0}, T0 + 1.5 * HOUR)  # hers grew
    assert kinds(tracker.decide([copy()], {}, T0 + 3.5 * HOUR - 1)) == []
    assert kinds(tracker.decide([copy()], {}, T0 + 3.5 * HOUR)) == ["Sleep"]


@pytest.mark.parametrize(
    ("before", "after", "active"),
    [
        ({ALICE_SVC: 5.0}, {ALICE_SVC: 5.0}, False),
        ({ALICE_SVC: 5.0}, {ALICE_SVC: 6.0}, True),
        # Traefik restarted and served 2 since: the counter went down
        ({ALICE_SVC: 5.0}, {ALICE_SVC: 2.0}, True),
        # Traefik restarted and the series is back at 0: nothing served
        ({ALICE_SVC: 5.0}, {ALICE_SVC: 0.0}, False),
        # a series that appears after the first scrape, with requests
        ({}, {ALICE_SVC: 3.0}, True),
        ({}, {}, False),
    ],
)
def test_which_counter_changes_are_requests(
    before: dict[str, float], after: dict[str, float], active: bool
) -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    tracker.scraped(URL, before, T0 + 60)
    tracker.scraped(URL, after, T0 + HOUR)
    assert tracker.last_activity(copy()) == (T0 + HOUR if active else T0)


def test_each_traefik_replica_is_its_own_counter() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    a, b = URL, "http://traefik-2:9100/metrics"
    tracker.scraped(a, {ALICE_SVC: 7.0}, T0 + 60)
    tracker.scraped(b, {ALICE_SVC: 3.0}, T0 + 60)
    # The same value, but each replica's own: no change on either.
    tracker.scraped(a, {ALICE_SVC: 7.0}, T0 + HOUR)
    tracker.scraped(b, {ALICE_SVC: 3.0}, T0 + HOUR)
    assert tracker.last_activity(copy()) == T0
    tracker.scraped(b, {ALICE_SVC: 4.0}, T0 + 2 * HOUR)
    assert tracker.last_activity(copy()) == T0 + 2 * HOUR


def test_a_failed_scrape_counts_as_activity_for_every_copy() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    tracker.scraped(URL, {}, T0 + 60)
    tracker.scraped(URL, None, T0 + 1.5 * HOUR)
    bob = copy(key=("dev", "api-bob"), owner="bob", traefik_routes=None)
    assert kinds(tracker.decide([copy(), bob], {}, T0 + 3 * HOUR)) == []
    assert kinds(tracker.decide([copy(), bob], {}, T0 + 3.5 * HOUR)) == ["Sleep", "Sleep"]


# --- waking and forgetting ----------------------------------------------------------------


def test_a_sleeping_copy_with_replicas_again_woke_and_its_idle_clock_restarts() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    asleep = {("dev", "web-alice"): record()}
    # Still at zero: nothing to do (a sleep is not repeated).
    assert tracker.decide([copy(replicas=0)], asleep, T0 + 9 * HOUR) == []
    # Someone scaled it up (devstack up, devstack connect): it woke.
    (woke,) = tracker.decide([copy(replicas=1)], asleep, T0 + 10 * HOUR)
    assert isinstance(woke, Woke) and woke.record == record()
    # The wake is activity: two hours from it, not from the agent's start.
    assert tracker.decide([copy(replicas=1)], {}, T0 + 12 * HOUR - 1) == []
    assert kinds(tracker.decide([copy(replicas=1)], {}, T0 + 12 * HOUR)) == ["Sleep"]


def test_the_record_of_a_deployment_that_is_gone_goes() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    (gone,) = tracker.decide([], {("dev", "web-alice"): record()}, T0 + HOUR)
    assert isinstance(gone, Gone) and gone.key == ("dev", "web-alice")


# --- the record, durations, Traefik's text -------------------------------------------------


def test_records_round_trip_and_bad_entries_are_skipped() -> None:
    r = record(since=1_800_000_000.0)
    data = {
        record_key(("dev", "web-alice")): r.to_json(),
        "dev.broken": "{not json",
        "dev.no-reason": '{"owner": "a", "service": "s", "since": "2027-01-01T00:00:00Z"}',
        "nodot": r.to_json(),
    }
    assert read_records(data) == {("dev", "web-alice"): r}
    assert '"since": "2027-01-15T08:00:00Z"' in r.to_json()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1d", 86400.0), ("1w", 604800.0),
     ("45", 45.0), ("1.5h", 5400.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, what="--idle-after") == seconds


@pytest.mark.parametrize("text", ["", "2 hours", "-1h", "0", "h"])
def test_bad_durations_say_what_to_write(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--idle-after .*(duration such as|more than 0)"):
        parse_duration(text, what="--idle-after")


def test_traefik_names_a_routes_service_by_its_ingressroute() -> None:
    # As the real binary does (tests/cluster/test_sleep.py reads it).
    assert ALICE_ROUTES == "dev-devstack-web-alice"
    assert route_base_of(ALICE_SVC) == "dev-devstack-web-alice"
    # alice-x's copy is not alice's: what follows the base must be the hash.
    other_owner = f"{traefik_route_base('dev', 'devstack-web--alice-x')}-{HASH}@kubernetescrd"
    assert route_base_of(other_owner) == "dev-devstack-web-alice-x"
    assert route_base_of("dev-web-8080@kubernetescrd") is None
    assert route_base_of(f"dev-devstack-web-alice-{HASH}@file") is None


def test_a_request_to_another_owners_copy_is_not_hers() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    other = f"{traefik_route_base('dev', 'devstack-web--alice-x')}-{HASH}@kubernetescrd"
    tracker.scraped(URL, {other: 1.0}, T0 + 60)
    tracker.scraped(URL, {other: 2.0}, T0 + HOUR)
    assert tracker.last_activity(copy()) == T0


def test_traefik_counters_are_summed_per_service() -> None:
    text = "\n".join(
        [
            "# HELP traefik_service_requests_total How many HTTP requests processed.",
            "# TYPE traefik_service_requests_total counter",
            'traefik_service_requests_total{code="200",method="GET",protocol="http",'
            f'service="{ALICE_SVC}"}} 3',
            'traefik_service_requests_total{code="404",method="GET",protocol="http",'
            f'service="{ALICE_SVC}"}} 2',
            'traefik_service_requests_total{code="200",method="GET",protocol="http",'
            'service="dev-web-8080@kubernetescrd"} 1e+03',
            'traefik_service_requests_bytes_total{service="x"} 99',
            'traefik_entrypoint_requests_total{entrypoint="web"} 1000',
        ]
    )
    assert service_requests(text) == {ALICE_SVC: 5.0, "dev-web-8080@kubernetescrd": 1000.0}


# --- routes while a copy sleeps ----------------------------------------------------------------


def _svc(name: str, owner: str | None, namespace: str = "dev") -> dict[str, object]:
    labels = {SERVICE_LABEL: "web", **({OWNER_LABEL: owner} if owner else {})}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "labels": labels,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"ports": [{"name": "http", "port": 8080}]},
    }


NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
SINCE = datetime.datetime(2026, 5, 31, 22, 0, tzinfo=datetime.UTC)


def test_a_sleeping_copys_routes_go_to_the_baseline_with_the_asleep_header() -> None:
    settings = AgentSettings()
    services = [_svc("web", None, "shared"), _svc("web-alice", "alice"), _svc("web-bob", "bob")]
    awake = desired_state(services, settings, NOW)
    asleep = desired_state(services, settings, NOW, {("web", "alice"): SINCE})

    # alice's own routes go; bob's stay as they were.
    alice_ir = ObjectRef(kind="IngressRoute", namespace="dev", name="devstack-web--alice")
    assert alice_ir in awake.objects and alice_ir not in asleep.objects
    bob_ir = ObjectRef(kind="IngressRoute", namespace="dev", name="devstack-web--bob")
    assert asleep.objects[bob_ir] == awake.objects[bob_ir]

    # The baseline carries her three routes, to the baseline Service.
    base_ref = ObjectRef(kind="IngressRoute", namespace="shared", name="devstack-web")
    before, after = (
        awake.objects[base_ref]["spec"]["routes"],
        asleep.objects[base_ref]["spec"]["routes"],
    )
    assert after[: len(before)] == before
    own = {r["priority"]: r for r in awake.objects[alice_ir]["spec"]["routes"]}
    extra = after[len(before) :]
    assert [r["match"] for r in extra] == [own[p]["match"] for p in (3000, 2000, 1000)]
    assert [r["priority"] for r in extra] == [3000, 2000, 1000]
    assert all(r["services"] == [{"name": "web", "port": 8080}] for r in extra)
    assert [r["middlewares"] for r in extra] == [
        [{"name": "devstack-web--alice-asleep", "namespace": "shared"}],
        [{"name": "devstack-web--alice-asleep", "namespace": "shared"}],
        [{"name": "devstack-web--alice-asleep-route", "namespace": "shared"}],
    ]

    # The Middlewares live with the baseline (owned by it, no owner label:
    # they belong to the baseline's route key) and add the header.
    message = "web copy of alice asleep since 2026-05-31T22:00:00Z; devstack connect web wakes it"
    assert message == asleep_message("web", "alice", SINCE.timestamp())
    for name, injects in (
        ("devstack-web--alice-asleep", False),
        ("devstack-web--alice-asleep-route", True),
    ):
        mw = asleep.objects[ObjectRef(kind="Middleware", namespace="shared", name=name)]
        assert mw["metadata"]["ownerReferences"][0]["name"] == "web"
        assert OWNER_LABEL not in mw["metadata"]["labels"]
        assert mw["metadata"]["labels"][ASLEEP_OWNER_LABEL] == "alice"
        headers = mw["spec"]["headers"]
        assert headers["customResponseHeaders"] == {ASLEEP_HEADER: message}
        own_mw = awake.objects[
            ObjectRef(kind="Middleware", namespace="dev", name="devstack-web--alice-route")
        ]
        assert headers.get("customRequestHeaders") == (
            own_mw["spec"]["headers"]["customRequestHeaders"] if injects else None
        )

    # /v1/routes says since when.
    (routes,) = asleep.routes
    assert [(o.owner, o.asleep_since) for o in routes.owners] == [
        ("alice", "2026-05-31T22:00:00Z"),
        ("bob", None),
    ]


def test_without_a_baseline_a_sleeping_copy_has_no_routes() -> None:
    asleep = desired_state(
        [_svc("web-alice", "alice")], AgentSettings(), NOW, {("web", "alice"): SINCE}
    )
    assert asleep.objects == {}


def test_format_time_is_rfc3339_utc() -> None:
    assert format_time(SINCE.timestamp()) == "2026-05-31T22:00:00Z"


def test_a_sleeping_copy_that_expires_is_recorded_as_expired() -> None:
    tracker = IdleTracker(2 * HOUR, started_at=T0)
    asleep = {("dev", "web-alice"): record()}
    (action,) = tracker.decide([copy(replicas=0, expired=True)], asleep, T0 + 5 * HOUR)
    assert isinstance(action, Sleep)
    assert action.record == record(reason="expired")  # since when it slept stays
    expired = {("dev", "web-alice"): record(reason="expired")}
    assert tracker.decide([copy(replicas=0, expired=True)], expired, T0 + 6 * HOUR) == []
