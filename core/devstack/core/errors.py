"""devstack's own error vocabulary.

Every failure a person can see is one of these. Library errors are wrapped
with ``raise ... from e`` so the cause stays in the traceback, while the CLI
edge prints ``str(error)`` as one clear line.

``TemporaryError`` means "try again later" (a dropped connection, a 5xx);
``PermanentError`` means "this will never work" (a bad token, a bad spec).
"""

from __future__ import annotations


class DevstackError(Exception):
    """Base class of every devstack error."""

    #: A stable, machine-readable reason (used in events and exit codes).
    reason: str = "error"


class TemporaryError(DevstackError):
    """Retrying later may succeed. ``delay`` is a hint in seconds, if known."""

    reason = "temporary"

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(DevstackError):
    """Retrying will not help; a person must change something."""

    reason = "permanent"


class ConfigError(PermanentError):
    """A bad command-line option, config file or spec."""

    reason = "bad-config"


class AuthError(PermanentError):
    """The peer refused our credentials, or we refused theirs."""

    reason = "unauthenticated"


class UnsafePathError(PermanentError):
    """A path that would leave the workspace or is invalid on this platform."""

    reason = "unsafe-path"


class ProtocolError(PermanentError):
    """A frame that breaks the sync protocol."""

    reason = "bad-frame"


class StreamError(ProtocolError):
    """A session's compressed stream cannot go on (a corrupt piece, one
    that inflates past its limit): the whole session ends, never one op,
    since every later piece depends on this one."""


class UnreachableError(TemporaryError):
    """The peer could not be reached."""

    reason = "unreachable"


class WorkspaceIOError(TemporaryError):
    """The sidecar's disk refused an operation (no free descriptors, a full
    disk, a file size limit). The batch was discarded; retrying may work."""

    reason = "io-error"

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class PeerFailedError(TemporaryError):
    """The peer failed without saying why (gRPC ``INTERNAL`` or ``UNKNOWN``:
    a bug or a crash on its side). Retrying may help, but only a few times."""

    reason = "peer-failed"


class StaleViewError(TemporaryError):
    """The client no longer knows what the workspace holds (an Ack too large
    to list every problem): it reconnects and reads the manifest again."""

    reason = "stale-view"
