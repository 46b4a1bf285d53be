"""Ignore rules: which paths of a source tree never sync (pure, plus reading
ignore files).

Rules come, in order of increasing precedence, from the built-in defaults,
``.gitignore`` files (the root's and nested ones, scoped to their folder) and
``.devstackignore`` at the root. Matching is gitignore semantics through the
``pathspec`` library; a later ``!pattern`` re-includes a path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
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
    "\\#*#",  # emacs autosaves; a bare "#" would start a comment
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

    def excludes(
        self, path: str, *, is_dir: bool = False, memo: MutableMapping[str, bool] | None = None
    ) -> bool:
        """Whether a scan under these rules leaves ``path`` out: the path is
        ignored, or a folder above it is (a scan never enters an ignored
        folder, even if a later ``!pattern`` matches something inside).
        ``memo`` caches the answers for folders across calls."""
        parent = path.rpartition("/")[0]
        if parent:
            hidden = memo.get(parent) if memo is not None else None
            if hidden is None:
                hidden = self.excludes(parent, is_dir=True, memo=memo)
                if memo is not None:
                    memo[parent] = hidden
            if hidden:
                return True
        return self.ignored(path, is_dir=is_dir)

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
    lines = [*_read_lines(root / ".gitignore"), *_read_lines(root / IGNORE_FILE), *extra]
    given = (p for p in lines if p.strip() and not p.startswith("#"))
    return IgnoreRules((*DEFAULT_PATTERNS, *given))


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


def with_nested(rules: IgnoreRules, gitignores: Mapping[str, Sequence[str]]) -> IgnoreRules:
    """``rules`` plus the nested ``.gitignore`` of each folder in
    ``gitignores`` (folder -> its lines), scoped to that folder, parents
    first: one ordered pattern list that answers as a scan does folder by
    folder, and that ``IgnoreRules.from_patterns`` reads back unchanged."""
    extra: list[str] = []
    for folder in sorted(gitignores):
        if folder:
            extra.extend(_scoped(gitignores[folder], folder))
    return IgnoreRules((*rules.patterns, *extra)) if extra else rules


def read_nested(root: Path, folders: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The ``.gitignore`` lines of each of these folders that has one (I/O)."""
    found: dict[str, tuple[str, ...]] = {}
    for folder in folders:
        lines = _read_lines(root / folder / ".gitignore")
        if lines:
            found[folder] = tuple(lines)
    return found


def is_ignore_file(path: str) -> bool:
    """Whether changing this file changes the rules (forces a full rescan)."""
    name = path.rsplit("/", 1)[-1]
    return name in (".gitignore", IGNORE_FILE)
