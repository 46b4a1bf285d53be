import pytest

from devstack.core.errors import UnsafePathError
from devstack.core.paths import check_link_target, check_relpath


@pytest.mark.parametrize(
    "path",
    ["a", "a/b.py", "dir with space/ünïcödé.txt", "a/.hidden", "..a", "a..", ".devstackx/y"],
)
def test_safe_paths_pass(path: str) -> None:
    assert check_relpath(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "'//'"),
        ("a/", "'//'"),
        (".", "'.'"),
        ("a\x00b", "NUL"),
        ("x" * 256, "longer than 255"),
        (".devstack/ancestors.json", "reserved"),
        (".devstack", "reserved"),
    ],
)
def test_unsafe_paths_rejected_with_reason(path: str, why: str) -> None:
    with pytest.raises(UnsafePathError, match=why):
        check_relpath(path)


@pytest.mark.parametrize(
    ("path", "target"),
    [("link", "a/b"), ("a/link", "../b"), ("a/b/link", "../../c"), ("l", "x/../y")],
)
def test_links_inside_workspace_pass(path: str, target: str) -> None:
    assert check_link_target(path, target) == target


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("link", "/etc/passwd"),
        ("link", ".."),
        ("link", "../outside"),
        ("a/link", "../../outside"),
        ("a/link", "b/../../../x"),
        ("link", ".devstack/ancestors.json"),
        ("link", ""),
    ],
)
def test_links_leaving_workspace_rejected(path: str, target: str) -> None:
    with pytest.raises(UnsafePathError):
        check_link_target(path, target)
