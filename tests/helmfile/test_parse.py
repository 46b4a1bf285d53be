"""What the Helmfile reader makes of a valid Helmfile: the shop fixture
(tests/data/helmfiles/shop: every supported key, a sub-helmfile, environments,
repositories of both kinds), deploy order, and Helm's values semantics."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.core.helmfile import (
    Chart,
    HelmDefaults,
    ReleaseId,
    Repository,
    SetValue,
    TemplateError,
    load,
)
from devstack.core.helmfile import values as vals
from devstack.core.helmfile.order import CycleError, levels

DATA = Path(__file__).resolve().parents[1] / "data" / "helmfiles"
SHOP = DATA / "shop"


def test_the_shop_parses_with_helmfile_semantics() -> None:
    h = load(SHOP)
    assert h.path == str(SHOP / "helmfile.yaml")
    assert h.files == (str(SHOP / "helmfile.yaml"), str(SHOP / "data" / "helmfile.yaml"))
    assert not h.rendered
    # environment values merge in order
    assert h.environment.name == "default"
    assert h.environment.values == {"domain": "shop.test", "replicas": 2}
    assert h.environment_names == ("default",)
    assert h.helm_defaults == HelmDefaults(
        kube_context="shop-dev", wait=True, timeout=300, create_namespace=True
    )
    assert h.repositories == (
        Repository("bitnami", "http://127.0.0.1:8879/charts"),
        Repository("registry", "127.0.0.1:5000/charts", oci=True),
    )
    # the sub-helmfile's releases first, as Helmfile orders them
    assert [r.name for r in h.releases] == ["db", "cache", "web", "api", "old-admin"]
    db, cache, web, api, old = h.releases
    assert db.chart == Chart(
        kind="repository",
        ref="bitnami/postgresql",
        name="postgresql",
        repository="bitnami",
        url="http://127.0.0.1:8879/charts",
    )
    assert db.version == "15.5.0"
    # a sub-helmfile's values files are relative to its own folder
    assert db.value_files == (str(SHOP / "data" / "db.yaml"),)
    assert db.values == {"auth": {"database": "shop"}}
    assert db.source == str(SHOP / "data" / "helmfile.yaml")
    assert cache.chart == Chart(
        kind="oci",
        ref="registry/redis",
        name="redis",
        repository="registry",
        url="oci://127.0.0.1:5000/charts/redis",
    )
    assert web.chart == Chart(
        kind="local", ref="./charts/web", name="web", path=str(SHOP / "charts" / "web")
    )
    assert web.id == ReleaseId("shop-dev", "shop", "web")
    assert web.labels == {"tier": "front"}
    # files, then inline maps, in order; then set
    assert web.values == {
        "image": {"tag": "1.0"},
        "devstack": {"enabled": True, "sidecar": {"reload": "exec", "exec": "kill -HUP 1"}},
        "replicaCount": 2,
        "ingress": {"hosts": ["shop.test", "www.shop.test"]},
        "motd": "Welcome to the shop\n",
    }
    assert web.sets == (
        SetValue("replicaCount", 2, "value"),
        SetValue("ingress.hosts", ["shop.test", "www.shop.test"], "values"),
        SetValue("motd", "Welcome to the shop\n", "file"),
    )
    assert web.devstack == {"enabled": True, "sidecar": {"reload": "exec", "exec": "kill -HUP 1"}}
    assert web.needs == (ReleaseId("shop-dev", "shop", "api"),)
    # name, namespace/name and kubecontext/namespace/name
    assert api.needs == (
        ReleaseId("shop-dev", "shop", "db"),
        ReleaseId("shop-dev", "shop", "cache"),
    )
    assert api.devstack == {"enabled": True, "owner": ""}
    assert not old.installed
    # installed: false is not deployed
    assert h.levels == (("db", "cache"), ("api",), ("web",))


def test_a_folder_prefers_helmfile_yaml_and_a_missing_one_says_so(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as caught:
        load(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: no helmfile.yaml or helmfile.yaml.gotmpl here (devstack init writes one)"
    )


def test_a_later_document_merges_helm_defaults_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "helmfile.yaml").write_text(
        "helmDefaults:\n  wait: true\n---\nhelmDefaults:\n  timeout: 30\n"
        "releases:\n- name: a\n  chart: ./c\n"
    )
    h = load(tmp_path)
    assert h.helm_defaults == HelmDefaults(wait=True, timeout=30)


def test_a_null_in_a_later_values_entry_removes_the_key_from_devstack(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "helmfile.yaml").write_text(
        "releases:\n- name: a\n  chart: ./c\n  values:\n"
        "  - devstack: {enabled: true, owner: alice}\n  - devstack: {owner: null}\n"
    )
    assert load(tmp_path).release("a").devstack == {"enabled": True}


@pytest.mark.parametrize(
    ("needs", "expected"),
    [
        ({}, ()),
        ({"a": [], "b": [], "c": []}, (("a", "b", "c"),)),
        ({"web": ["api"], "api": ["db"], "db": []}, (("db",), ("api",), ("web",))),
        (
            {"web": ["api", "db"], "api": ["db", "cache"], "db": [], "cache": [], "job": ["db"]},
            (("db", "cache"), ("api", "job"), ("web",)),
        ),
        # declaration order inside a level, whatever the needs' order
        ({"z": ["y"], "b": [], "y": [], "a": ["y"]}, (("b", "y"), ("z", "a"))),
    ],
)
def test_levels_put_each_release_after_what_it_needs(
    needs: dict[str, list[str]], expected: tuple[tuple[str, ...], ...]
) -> None:
    assert levels(needs) == expected


@pytest.mark.parametrize(
    ("needs", "cycle"),
    [
        ({"a": ["a"]}, ("a", "a")),
        ({"a": ["b"], "b": ["a"]}, ("a", "b", "a")),
        ({"x": [], "a": ["x", "b"], "b": ["c"], "c": ["a"]}, ("a", "b", "c", "a")),
    ],
)
def test_a_cycle_names_its_whole_path(needs: dict[str, list[str]], cycle: tuple[str, ...]) -> None:
    with pytest.raises(CycleError) as caught:
        levels(needs)
    assert caught.value.cycle == cycle


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("false", False),
        ("null", None),
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("007", "007"),
        ("1.5", "1.5"),
        ("9223372036854775808", "9223372036854775808"),
        ("True", "True"),
        ("a,b", "a,b"),
    ],
)
def test_set_values_are_typed_as_helm_set_types_them(text: str, value: object) -> None:
    assert vals.typed(text) == value


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("a", ["a"]),
        ("a.b.c", ["a", "b", "c"]),
        (r"a\.b.c", ["a.b", "c"]),
        ("a[0].b", ["a", 0, "b"]),
        ("a[1][2]", ["a", 1, 2]),
    ],
)
def test_set_names_are_helm_set_paths(name: str, keys: list[object]) -> None:
    assert vals.set_path(name) == keys


def test_set_fills_lists_and_maps_as_helm_does() -> None:
    assert vals.apply_set({"a": {"z": 1}}, ["a", "b", 1, "c"], 3) == {
        "a": {"z": 1, "b": [None, {"c": 3}]}
    }


def test_values_merge_maps_deeply_and_replace_lists() -> None:
    assert vals.merge({"a": {"x": 1, "l": [1, 2]}, "b": 1}, {"a": {"y": 2, "l": [3]}}) == {
        "a": {"x": 1, "y": 2, "l": [3]},
        "b": 1,
    }
