"""The shared project context (devstack.cli.project): kubectl's order for the
kubeconfig, context and namespace (pure, from tables), finding the
Helmfile, and one clear line for each bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from devstack.cli.project import (
    add_project_arguments,
    find_helmfile,
    load_project,
    resolve_kube,
)
from devstack.core.errors import ConfigError


def kubeconfig(current: str | None, contexts: dict[str, str | None]) -> str:
    doc: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Config",
        "contexts": [
            {
                "name": n,
                "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})},
            }
            for n, ns in contexts.items()
        ],
    }
    if current:
        doc["current-context"] = current
    return yaml.safe_dump(doc)


FILES = {
    "/home/me/.kube/config": kubeconfig("home", {"home": "home-ns"}),
    "/a": kubeconfig("ctx-a", {"ctx-a": "ns-a", "shared": "from-a"}),
    "/b": kubeconfig("ctx-b", {"ctx-b": None, "shared": "from-b"}),
    "/empty": "",
    "/bad": "contexts: [",
}


def resolve(**kw: object) -> tuple[tuple[str, ...], str | None, str]:
    args: dict[str, object] = {
        "kubeconfig": None,
        "context": None,
        "namespace": None,
        "environ": {},
        "home": "/home/me",
        "read": FILES.get,
    }
    args.update(kw)
    t = resolve_kube(**args)  # type: ignore[arg-type]
    return t.files, t.context, t.namespace


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({}, (("/home/me/.kube/config",), "home", "home-ns")),
        ({"kubeconfig": "/b"}, (("/b",), "ctx-b", "default")),
        ({"environ": {"KUBECONFIG": "/a:/b"}}, (("/a", "/b"), "ctx-a", "ns-a")),
        # the first file's current-context wins; the second's fills in
        ({"environ": {"KUBECONFIG": "/missing:/b:/a"}},
         (("/missing", "/b", "/a"), "ctx-b", "default")),
        # a context defined in both files: the first file's wins
        ({"environ": {"KUBECONFIG": "/b:/a"}, "context": "shared"},
         (("/b", "/a"), "shared", "from-b")),
        ({"kubeconfig": "/a", "environ": {"KUBECONFIG": "/b"}}, (("/a",), "ctx-a", "ns-a")),
        ({"kubeconfig": "/a", "namespace": "mine"}, (("/a",), "ctx-a", "mine")),
        ({"environ": {"KUBECONFIG": "/empty"}}, (("/empty",), None, "default")),
        ({"home": "/nowhere"}, (("/nowhere/.kube/config",), None, "default")),
    ],
)  # fmt: skip
def test_kubectls_order(
    kw: dict[str, object], want: tuple[tuple[str, ...], str | None, str]
) -> None:
    assert resolve(**kw) == want


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kubeconfig": "/missing"}, "--kubeconfig /missing: no such file"),
        ({"kubeconfig": "/a", "context": "nope"},
         "--context nope: no such context in the kubeconfig (has: ctx-a, shared)"),
        ({"kubeconfig": "/bad"}, "kubeconfig /bad: not valid YAML"),
    ],
)  # fmt: skip
def test_bad_kube_input_is_one_line(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve(**kw)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_the_helmfile_is_found_here_or_above(tmp_path: Path) -> None:
    (tmp_path / "helmfile.yaml").write_text("releases: []\n")
    deep = tmp_path / "svc" / "src"
    deep.mkdir(parents=True)
    assert find_helmfile(deep) == tmp_path / "helmfile.yaml"
    (tmp_path / "svc" / "helmfile.yaml.gotmpl").write_text("releases: []\n")
    assert find_helmfile(deep) == tmp_path / "svc" / "helmfile.yaml.gotmpl"
    assert find_helmfile(tmp_path / "helmfile.yaml") == tmp_path / "helmfile.yaml"


def test_no_helmfile_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"no helmfile.yaml in .* run `devstack init`, or pass -f"
    ):
        find_helmfile(tmp_path)


def test_load_project_resolves_every_flag(tmp_path: Path) -> None:
    (tmp_path / "chart").mkdir()
    (tmp_path / "helmfile.yaml").write_text("releases:\n  - name: shop\n    chart: ./chart\n")
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig("dev", {"dev": "team-ns"}))
    parser = argparse.ArgumentParser()
    add_project_arguments(parser)
    args = parser.parse_args(["-f", str(tmp_path), "--owner", "alice", "--kubeconfig", str(config)])
    p = load_project(args, environ={"HOME": str(tmp_path)})
    assert p.root == tmp_path
    assert [r.name for r in p.helmfile.releases] == ["shop"]
    assert p.owner == "alice"
    assert (p.kube.context, p.kube.namespace) == ("dev", "team-ns")
    assert p.state_dir == tmp_path / ".devstack"
    # -f naming nothing is one line
    with pytest.raises(ConfigError, match=r"^-f /nope: no such file or folder$"):
        load_project(parser.parse_args(["-f", "/nope"]), environ={})
