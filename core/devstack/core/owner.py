"""The owner: the one rule for a valid owner, and how it is found (pure, plus a
thin shell that reads the environment and git).

An owner is the engineer a personal copy belongs to, and their routing key.
Every command, the agent, the charts (``helm/devstack-lib/values.schema.json``,
checked against this module by ``tests/core/test_owner.py``) and provisioning
use :func:`check_owner`; nothing else decides what an owner may be.

**The rule**: 1 to :data:`MAX_LENGTH` (20) lowercase letters, digits and single
``-`` between them (no ``--``, no ``-`` at either end). The limit comes from
where an owner ends up:

- the label value ``devstack.dev/owner``: at most 63;
- the copy's name ``<service>--<owner>``, its Helm release and the prefix of
  every object the library chart adds (``devstack-lib.base``, cut at 40):
  at most 40, so the owner has 37 minus the service's length;
- the preview host ``<service>--<owner>.<domain>``: a DNS label, at most 63;
- AWS names ``<owner>-<name>`` (S3 the tightest: 63, names of 3 or more): 59.

The copy's name is the binding one, and it is shared with the service's name.
20 leaves every service name of up to 18 characters a copy for every owner;
:func:`copy_name` checks a longer pair. The separator ``--`` stays
unambiguous because an owner never contains it. The characters are those of
a DNS label, which fit a label value, an S3 bucket and every other AWS name.

**Resolution** (:func:`resolve_owner`): ``DEVSTACK_OWNER`` if set (it must be
valid: a person chose it), else the local part of git's ``user.email``, else
``$USER``, each normalised (:func:`normalise`: lowercased, every run of other
characters turned into one ``-``); the first valid one wins.
"""

from __future__ import annotations

import getpass
import re
import subprocess
from collections.abc import Mapping
from typing import Final

from devstack.core.errors import ConfigError
from devstack.core.routing import Owner

#: At most this many characters (see the module docstring for why).
MAX_LENGTH: Final = 20
#: The characters and their order, without anchors: the charts' schema uses
#: ``^(PATTERN)?$`` (empty is the baseline there).
PATTERN: Final = "[a-z0-9]+(-[a-z0-9]+)*"
OWNER_RE: Final = re.compile(f"^{PATTERN}$")
#: ``<service>--<owner>`` is at most this long: the library chart's object prefix.
MAX_COPY_NAME: Final = 40
COPY_SEPARATOR: Final = "--"

RULE: Final = (
    f"1-{MAX_LENGTH} lowercase letters, digits and single '-' between them "
    "(e.g. alice or alice-smith)"
)


class OwnerError(ConfigError):
    """No valid owner: the message says which sources were tried and the fix."""

    reason = "bad-owner"


def check_owner(value: str, *, baseline_ok: bool = False) -> str | None:
    """What is wrong with ``value`` as an owner, or None. ``baseline_ok`` lets
    the empty string through (it means "the baseline" where an owner is optional)."""
    if value == "" and baseline_ok:
        return None
    if len(value) > MAX_LENGTH:
        return f"is {len(value)} characters; an owner is {RULE}"
    if not OWNER_RE.match(value):
        return f"must be {RULE}"
    return None


def validate_owner(value: str, *, source: str = "owner") -> Owner:
    """``value`` as an :data:`Owner`, or :class:`OwnerError` naming ``source``."""
    problem = check_owner(value)
    if problem is not None:
        raise OwnerError(f"{source} {value!r} {problem}")
    return Owner(value)


_OTHER = re.compile(r"[^a-z0-9]+")


def normalise(raw: str) -> str:
    """``raw`` made into owner characters: ``"Alice.Smith"`` -> ``"alice-smith"``.
    The result may still be invalid (empty, or too long)."""
    return _OTHER.sub("-", raw.strip().lower()).strip("-")


def email_local_part(email: str) -> str:
    """``alice.smith`` of ``Alice.Smith+dev@example.com`` (a ``+tag`` is dropped)."""
    local = email.strip().rpartition("@")[0] if "@" in email else email.strip()
    return local.partition("+")[0]


def resolve_owner(*, devstack_owner: str | None, git_email: str | None, user: str | None) -> Owner:
    """The owner from, in order, ``DEVSTACK_OWNER``, the local part of git's
    ``user.email`` and ``$USER``, each normalised; the first valid one wins.
    An explicit ``DEVSTACK_OWNER`` that is not valid is an error (no fallback).
    Raises :class:`OwnerError` with every candidate tried and the fix."""
    if devstack_owner is not None and devstack_owner.strip():
        candidate = normalise(devstack_owner)
        problem = check_owner(candidate)
        if problem is not None:
            raise OwnerError(
                f"DEVSTACK_OWNER={devstack_owner!r} gives owner {candidate!r}, which {problem}; "
                "set DEVSTACK_OWNER to a valid owner"
            )
        return Owner(candidate)
    tried: list[str] = []
    for source, raw in (
        ("git user.email", email_local_part(git_email) if git_email else None),
        ("$USER", user),
    ):
        if raw is None or not raw.strip():
            tried.append(f"{source} is not set")
            continue
        candidate = normalise(raw)
        problem = check_owner(candidate)
        if problem is None:
            return Owner(candidate)
        tried.append(f"{source} gives {candidate!r}, which {problem}")
    raise OwnerError(
        f"no owner: DEVSTACK_OWNER is not set, {'; '.join(tried)}; set DEVSTACK_OWNER to {RULE}"
    )


def copy_name(service: str, owner: str) -> str:
    """``<service>--<owner>``, the name of ``owner``'s copy of ``service``, or
    :class:`OwnerError` when it is longer than the library chart's object
    prefix (:data:`MAX_COPY_NAME`)."""
    name = f"{service}{COPY_SEPARATOR}{owner}"
    if len(name) > MAX_COPY_NAME:
        raise OwnerError(
            f"the copy name {name!r} is {len(name)} characters; the service's name and "
            f"the owner together may have {MAX_COPY_NAME - len(COPY_SEPARATOR)} "
            "(shorten the release name or set DEVSTACK_OWNER to a shorter owner)"
        )
    return name


# ---------------------------------------------------------------- the shell


def git_user_email() -> str | None:
    """``git config user.email``, or None when git or the setting is missing."""
    try:
        done = subprocess.run(
            ["git", "config", "--get", "user.email"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


def owner_from_environment(environ: Mapping[str, str]) -> Owner:
    """:func:`resolve_owner` fed from ``environ`` and (when ``DEVSTACK_OWNER``
    is not set) git."""
    explicit = environ.get("DEVSTACK_OWNER")
    return resolve_owner(
        devstack_owner=explicit,
        git_email=None if explicit and explicit.strip() else git_user_email(),
        user=environ.get("USER") or _login_name(),
    )


def _login_name() -> str | None:
    """The login name when ``$USER`` is not set (a container's root, say)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None
