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
