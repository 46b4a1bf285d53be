"""Helm's value merging and ``--set`` semantics, as Helmfile hands them to Helm (pure).

- values files and inline maps merge in order: maps deeply, anything else is
  replaced by the later value (Helm's ``mergeMaps``); a ``null`` removes a key;
- ``set`` names are Helm ``--set`` paths: ``a.b``, ``a\\.b`` (a dot in a key),
  ``a[0]``; a ``value`` is typed as ``--set`` types it (``true``/``false``,
  ``null``, 64-bit integers without a leading zero; anything else a string).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Key = str | int


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged onto ``base`` (neither is changed)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def without_nulls(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every ``null`` key removed (what Helm's coalescing does)."""
    return {
        k: without_nulls(v) if isinstance(v, Mapping) else v
        for k, v in values.items()
        if v is not None
    }


_INT = re.compile(r"^[+-]?[0-9]+$")


def typed(text: str) -> Any:
    """``text`` as ``helm --set`` types it."""
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if text == "0":
        return 0
    if text.startswith("0") or not _INT.match(text):
        return text
    number = int(text)
    if not -(2**63) <= number < 2**63:
        return text
    return number


def set_path(name: str) -> list[Key]:
    """The keys of a ``--set`` name: ``a.b[0].c`` -> ``['a', 'b', 0, 'c']``;
    ``ValueError`` with the reason if it is not one."""
    keys: list[Key] = []
    current = ""
    i = 0
    after_index = False
    while i < len(name):
        ch = name[i]
        if ch == "\\" and i + 1 < len(name):
            current += name[i + 1]
            i += 2
            after_index = False
            continue
        if ch == ".":
            if not current and not after_index:
                raise ValueError("has an empty key")
            if current:
                keys.append(current)
            current = ""
            after_index = False
            i += 1
            continue
        if ch == "[":
            end = name.find("]", i)
            if end < 0 or not name[i + 1 : end].isdigit():
                raise ValueError("has a list index that is not [<number>]")
            if current:
                keys.append(current)
            elif not keys:
                raise ValueError("starts with a list index")
            current = ""
            keys.append(int(name[i + 1 : end]))
            i = end + 1
            after_index = True
            if i < len(name) and name[i] not in ".[":
                raise ValueError("needs a '.' after a list index")
            continue
        if after_index:
            raise ValueError("needs a '.' after a list index")
        current += ch
        i += 1
    if current:
        keys.append(current)
    elif not after_index:
        raise ValueError("has an empty key")
    return keys


def apply_set(values: Mapping[str, Any], keys: list[Key], value: Any) -> dict[str, Any]:
    """``values`` with ``value`` at ``keys`` (lists grow with nulls, as Helm's do)."""
    out: Any = _copy(values)
    node: Any = out
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        nxt: Any = None if last else ([] if isinstance(keys[i + 1], int) else {})
        if isinstance(key, int):
            while len(node) <= key:
                node.append(None)
            if last:
                node[key] = value
            elif not isinstance(node[key], dict | list) or type(node[key]) is not type(nxt):
                node[key] = nxt
            node = node[key]
        else:
            if last:
                node[key] = value
            elif not isinstance(node.get(key), dict | list) or type(node[key]) is not type(nxt):
                node[key] = nxt
            node = node[key]
    return dict(out)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
