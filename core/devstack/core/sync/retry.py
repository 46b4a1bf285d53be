"""Retry decisions of ``devstack connect`` (pure): what a failed session
means (try again after a delay, or give up with one line) and the backoff
schedule.

The I/O shell (``devstack.cli.syncer``) turns each failure into one of
devstack's errors, asks :meth:`Retrier.decide`, and either waits the
:class:`Retry`'s delay or raises the :class:`GiveUp`'s error.

- **A first connect fails at once, with the real reason.** Before any session
  of this run got through its handshake, an unreachable sidecar is a wrong
  address or a sidecar that does not run: a refused connection
  (:class:`RefusedConnectionError`), a host name that does not resolve
  (:class:`UnknownHostError`), no answer in time (:class:`NoAnswerError`),
  or ``UNAVAILABLE`` and the like all end the run.
- **A session that was up is waited for.** Once connected, the same failures
  are a sidecar restarting, a laptop waking from sleep or a VPN coming back:
  retried with backoff, for ever while watching, ``once_attempts`` failed
  attempts in all under ``--once``.
- **The sidecar failed** (``INTERNAL``, ``UNKNOWN``): ``failure_attempts`` in a
  row, then one line; a session that stayed up ``healthy_seconds`` resets the
  count.
- **A refusal** (a wrong token, ``PERMISSION_DENIED``, ``INVALID_ARGUMENT``,
  ``FAILED_PRECONDITION``, ...: a :class:`~devstack.core.errors.PermanentError`)
  is never retried.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from devstack.core.errors import (
    DevstackError,
    PeerFailedError,
    PermanentError,
    StaleViewError,
    UnreachableError,
)


class DialError(UnreachableError):
    """No connection to the sidecar could be made; the subclass says why."""

    reason = "unreachable"


class RefusedConnectionError(DialError):
    """Nothing listens at the address (``ECONNREFUSED``)."""

    reason = "connection-refused"


class UnknownHostError(DialError):
    """The host name does not resolve."""

    reason = "unknown-host"


class NoAnswerError(DialError):
    """No connection within the connect timeout (a firewall that drops, a
    VPN that is down, the wrong port)."""

    reason = "no-answer"


class Failure(enum.Enum):
    """What ended a session, as far as retrying goes."""

    #: Nothing listens at the address.
    CONNECTION_REFUSED = "connection-refused"
    #: The host name does not resolve.
    UNKNOWN_HOST = "unknown-host"
    #: No connection in time.
    NO_ANSWER = "no-answer"
    #: The network or the sidecar dropped the session (``UNAVAILABLE``,
    #: ``DEADLINE_EXCEEDED``, a stream cut under a write, ...).
    DROPPED = "dropped"
    #: An acknowledgement could not list every problem: read the workspace
    #: again in a new session.
    STALE_VIEW = "stale-view"
    #: The sidecar failed without saying why (``INTERNAL``, ``UNKNOWN``).
    PEER_FAILED = "peer-failed"
    #: A refusal that retrying cannot fix.
    PERMANENT = "permanent"


def failure_of(error: DevstackError) -> Failure:
    """The :class:`Failure` an error stands for (any other ``TemporaryError``,
    or an ``OSError`` turned into one, is a dropped session)."""
    if isinstance(error, PermanentError):
        return Failure.PERMANENT
    if isinstance(error, RefusedConnectionError):
        return Failure.CONNECTION_REFUSED
    if isinstance(error, UnknownHostError):
        return Failure.UNKNOWN_HOST
    if isinstance(error, NoAnswerError):
        return Failure.NO_ANSWER
    if isinstance(error, StaleViewError):
        return Failure.STALE_VIEW
    if isinstance(error, PeerFailedError):
        return Failure.PEER_FAILED
    return Failure.DROPPED


@dataclass(frozen=True)
class RetryPolicy:
    """How ``connect`` retries a failed session (see the module's docstring).

    The backoff starts at ``first_delay`` and doubles to ``max_delay``; it
    starts over after a session that finished a round."""

    first_delay: float = 0.2
    max_delay: float = 10.0
    once_attempts: int = 8
    failure_attempts: int = 3
    healthy_seconds: float = 60.0

    def delays(self) -> list[float]:
        """The schedule, from the first delay up to the first ``max_delay``."""
        out = [self.first_delay]
        while out[-1] < self.max_delay:
            out.append(min(out[-1] * 2, self.max_delay))
        return out


@dataclass(frozen=True)
class Session:
    """How the session that just failed went."""

    #: It got through the handshake (Welcome and the manifest).
    connected: bool
    #: It finished at least one round (scan, plan, send, acknowledgements).
    round_done: bool = False
    #: Seconds it lasted.
    seconds: float = 0.0


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` seconds. ``attempt``: failed attempts since
    the last session that finished a round (1 for the first); ``error``: why
    this one ended."""

    delay: float
    attempt: int
    error: DevstackError

    @property
    def live(self) -> str:
        """The live line: ``reconnecting (attempt 3, next in 1.6 s)``."""
        return f"reconnecting (attempt {self.attempt}, next in {self.delay:.1f} s)"

    @property
    def line(self) -> str:
        """One plain line: why it dropped, and what happens next."""
        return f"disconnected ({self.error}); {self.live}"

    @property
    def legacy_line(self) -> str:
        """The line for a reporter that shows no live line."""
        return f"disconnected ({self.error}); retrying in {self.delay:.1f}s"


@dataclass(frozen=True)
class GiveUp:
    """Stop: ``error`` is the one line to show."""

    error: DevstackError


@dataclass
class Retrier:
    """The retry state of one ``connect`` run; :meth:`decide` after each
    failed session."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: ``--once``: attempts are bounded.
    once: bool = False
    #: Some session of this run got through its handshake.
    ever_connected: bool = False
    #: Failed attempts in all (bounded under ``--once``).
    attempts: int = 0
    #: Failed attempts since the last session that finished a round.
    streak: int = 0
    #: Unexplained sidecar failures in a row.
    failures: int = 0
    delay: float = -1.0

    def __post_init__(self) -> None:
        if self.delay < 0:
            self.delay = self.policy.first_delay

    def decide(self, error: DevstackError, session: Session) -> Retry | GiveUp:
        """What to do after ``session`` failed with ``error``."""
        policy = self.policy
        kind = failure_of(error)
        if kind is Failure.PERMANENT:
            return GiveUp(error)
        self.ever_connected = self.ever_connected or session.connected
        if session.round_done:
            self.delay = policy.first_delay
            self.streak = 0
        self.attempts += 1
        self.streak += 1
        if kind is Failure.PEER_FAILED:
            healthy = session.seconds >= policy.healthy_seconds
            self.failures = 1 if healthy else self.failures + 1
            if self.failures >= policy.failure_attempts:
                return GiveUp(
                    PermanentError(f"{error} (giving up after {self.failures} failures in a row)")
                )
        else:
            self.failures = 0
            if not self.ever_connected:
                # Before any session got through, an unreachable sidecar is
                # a bad address (or none runs there), not a flaky network.
                return GiveUp(error if isinstance(error, UnreachableError) else _unreachable(error))
        if self.once and self.attempts >= policy.once_attempts:
            return GiveUp(UnreachableError(f"{error} (giving up after {self.attempts} attempts)"))
        retry = Retry(self.delay, self.streak, error)
        self.delay = min(self.delay * 2, policy.max_delay)
        return retry


def _unreachable(error: DevstackError) -> UnreachableError:
    return UnreachableError(str(error))


def dial_error(kind: Failure, address: str, *, detail: str = "", timeout: float = 0.0) -> DialError:
    """The one line for a connection that could not be made: what happened,
    then the fix."""
    where = f"cannot reach the sidecar at {address}"
    if kind is Failure.CONNECTION_REFUSED:
        return RefusedConnectionError(
            f"{where}: connection refused, nothing listens there "
            "(start the sidecar, or fix the host or port in --to)"
        )
    if kind is Failure.UNKNOWN_HOST:
        host = address.rpartition(":")[0].strip("[]") or address
        return UnknownHostError(
            f"{where}: unknown host {host!r}{f' ({detail})' if detail else ''}: "
            "check the host in --to"
        )
    if kind is Failure.NO_ANSWER:
        why = detail or "a firewall, a VPN that is down, or the wrong port in --to?"
        return NoAnswerError(f"{where}: no answer in {timeout:g} s ({why})")
    return DialError(f"{where}{f': {detail}' if detail else ''}")
