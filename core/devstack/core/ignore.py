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
#: A pattern body that can only ever match one whole path component (a
#: "name" pattern): no "/", no "**", no escapes of "/", and only character
#: classes of letters, digits, "_" and "." (or ranges between letters and
#: digits), none negated: nothing in it can match a "/".
_NAME_BODY = re.compile(
    r"(?:[^/\\\[\]*]|\\[^/]|\*(?!\*)|\[(?:[A-Za-z0-9_.]|[A-Za-z0-9]-[A-Za-z0-9])+\])+"
)
_GLOB_CHARS = frozenset("*?[\\")
#: pathspec's regex for a pattern without a "/": it may match at any depth.
_UNANCHORED = "^(?:.+/)?"


def _combine(regexes: Sequence[str]) -> re.Pattern[str] | None:
    if not regexes:
        return None
    try:
        return re.compile("|".join("(?:" + _NAMED_GROUP.sub("(", r) + ")" for r in regexes))
    except re.error:  # pragma: no cover - pathspec changed its regex dialect
        return re.compile("(?s:.)")  # every path goes to pathspec: slow, still exact


#: Name globs that are tested as plain suffixes or prefixes: ``*.log``,
#: ``*.py[cod]`` (one suffix per letter), ``.#*``.
_SUFFIX = re.compile(r"\*([^*?\[\]\\]*)(?:\[([A-Za-z0-9_.]+)\])?")
_PREFIX = re.compile(r"([^*?\[\]\\]+)\*")


@dataclass(frozen=True)
class _Prefilter:
    """Answers "could any pattern match this path?" cheaply and exactly; only
    a "yes" goes on to ``pathspec``, which decides.

    Patterns are split in two. A *name* pattern (``*.pyc``, ``.git/``,
    ``4913``: no "/" in it) matches a path exactly when it matches one of
    the path's components, so it is tested on single names: literal names
    in a set, ``*suffix`` and ``prefix*`` globs with ``str.endswith`` and
    ``str.startswith``, the rest in one regex over the name. Every other
    pattern (anchored, with a "/", nested ``.gitignore`` rules) is tested in
    one regex over the whole path. Each test has a variant for folder-only
    patterns (``name/``), which only folders meet.
    """

    #: Literal names, suffixes and prefixes a pattern matches (file or folder).
    names: frozenset[str]
    suffixes: tuple[str, ...]
    prefixes: tuple[str, ...]
    #: The same for folder-only patterns.
    dir_names: frozenset[str]
    dir_suffixes: tuple[str, ...]
    dir_prefixes: tuple[str, ...]
    #: The other name patterns, matched against ``name`` or ``name/``.
    name_regex: re.Pattern[str] | None
    #: Everything else, matched against the whole path (``path/`` for a folder).
    path_regex: re.Pattern[str] | None

    def name_hit(self, name: str, is_dir: bool) -> bool:
        """Whether a name pattern matches this one component (``is_dir``:
        it is a folder, or a component above the last)."""
        if name in self.names or name.endswith(self.suffixes) or name.startswith(self.prefixes):
            return True
        if is_dir and (
            name in self.dir_names
            or name.endswith(self.dir_suffixes)
            or name.startswith(self.dir_prefixes)
        ):
            return True
        r = self.name_regex
        return r is not None and r.match(name + "/" if is_dir else name) is not None

    def path_hit(self, candidate: str) -> bool:
        r = self.path_regex
        return r is not None and r.match(candidate) is not None


def _prefilter(spec: pathspec.GitIgnoreSpec) -> _Prefilter:
    names: tuple[set[str], set[str]] = (set(), set())
    suffixes: tuple[list[str], list[str]] = ([], [])
    prefixes: tuple[list[str], list[str]] = ([], [])
    name_regexes: list[str] = []
    path_regexes: list[str] = []
    for p in spec.patterns:
        regex = getattr(p, "regex", None)
        if p.include is None or regex is None:
            continue  # a comment or blank line: matches nothing
        raw = str(getattr(p, "pattern", ""))
        body = raw[1:] if raw.startswith("!") else raw
        dir_only = body.endswith("/")
        if dir_only:
            body = body[:-1]
        if not (
            regex.pattern.startswith(_UNANCHORED)
            and body == body.strip()
            and _NAME_BODY.fullmatch(body)
        ):
            path_regexes.append(regex.pattern)
        elif _GLOB_CHARS.isdisjoint(body):
            names[dir_only].add(body)
        elif m := _SUFFIX.fullmatch(body):
            stem, letters = m.group(1), m.group(2)
            suffixes[dir_only].extend([stem + c for c in letters] if letters else [stem])
        elif m := _PREFIX.fullmatch(body):
            prefixes[dir_only].append(m.group(1))
        else:
            # Tested on one name ("name" or "name/"), where the leading
            # "any folders" part can only match nothing.
            name_regexes.append("^" + regex.pattern[len(_UNANCHORED) :])
    return _Prefilter(
        frozenset(names[False]),
        tuple(suffixes[False]),
        tuple(prefixes[False]),
        frozenset(names[True]),
        tuple(suffixes[True]),
        tuple(prefixes[True]),
        _combine(name_regexes),
        _combine(path_regexes),
    )


@dataclass(frozen=True)
class IgnoreRules:
    """Compiled ignore rules; ``patterns`` is the full ordered list.

    Matching goes through ``pathspec``; a prefilter (see ``_Prefilter``)
    answers "no pattern matches" first, which is the common case, so a scan
    of 100,000 paths stays cheap.
    """

    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    _spec: pathspec.GitIgnoreSpec = field(init=False, repr=False, compare=False)
    _pre: _Prefilter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_pre", _prefilter(spec))

    def ignored(self, path: str, *, is_dir: bool = False) -> bool:
        """Whether a '/'-separated relative path is ignored."""
        candidate = path + "/" if is_dir else path
        pre = self._pre
        if not pre.path_hit(candidate):
            head, _, name = path.rpartition("/")
            if not pre.name_hit(name, is_dir) and not (
                head and any(pre.name_hit(part, True) for part in head.split("/"))
            ):
                return False
        return bool(self._spec.match_file(candidate))

    def child_ignored(self, rel: str, name: str, *, is_dir: bool, clean: bool) -> tuple[bool, bool]:
        """``ignored`` for an entry met while walking: ``name`` is the last
        component of ``rel``, and ``clean`` says that no name pattern
        matches any folder above it (true at the root). Returns (ignored,
        clean for what lies below ``rel``): a walk tests each name once
        instead of every component of every path."""
        pre = self._pre
        named = pre.name_hit(name, is_dir)
        r = pre.path_regex
        if named or not clean or (r is not None and r.match(rel + "/" if is_dir else rel)):
            return bool(self._spec.match_file(rel + "/" if is_dir else rel)), clean and not named
        return False, clean

    def clean(self, folder: str) -> bool:
        """Whether no name pattern matches any component of ``folder``: the
        ``clean`` that ``child_ignored`` takes for the entries in it."""
        pre = self._pre
        return not folder or not any(pre.name_hit(part, True) for part in folder.split("/"))

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
