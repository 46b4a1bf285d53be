"""The provisioning engine's errors, all devstack errors (no I/O).

``SpecError`` lists every problem of a bad spec, each naming its field, and is
raised before anything is created. ``ProvisionFailed`` is a failure partway
through: it says exactly what had been created or changed by then.
"""

from __future__ import annotations

from collections.abc import Sequence

from devstack.core.errors import ConfigError, DevstackError, PermanentError, TemporaryError


class SpecError(ConfigError):
    """A spec that cannot be provisioned. ``problems`` are ``field: message`` lines."""

    reason = "bad-spec"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = f"bad spec: {self.problems[0]}"
        else:
            text = "bad spec:\n  " + "\n  ".join(self.problems)
        super().__init__(text)


class AwsError(PermanentError):
    """AWS (or LocalStack, or moto) refused a call; retrying will not help."""

    reason = "aws-error"


class AwsUnavailable(TemporaryError):
    """The endpoint could not be reached or answered with a server error."""

    reason = "aws-unavailable"


class HookError(PermanentError):
    """A custom hook (a user command or a plugin) failed."""

    reason = "hook-failed"


class ProvisionFailed(DevstackError):
    """A failure partway through. ``done`` lists what was created or changed
    before ``cause`` stopped the run, one ``verb kind name`` line each."""

    reason = "partial-failure"

    def __init__(self, step: str, cause: BaseException, done: Sequence[str]) -> None:
        self.step = step
        self.cause = cause
        self.done = tuple(done)
        lines = [f"{step} failed: {cause}"]
        if self.done:
            lines.append("already done before the failure (left in place; rerun to converge):")
            lines += [f"  {d}" for d in self.done]
        else:
            lines.append("nothing had been created or changed")
        super().__init__("\n".join(lines))
