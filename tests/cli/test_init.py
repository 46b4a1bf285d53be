"""`devstack init`: a starter Helmfile devstack's own reader accepts, a
release per application chart, and no file clobbered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.cli.init import FoundChart, find_charts, plan_init
from devstack.core.errors import ConfigError
from devstack.core.helmfile import OsFiles, parse

DEVSTACK = str(Path(sys.executable).parent / "devstack")


def chart(folder: Path, name: str, kind: str = "application") -> None:
    folder.mkdir(parents=True)
    (folder / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: {name}\nversion: 0.1.0\ntype: {kind}\n"
    )


def test_a_release_per_application_chart_that_the_reader_accepts(tmp_path: Path) -> None:
    chart(tmp_path / "services" / "web" / "chart", "web")
    chart(tmp_path / "services" / "api" / "deploy", "api")
    chart(tmp_path / "lib", "common", kind="library")
    chart(tmp_path / "services" / "api" / "deploy" / "charts" / "sub", "sub")  # a subchart
    chart(tmp_path / "node_modules" / "x", "x")
    assert find_charts(tmp_path) == [
        FoundChart("services/api/deploy", "api"),
        FoundChart("services/web/chart", "web"),
    ]
    out = subprocess.run(
        [DEVSTACK, "init", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "then `devstack up`" in out.stdout
    helmfile = parse(str(tmp_path / "helmfile.yaml"), OsFiles())
    assert [r.name for r in helmfile.releases] == ["api", "web"]
    assert helmfile.release("web").chart.path == str(tmp_path / "services" / "web" / "chart")
    assert helmfile.release("api").devstack["sidecar"] == {"reload": "supervise"}
    assert "build/" in (tmp_path / ".devstackignore").read_text()


def test_it_never_overwrites_without_force(tmp_path: Path) -> None:
    (tmp_path / "helmfile.yaml").write_text("mine\n")
    out = subprocess.run([DEVSTACK, "init", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "devstack init: helmfile.yaml exists already: edit it, or run `devstack init --force`"
    )
    assert (tmp_path / "helmfile.yaml").read_text() == "mine\n"
    assert not (tmp_path / ".devstackignore").exists()
    subprocess.run([DEVSTACK, "init", "--force", str(tmp_path)], check=True, capture_output=True)
    assert parse(str(tmp_path / "helmfile.yaml"), OsFiles()).releases == ()


def test_two_charts_of_one_name_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="two charts are named web: rename one"):
        plan_init([FoundChart("a", "web"), FoundChart("b", "web")], {})
