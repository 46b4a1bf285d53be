"""Templated Helmfiles are never half-parsed: a real helmfile v1.8.0 (built by
`scripts/testbed build helmfile`, with the helm it runs) renders them, and
without one devstack stops with one line naming the file and the fix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from devstack.core.helmfile import HelmfileError, TemplateError, load
from tests.support.testbed import binary_paths

DATA = Path(__file__).resolve().parents[1] / "data" / "helmfiles"


@pytest.fixture(scope="module")
def helmfile_path() -> str:
    """A PATH with the testbed's helmfile and helm first; fails with how to build them."""
    paths = binary_paths()
    missing = [n for n in ("helmfile", "helm") if n not in paths or not paths[n].is_file()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not built: run `scripts/testbed build helmfile` "
            "(Go and the Go module proxy; see docs/testing.md)"
        )
    dirs = {str(paths["helmfile"].parent), str(paths["helm"].parent)}
    return os.pathsep.join([*sorted(dirs), os.environ.get("PATH", "")])


def _env(path: str) -> dict[str, str]:
    return {**os.environ, "PATH": path}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_gotmpl_helmfile_renders_through_helmfile_to_the_same_shop(
    helmfile_path: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {**_env(helmfile_path), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    templated = load(DATA / "templated", env=env)
    plain = load(DATA / "shop")
    assert templated.rendered and not plain.rendered
    root = DATA / "templated"
    assert templated.files == (
        str(root / "helmfile.yaml.gotmpl"),
        str(root / "data" / "helmfile.yaml"),
    )
    assert templated.environment.values == {
        **plain.environment.values,
        "services": ["web", "api"],
    }
    assert templated.helm_defaults == plain.helm_defaults
    assert templated.repositories == plain.repositories
    assert templated.levels == plain.levels
    assert [r.name for r in templated.releases] == [r.name for r in plain.releases]
    for t, p in zip(templated.releases, plain.releases, strict=True):
        # everything but where the files are (and the cache's chart: no oci:// here,
        # helmfile build would pull it)
        assert (t.id, t.values, t.sets, t.needs, t.labels, t.installed, t.devstack) == (
            p.id, p.values, p.sets, p.needs, p.labels, p.installed, p.devstack,
        ), t.name  # fmt: skip
        assert t.version == p.version, t.name
        if t.name != "cache":
            assert (t.chart.kind, t.chart.ref, t.chart.url) == (
                p.chart.kind,
                p.chart.ref,
                p.chart.url,
            )
    # the values template (values/web-devstack.yaml.gotmpl) was rendered by helmfile
    assert templated.release("web").devstack["sidecar"]["exec"] == "kill -HUP 1"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_yaml_file_with_braces_is_rendered_and_checked_like_plain_yaml(
    helmfile_path: str, tmp_path: Path
) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "helmfile.yaml").write_text(
        'releases:\n- name: {{ "a" }}\n  chart: ./c\n  wait: true\n'
    )
    with pytest.raises(HelmfileError) as caught:
        load(tmp_path, env={**_env(helmfile_path), "HOME": str(tmp_path)})
    (problem,) = caught.value.problems
    assert problem.startswith("helmfile.yaml (as helmfile rendered it):")
    assert problem.endswith(
        "releases[0].wait: unknown key (devstack reads: name, chart, version, namespace, "
        "values, set, needs, labels, installed; see docs/helmfile.md)"
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_template_helmfile_cannot_render_fails_with_its_error_on_one_line(
    helmfile_path: str, tmp_path: Path
) -> None:
    (tmp_path / "helmfile.yaml.gotmpl").write_text(
        "releases:\n- name: {{ .Values.nope.x }}\n  chart: ./c\n"
    )
    with pytest.raises(TemplateError) as caught:
        load(tmp_path, env={**_env(helmfile_path), "HOME": str(tmp_path)})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"helmfile could not render {tmp_path}/helmfile.yaml.gotmpl: ")
    assert 'map has no entry for key "nope"' in message


@pytest.mark.parametrize(
    ("files", "named", "why"),
    [
        ({"helmfile.yaml.gotmpl": "releases: []\n"}, "helmfile.yaml.gotmpl", "is named *.gotmpl"),
        ({"helmfile.yaml": "releases:\n- name: {{ .Values.a }}\n"}, "helmfile.yaml", "contains {{"),
        (
            {
                "helmfile.yaml": "helmfiles:\n- sub.yaml\n",
                "sub.yaml": "releases:\n- name: a\n  chart: ./c\n  values:\n  - v.yaml.gotmpl\n",
                "v.yaml.gotmpl": "a: {{ 1 }}\n",
                "c/Chart.yaml": "name: c\n",
            },
            "v.yaml.gotmpl",
            "is a values template (named *.gotmpl)",
        ),
    ],
)
def test_without_helmfile_a_template_stops_with_one_line_naming_file_and_fix(
    tmp_path: Path, files: dict[str, str], named: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    empty = tmp_path / "bin"
    empty.mkdir()
    assert shutil.which("helmfile", path=str(empty)) is None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TemplateError) as caught:
        load(tmp_path, env={"PATH": str(empty)})
    assert str(caught.value) == (
        f"{named} {why}, so it is a Go template and devstack needs helmfile to render it: "
        "install helmfile v1 and helm on the PATH (https://helmfile.readthedocs.io/en/stable/"
        "#installation), or write it as plain YAML"
    )
