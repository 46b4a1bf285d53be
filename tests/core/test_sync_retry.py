"""Retry decisions of ``devstack connect`` (devstack.core.sync.retry), as
tables: a run's failed sessions in order, and what each one decides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from devstack.core.errors import (
    AuthError,
    DevstackError,
    PeerFailedError,
    PermanentError,
    StaleViewError,
    UnreachableError,
)
from devstack.core.sync.retry import (
    Failure,
    GiveUp,
    NoAnswerError,
    RefusedConnectionError,
    Retrier,
    Retry,
    RetryPolicy,
    Session,
    UnknownHostError,
    dial_error,
    failure_of,
)

ADDR = "10.0.0.7:7070"
REFUSED = dial_error(Failure.CONNECTION_REFUSED, ADDR)
UNKNOWN = dial_error(
    Failure.UNKNOWN_HOST, "nohost.invalid:7070", detail="Name or service not known"
)
SILENT = dial_error(Failure.NO_ANSWER, ADDR, timeout=10)
DROPPED = UnreachableError(f"cannot reach the sidecar at {ADDR}: Socket closed")
FAILED = PeerFailedError(f"the sidecar at {ADDR} failed (INTERNAL): disk on fire")
STALE = StaleViewError("batch 3: 7 more problem(s); reading the workspace again")
DENIED = PermanentError(f"the sidecar at {ADDR} refused the session (PERMISSION_DENIED): no")

UP = Session(connected=True, round_done=True, seconds=5)  # a session that worked, then dropped
HANDSHAKE = Session(connected=True)  # connected, dropped before its first round ended
NEVER = Session(connected=False)  # never got through the handshake
HEALTHY = Session(connected=True, round_done=True, seconds=61)


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (REFUSED, Failure.CONNECTION_REFUSED),
        (UNKNOWN, Failure.UNKNOWN_HOST),
        (SILENT, Failure.NO_ANSWER),
        (DROPPED, Failure.DROPPED),
        (dial_error(Failure.DROPPED, ADDR, detail="No route to host"), Failure.DROPPED),
        (FAILED, Failure.PEER_FAILED),
        (STALE, Failure.STALE_VIEW),
        (DENIED, Failure.PERMANENT),
        (AuthError("refused the token"), Failure.PERMANENT),
    ],
)
def test_each_error_is_one_failure(error: DevstackError, failure: Failure) -> None:
    assert failure_of(error) is failure


@pytest.mark.parametrize(
    ("kind", "cls", "says"),
    [
        (Failure.CONNECTION_REFUSED, RefusedConnectionError, "connection refused"),
        (Failure.UNKNOWN_HOST, UnknownHostError, "unknown host 'nohost.invalid'"),
        (Failure.NO_ANSWER, NoAnswerError, "no answer in 10 s"),
    ],
)
def test_a_dial_error_says_which_and_the_fix(kind: Failure, cls: type, says: str) -> None:
    err = dial_error(kind, "nohost.invalid:7070", timeout=10)
    assert isinstance(err, cls) and isinstance(err, UnreachableError)
    assert str(err).startswith("cannot reach the sidecar at nohost.invalid:7070: " + says)
    assert "--to" in str(err)


@dataclass
class Case:
    once: bool
    #: (error, how the session went) for each failed session, in order.
    failures: Sequence[tuple[DevstackError, Session]]
    #: Each decision: a delay (retry), or the start of the final error (give up).
    expect: list[float | str]
    policy: RetryPolicy = field(default_factory=RetryPolicy)


CASES: dict[str, Case] = {
    "a first connect that is refused fails at once, watching too": Case(
        False, [(REFUSED, NEVER)], ["cannot reach the sidecar at 10.0.0.7:7070: connection refused"]
    ),
    "an unknown host fails at once": Case(
        True, [(UNKNOWN, NEVER)], ["cannot reach the sidecar at nohost.invalid:7070: unknown host"]
    ),
    "no answer fails at once": Case(
        False, [(SILENT, NEVER)], [f"cannot reach the sidecar at {ADDR}: no answer"]
    ),
    "unavailable before the handshake fails at once": Case(
        True, [(DROPPED, NEVER)], ["cannot reach the sidecar at 10.0.0.7:7070: Socket closed"]
    ),
    "a refusal is never retried, even after hours up": Case(
        False, [(DROPPED, UP), (DENIED, NEVER)], [0.2, "the sidecar at 10.0.0.7:7070 refused"]
    ),
    "a sidecar that restarts is waited for while watching: the backoff doubles to 10 s": Case(
        False,
        [(DROPPED, UP)] + [(REFUSED, NEVER)] * 8,
        [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0],
    ),
    "an unknown host once connected is retried (a VPN that went down)": Case(
        False, [(DROPPED, UP), (UNKNOWN, NEVER), (SILENT, NEVER)], [0.2, 0.4, 0.8]
    ),
    "under --once, a dropped session is retried a bounded number of times": Case(
        True,
        [(DROPPED, UP), (REFUSED, NEVER), (REFUSED, NEVER), (REFUSED, NEVER)],
        [
            0.2,
            0.4,
            0.8,
            f"{REFUSED} (giving up after 4 attempts)",
        ],
        RetryPolicy(once_attempts=4),
    ),
    "a session that finished a round starts the backoff over": Case(
        False,
        [(DROPPED, UP), (REFUSED, NEVER), (REFUSED, NEVER), (DROPPED, UP), (REFUSED, NEVER)],
        [0.2, 0.4, 0.8, 0.2, 0.4],
    ),
    "a session that dropped before its first round keeps the backoff going": Case(
        False, [(DROPPED, UP), (DROPPED, HANDSHAKE), (DROPPED, HANDSHAKE)], [0.2, 0.4, 0.8]
    ),
    "the sidecar failing three times in a row ends it": Case(
        False,
        [(FAILED, HANDSHAKE)] * 3,
        [
            0.2,
            0.4,
            f"{FAILED} (giving up after 3 failures in a row)",
        ],
    ),
    "a failing sidecar before any handshake is retried too (it may be starting)": Case(
        False, [(FAILED, NEVER), (FAILED, NEVER)], [0.2, 0.4]
    ),
    "a healthy session between failures resets their count": Case(
        False,
        [(FAILED, HANDSHAKE), (FAILED, HANDSHAKE), (FAILED, HEALTHY), (FAILED, HANDSHAKE)],
        [0.2, 0.4, 0.2, 0.4],
    ),
    "a dropped session between failures resets their count": Case(
        False,
        [
            (FAILED, HANDSHAKE),
            (FAILED, HANDSHAKE),
            (DROPPED, HANDSHAKE),
            (FAILED, HANDSHAKE),
            (FAILED, HANDSHAKE),
        ],
        [0.2, 0.4, 0.8, 1.6, 3.2],
    ),
    "a stale view reads the workspace again in a new session": Case(
        True, [(STALE, HANDSHAKE)], [0.2]
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_retry_decisions(name: str) -> None:
    case = CASES[name]
    r = Retrier(case.policy, once=case.once)
    got: list[float | str] = []
    for error, session in case.failures:
        d = r.decide(error, session)
        got.append(d.delay if isinstance(d, Retry) else str(d.error))
        if isinstance(d, GiveUp):
            break
    assert len(got) == len(case.expect), got
    for g, w in zip(got, case.expect, strict=True):
        if isinstance(w, float):
            assert g == pytest.approx(w)
        else:
            assert isinstance(g, str) and g.startswith(w), g


def test_a_give_up_keeps_the_kind_of_error() -> None:
    refused = Retrier().decide(REFUSED, NEVER)
    assert isinstance(refused, GiveUp) and isinstance(refused.error, RefusedConnectionError)
    failed = Retrier(RetryPolicy(failure_attempts=1)).decide(FAILED, NEVER)
    assert isinstance(failed, GiveUp) and isinstance(failed.error, PermanentError)


def test_what_the_person_reads_while_reconnecting() -> None:
    r = Retrier()
    lines = [r.decide(e, s) for e, s in [(DROPPED, UP), (REFUSED, NEVER), (REFUSED, NEVER)]]
    assert all(isinstance(d, Retry) for d in lines)
    third = lines[2]
    assert isinstance(third, Retry)
    assert third.live == "reconnecting (attempt 3, next in 0.8 s)"
    assert third.line == f"disconnected ({REFUSED}); reconnecting (attempt 3, next in 0.8 s)"
    assert third.legacy_line == f"disconnected ({REFUSED}); retrying in 0.8s"
    # A session that finished a round starts the count over.
    again = r.decide(DROPPED, UP)
    assert isinstance(again, Retry) and again.attempt == 1 and again.delay == pytest.approx(0.2)


def test_the_schedule() -> None:
    assert RetryPolicy().delays() == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0])
    assert RetryPolicy(first_delay=1, max_delay=4).delays() == [1, 2, 4]
