from pathlib import Path

import pytest

from devstack.core import ignore
from devstack.core.ignore import IgnoreRules


@pytest.mark.parametrize(
    ("path", "is_dir", "expected"),
    [
        (".git", True, True),
        ("sub/.git", True, True),
        ("__pycache__", True, True),
        ("pkg/mod.pyc", False, True),
        ("node_modules", True, True),
        (".venv", True, True),
        ("notes.txt~", False, True),
        (".#lock", False, True),
        ("#notes.txt#", False, True),
        ("src/#app.py#", False, True),
        ("src/app.py", False, False),
        ("gitlike", False, False),
        ("requirements.txt", False, False),
    ],
)
def test_defaults(path: str, is_dir: bool, expected: bool) -> None:
    assert IgnoreRules().ignored(path, is_dir=is_dir) is expected


def test_gitignore_devstackignore_and_negation(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.log\nbuild/\n")
    (tmp_path / ".devstackignore").write_text("secret.env\n!keep.log\n")
    rules = ignore.load(tmp_path)
    assert rules.ignored("debug.log")
    assert rules.ignored("a/b/debug.log")
    assert not rules.ignored("keep.log")
    assert rules.ignored("build", is_dir=True)
    assert rules.ignored("secret.env")
    assert not rules.ignored("main.py")


def test_user_can_reinclude_a_default(tmp_path: Path) -> None:
    (tmp_path / ".devstackignore").write_text("!node_modules/\n")
    assert not ignore.load(tmp_path).ignored("node_modules", is_dir=True)


def test_nested_gitignore_is_scoped_to_its_folder(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / ".gitignore").write_text("dist/\n/local.txt\n")
    rules = ignore.for_folder(tmp_path, ignore.load(tmp_path), "web")
    assert rules.ignored("web/dist", is_dir=True)
    assert rules.ignored("web/sub/dist", is_dir=True)
    assert rules.ignored("web/local.txt")
    assert not rules.ignored("web/sub/local.txt")
    assert not rules.ignored("dist", is_dir=True)
    assert not rules.ignored("local.txt")


def test_ignore_files_are_recognised() -> None:
    assert ignore.is_ignore_file("a/.gitignore")
    assert ignore.is_ignore_file(".devstackignore")
    assert not ignore.is_ignore_file("gitignore.py")


def test_from_patterns_drops_only_the_leading_copy_of_the_defaults() -> None:
    sent = [*ignore.DEFAULT_PATTERNS, "*.log", "!keep.log"]
    rules = IgnoreRules.from_patterns(sent)
    # The client's list starts with the defaults: they are not doubled.
    assert rules.patterns == (*ignore.DEFAULT_PATTERNS, "*.log", "!keep.log")
    # A list without them still gets them, first.
    assert IgnoreRules.from_patterns(["*.log"]).patterns == (*ignore.DEFAULT_PATTERNS, "*.log")
    # A default repeated after a negation changes answers: it stays.
    later = ["!node_modules/", "node_modules/"]
    assert IgnoreRules.from_patterns(later).patterns == (*ignore.DEFAULT_PATTERNS, *later)
    assert (
        IgnoreRules.from_patterns(["!node_modules/"]).ignored("node_modules", is_dir=True) is False
    )
    assert IgnoreRules.from_patterns(later).ignored("node_modules", is_dir=True) is True
    # defaults=False takes the list as it is.
    assert IgnoreRules.from_patterns(["a", "a"], defaults=False).patterns == ("a", "a")


@pytest.mark.parametrize(
    ("path", "is_dir"),
    [
        ("web/dist", True),
        ("web/dist/bundle.js", False),
        ("web/sub/dist/x.js", False),
        ("web/local.txt", False),
        ("api/cache", True),
        ("api/cache/a/b.bin", False),
        ("web/app.js", False),
        ("web/sub/local.txt", False),
        ("dist/x.js", False),
        ("api/web/dist/x.js", False),
        ("api/main.py", False),
    ],
)
def test_nested_rules_in_one_list_answer_like_the_scan(
    tmp_path: Path, path: str, is_dir: bool
) -> None:
    (tmp_path / "web" / "sub").mkdir(parents=True)
    (tmp_path / "api").mkdir()
    (tmp_path / "web" / ".gitignore").write_text("dist/\n/local.txt\n")
    (tmp_path / "api" / ".gitignore").write_text("cache/\n")
    root = ignore.load(tmp_path)
    nested = ignore.read_nested(tmp_path, ["web", "web/sub", "api"])
    assert set(nested) == {"web", "api"}
    flat = ignore.with_nested(root, nested)
    folder = path.rpartition("/")[0]
    scan_rules = ignore.for_folder(tmp_path, root, folder)
    assert flat.excludes(path, is_dir=is_dir) is scan_rules.excludes(path, is_dir=is_dir)
    # The sidecar reads the list back as it was sent.
    sent = IgnoreRules.from_patterns(list(flat.patterns))
    assert sent.patterns == flat.patterns
    assert sent.excludes(path, is_dir=is_dir) is flat.excludes(path, is_dir=is_dir)


def test_excludes_sees_through_an_ignored_folder() -> None:
    rules = IgnoreRules.from_patterns(["build/", "!build/keep.txt"])
    memo: dict[str, bool] = {}
    # gitignore: a file inside an excluded folder cannot be re-included; the
    # scan never enters build/, so build/keep.txt is never on the laptop.
    assert rules.ignored("build/keep.txt") is False
    assert rules.excludes("build/keep.txt", memo=memo) is True
    assert memo == {"build": True}
    assert rules.excludes("src/keep.txt", memo=memo) is False
    assert ignore.with_nested(rules, {}) is rules


#: Patterns of every shape the prefilter sorts: literal names, suffix and
#: prefix globs, other name globs, folder-only and negated forms, anchored
#: and "/" patterns, "**", character classes that could match "/".
PREFILTER_PATTERNS = [
    "*.log",
    "!keep.log",
    "build/",
    "/dist",
    "docs/*.md",
    "foo[!x]bar",
    "a?c",
    "[a-c]x",
    "**/deep",
    "x/**/y",
    "!node_modules/",
    "lib*/",
    "\\!bang",
    "tmp[0-9]",
    "*",
    "!*.keep",
    "[+-0]z",
    "*.py[cod]",
    "!*.pyc",
    "*~/",
    ".#*",
    "x*",
    "*x/",
    "!a*",
    "*[ab]",
    "*.[ab]/",
    "ab*/",
    "!x/",
]
PREFILTER_NAMES = [
    "a", "b", "x", "y", "abc", "axc", "keep.log", "a.log", "build", "dist", "docs", "r.md",
    "foo", "bar", "fooybar", "deep", "lib", "libx", "node_modules", ".git", "!bang", "tmp5",
    "q.keep", "__pycache__", "m.pyc", "m.pyo", "4913", "+z", "ax", "xa", "x~", ".#q", "a.b",
    "ab", "abz", "1",
]  # fmt: skip


def test_the_prefilter_answers_exactly_as_pathspec() -> None:
    """``ignored`` and a walk's ``child_ignored`` agree with pathspec itself
    on every path, for a seeded sweep of rule sets (the prefilter only ever
    skips pathspec when no pattern can match)."""
    import random

    import pathspec

    rng = random.Random(7)
    for _ in range(250):
        chosen = rng.sample(PREFILTER_PATTERNS, rng.randint(0, 8))
        if rng.random() < 0.5:
            chosen = [*ignore.DEFAULT_PATTERNS, *chosen]
        rules = IgnoreRules(tuple(chosen))
        spec = pathspec.GitIgnoreSpec.from_lines(chosen)
        for _ in range(60):
            parts = [rng.choice(PREFILTER_NAMES) for _ in range(rng.randint(1, 4))]
            path = "/".join(parts)
            for is_dir in (False, True):
                want = bool(spec.match_file(path + "/" if is_dir else path))
                assert rules.ignored(path, is_dir=is_dir) is want, (chosen, path, is_dir)
                clean = rules.clean("/".join(parts[:-1]))
                got, _ = rules.child_ignored(path, parts[-1], is_dir=is_dir, clean=clean)
                assert got is want, (chosen, path, is_dir)


def test_a_walk_carries_clean_down_only_past_names_no_pattern_matched() -> None:
    rules = IgnoreRules.from_patterns(["build/", "!build/"])
    # "build/" matches the folder, "!build/" re-includes it: not ignored,
    # but everything below must be asked of pathspec.
    assert rules.child_ignored("build", "build", is_dir=True, clean=True) == (False, False)
    assert rules.child_ignored("src", "src", is_dir=True, clean=True) == (False, True)
    assert rules.clean("src/build") is False
    assert rules.clean("src/lib") is True
