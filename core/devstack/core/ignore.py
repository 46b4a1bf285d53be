"""Ignore rules: which paths of a source tree never sync (pure, plus reading
ignore files).

Rules come, in order of increasing precedence, from the built-in defaults,
``.gitignore`` files (the root's and nested ones, scoped to their folder) and
``.devstackignore`` at the root. Matching is gitignore semantics through the
``pathspec`` library; a later ``!pattern`` re-includes a path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

#: What users expect never to sync: VCS metadata, caches, editor droppings,
#: local virtualenvs and dependency folders built for the laptop's platform.
DEFAULT_PATTERNS: tuple[str, ...] = (
    ".git/",
    ".hg/",
    ".svn/",
    ".devstack/",
    "__pycache__/",
    "*.py[cod]",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    ".venv/",
    "venv/",
    "node_modules/",
    ".DS_Store",
    "Thumbs.db",
    ".idea/",
    "*.swp",
    "*.swx",
    "*~",
    ".#*",
    "#*#",
    "4913",
)

IGNORE_FILE = ".devstackignore"


def _scoped(patterns: Iterable[str], folder: str) -> list[str]:
    """Rewrite a nested .gitignore's patterns so they apply below ``folder``."""
    out: list[str] = []
    for raw in patterns:
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        neg = line.startswith("!")
        body = line[1:] if neg else line
        anchored = "/" in body.rstrip("/")
        body = body.lstrip("/")
        scoped = f"/{folder}/{body}" if anchored else f"/{folder}/**/{body}"
        out.append(("!" if neg else "") + scoped)
    return out


_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")


@dataclass(frozen=True)
class IgnoreRules:
    """Compiled ignore rules; ``patterns`` is the full ordered list.

    Matching goes through ``pathspec``; one combined regex of every pattern
    answers "no pattern matches" first, which is the common case, so a scan
    of 100,000 paths stays cheap.
    """

    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    _spec: pathspec.GitIgnoreSpec = field(init=False, repr=False, compare=False)
    _any: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)
        object.__setattr__(self, "_spec", spec)
        sources: list[str] = []
        for p in spec.patterns:
            regex = getattr(p, "regex", None)
            if regex is not None:
                sources.append("(?:" + _NAMED_GROUP.sub("(", regex.pattern) + ")")
        try:
            combined = re.compile("|".join(sources)) if sources else None
        except re.error:  # pragma: no cover - pathspec changed its regex dialect
            combined = None
        object.__setattr__(self, "_any", combined)

    def ignored(self, path: str, *, is_dir: bool = False) -> bool:
        """Whether a '/'-separated relative path is ignored."""
        candidate = path + "/" if is_dir else path
        if self._any is not None and self._any.match(candidate) is None:
            return False
        return bool(self._spec.match_file(candidate))

    def nested(self, folder: str, lines: Sequence[str]) -> IgnoreRules:
        """These rules plus a ``.gitignore`` found in ``folder``, scoped to it."""
        extra = _scoped(lines, folder)
        return IgnoreRules((*self.patterns, *extra)) if extra else self

    @classmethod
    def from_patterns(cls, patterns: Sequence[str], *, defaults: bool = True) -> IgnoreRules:
        given = tuple(patterns)
        if not defaults:
            return cls(given)
        # A client sends its full list, defaults first. The defaults are all
        # plain (never "!") patterns, so repeating them right after the
        # defaults changes no answer; it only doubles the cost of each match.
        known = set(DEFAULT_PATTERNS)
        skip = 0
        while skip < len(given) and given[skip] in known:
            skip += 1
        return cls((*DEFAULT_PATTERNS, *given[skip:]))


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return []


def load(root: Path, *, extra: Sequence[str] = ()) -> IgnoreRules:
    """The rules at the root of a tree: defaults, ``root/.gitignore``,
    ``root/.devstackignore`` and ``extra``. Nested ``.gitignore`` files are
    added by the scanner as it enters their folders (see ``for_folder``)."""
    patterns = [*DEFAULT_PATTERNS, *_read_lines(root / ".gitignore")]
    patterns += _read_lines(root / IGNORE_FILE)
    patterns += extra
    return IgnoreRules(tuple(p for p in patterns if p.strip() and not p.startswith("#")))


def for_folder(root: Path, rules: IgnoreRules, folder: str) -> IgnoreRules:
    """``rules`` extended with the nested .gitignore of every folder from the
    root down to ``folder`` (exclusive of the root's own)."""
    if not folder:
        return rules
    parts = folder.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        lines = _read_lines(root / sub / ".gitignore")
        if lines:
            rules = rules.nested(sub, lines)
    return rules


def is_ignore_file(path: str) -> bool:
    """Whether changing this file changes the rules (forces a full rescan)."""
    name = path.rsplit("/", 1)[-1]
    return name in (".gitignore", IGNORE_FILE)
