"""Names, one home for them (pure, no I/O).

- the physical AWS name of a declared resource for an owner (the baseline keeps
  the declared name; ``alice`` gets ``alice-<name>``, or ``/alice/<path>`` for
  an SSM parameter path);
- the environment variable names of the outputs, which never contain the owner,
  so the app reads the same variables whoever runs it;
- the ownership tags that say which release and owner a resource belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, NewType

from devstack.core import owner as owner_rule

#: The declared name of a resource in the spec (``jobs``).
DeclaredName = NewType("DeclaredName", str)
#: The name the resource has in AWS (``alice-jobs``).
PhysicalName = NewType("PhysicalName", str)

#: Tag keys recording what belongs to which release and owner.
TAG_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
TAG_RELEASE: Final = "devstack.dev/release"
TAG_OWNER: Final = "devstack.dev/owner"
MANAGED_BY: Final = "devstack"

#: The one owner rule lives in devstack.core.owner; kept here for old imports.
OWNER_RE: Final = owner_rule.OWNER_RE
RELEASE_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,51}[a-z0-9])?$")

#: The default release name when none is given (a run from the laptop).
DEFAULT_RELEASE: Final = "local"

FIFO_SUFFIX: Final = ".fifo"
DLQ_SUFFIX: Final = "-dlq"


def check_owner(owner: str) -> str | None:
    """A problem with ``owner``, or None. Empty means the baseline. The rule is
    :func:`devstack.core.owner.check_owner`'s."""
    return owner_rule.check_owner(owner, baseline_ok=True)


def check_release(release: str) -> str | None:
    """A problem with ``release`` (a Helm release name), or None."""
    if RELEASE_RE.match(release):
        return None
    return (
        "must be 1-53 lowercase letters, digits, - and ., "
        "starting and ending with a letter or digit"
    )


def physical(declared: str, owner: str, *, kind: str = "", fifo: bool = False) -> PhysicalName:
    """The AWS name of ``declared`` for ``owner``.

    >>> physical("jobs", "alice", kind="sqs", fifo=True)
    'alice-jobs.fifo'
    >>> physical("/app/flag", "alice", kind="parameters")
    '/alice/app/flag'
    """
    if kind == "parameters" and declared.startswith("/"):
        name = f"/{owner}{declared}" if owner else declared
    else:
        name = f"{owner}-{declared}" if owner else declared
    if fifo and not name.endswith(FIFO_SUFFIX):
        name += FIFO_SUFFIX
    return PhysicalName(name)


def dead_letter_name(queue: str) -> str:
    """The declared name of the dead-letter queue created for ``queue``."""
    return f"{queue}{DLQ_SUFFIX}"


_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def env_token(declared: str) -> str:
    """The part of an environment variable name that comes from a declared name.

    >>> env_token("/app/feature-flag")
    'APP_FEATURE_FLAG'
    """
    return _NON_ALNUM.sub("_", declared).strip("_").upper()


def env_name(kind_token: str, declared: str, what: str) -> str:
    """``DEVSTACK_<KIND>_<NAME>_<WHAT>``, e.g. ``DEVSTACK_SQS_JOBS_URL``."""
    return f"DEVSTACK_{kind_token}_{env_token(declared)}_{what}"


def ownership_tags(release: str, owner: str) -> dict[str, str]:
    """The tags every created resource carries. The baseline has no owner tag."""
    tags = {TAG_MANAGED_BY: MANAGED_BY, TAG_RELEASE: release}
    if owner:
        tags[TAG_OWNER] = owner
    return tags


def belongs_to(tags: Mapping[str, str], release: str, owner: str) -> bool:
    """Whether a resource with ``tags`` was created by this release and owner."""
    return (
        tags.get(TAG_MANAGED_BY) == MANAGED_BY
        and tags.get(TAG_RELEASE) == release
        and tags.get(TAG_OWNER, "") == owner
    )


def describe_owner(tags: Mapping[str, str]) -> str:
    """Who a resource belongs to, for a person: ``release shop, owner alice``."""
    if tags.get(TAG_MANAGED_BY) != MANAGED_BY:
        return "not managed by devstack"
    owner = tags.get(TAG_OWNER) or "baseline"
    return f"release {tags.get(TAG_RELEASE, '?')}, owner {owner}"
