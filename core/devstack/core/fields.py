"""How devstack names a place in a document and a value's kind, in its
error messages (pure): one home for the provisioning spec and the Helmfile
reader, so both say ``devstack.aws.queues[0].name`` and ``a mapping`` alike."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def field_path(parts: Iterable[Any], prefix: str = "") -> str:
    """``prefix`` then each part: ``.name``, ``[0]`` for an index, and
    ``["odd key"]`` for a key that is not a plain name."""
    out = prefix
    for p in parts:
        if isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        elif _NAME.match(str(p)):
            out += f".{p}" if out else str(p)
        else:
            out += f"[{json.dumps(p)}]"
    return out


def json_kind(value: Any) -> str:
    """A value's kind in JSON's words: ``a mapping``, ``a list``, ``a string``..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__
