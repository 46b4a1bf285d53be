from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.core.errors import UnsafePathError
from devstack.core.paths import (
    MAX_LINK_HOPS,
    _check_relpath_fully,
    check_link_target,
    check_relpath,
    folders_above,
    resolve_link,
)


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
    [
        ("link", "a/b"),
        ("a/link", "../b"),
        ("a/b/link", "../../c"),
        ("a/b/link", "./../../c/"),
        ("up", "."),
        ("a/up", ".."),
    ],
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
        ("a/link", "../.devstack"),
        ("link", ""),
        # '..' after a name: through `up -> .` it would climb out.
        ("evil", "up/../secret"),
        ("l", "x/../y"),
        ("a/b/l", "../x/../y"),
    ],
)
def test_links_leaving_workspace_rejected(path: str, target: str) -> None:
    with pytest.raises(UnsafePathError):
        check_link_target(path, target)


def _disk(links: dict[str, str]) -> Callable[[str], str | None]:
    return links.get


@pytest.mark.parametrize(
    ("name", "links", "path", "target", "end"),
    [
        ("plain", {}, "a/l", "../b/c", "b/c"),
        ("the root", {}, "up", ".", ""),
        ("through a link", {"d": "real"}, "l", "d/f", "real/f"),
        ("chained", {"a": "b", "b": "c/d"}, "l", "a/f", "c/d/f"),
        ("link in a folder", {"x/y": "../z"}, "l", "x/y/f", "z/f"),
        ("a loop is not an escape", {"a": "b", "b": "a"}, "l", "a", None),
    ],
)
def test_resolve_link_inside(
    name: str, links: dict[str, str], path: str, target: str, end: str | None
) -> None:
    assert resolve_link(path, target, _disk(links)) == end


@pytest.mark.parametrize(
    ("name", "links", "path", "target"),
    [
        ("'..' past the root", {}, "l", ".."),
        ("'..' after a link to the root", {"up": "."}, "evil", "up/../secret"),
        ("a link to a link that escapes", {"out": "../secret"}, "l", "out"),
        ("chained, escaping at the end", {"a": "b", "b": "c/.."}, "l", "a/../x"),
        ("an absolute link on the way", {"etc": "/etc"}, "l", "etc/passwd"),
        ("into the sidecar's state", {"s": ".devstack"}, "l", "s/ancestors.json"),
        ("deep link climbing too far", {"a/b/c": "../../.."}, "l", "a/b/c/x"),
    ],
)
def test_resolve_link_escapes(name: str, links: dict[str, str], path: str, target: str) -> None:
    with pytest.raises(UnsafePathError):
        resolve_link(path, target, _disk(links))


def test_resolve_link_follows_at_most_the_kernel_limit() -> None:
    chain = {f"l{i}": f"l{i + 1}" for i in range(MAX_LINK_HOPS + 5)}
    assert resolve_link("x", "l0", _disk(chain)) is None


@pytest.mark.parametrize(
    ("path", "folders"),
    [("top", []), ("a/b", ["a"]), ("a/b/c", ["a/b", "a"]), ("a-b/c/d.txt", ["a-b/c", "a-b"])],
)
def test_folders_above_a_path_innermost_first(path: str, folders: list[str]) -> None:
    assert list(folders_above(path)) == folders


def _verdict(check: Callable[[str], str], path: str) -> str:
    try:
        return "ok: " + check(path)
    except UnsafePathError as e:
        return f"refused: {e}"


_SEGMENT = st.one_of(
    st.sampled_from(["", ".", "..", ".devstack", "a", "x" * 255, "x" * 256, "é" * 128]),
    st.text(alphabet=st.sampled_from("ab./\x00é"), max_size=8),
)


@given(st.lists(_SEGMENT, min_size=1, max_size=20).map("/".join))
def test_the_quick_check_of_a_path_says_what_the_full_one_says(path: str) -> None:
    assert _verdict(check_relpath, path) == _verdict(_check_relpath_fully, path)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/".join(["x" * 200] * 20) + "/" + "z" * 76, True),  # 4,096 bytes: the longest
        ("/".join(["x" * 200] * 20) + "/" + "z" * 77, False),
        ("/".join(["x" * 100] * 3) + "/" + "y" * 256, False),
        ("/".join(["é" * 127] * 2), True),  # 254 bytes a name
        ("/".join(["é" * 128] * 2), False),  # 256
    ],
)
def test_long_paths_get_the_same_verdict_both_ways(path: str, ok: bool) -> None:
    verdict = _verdict(check_relpath, path)
    assert verdict.startswith("ok") is ok
    assert verdict == _verdict(_check_relpath_fully, path)
