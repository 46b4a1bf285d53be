"""The wheel the image installs (`pip install .` in the Dockerfile) carries every
file the packages read at run time, not only their Python modules: built from a
copy of the Docker build context, installed into a folder of its own and run
from there, with this checkout's sources out of reach."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.helm.charts import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PROJECT["tool"]["setuptools"]["package-dir"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel` of what the Dockerfile copies into its build stage."""
    src = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in sorted({d.split("/")[0] for d in PACKAGE_DIRS.values()}):
        shutil.copytree(
            REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (built,) = out.glob("devstack-*.whl")
    return built


def test_the_wheel_carries_every_data_file_of_the_packages(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for package, folder in PACKAGE_DIRS.items():
        for path in (REPO / folder).iterdir():
            if path.is_file() and path.suffix not in (".py", ".pyc"):
                expected.add(f"{package.replace('.', '/')}/{path.name}")
    assert "devstack/provision/spec.schema.json" in expected
    assert expected - names == set()


def test_the_installed_package_validates_a_spec_with_its_schema(
    wheel: Path, tmp_path: Path
) -> None:
    """`devstack provision` from the installed wheel rejects a bad spec by its schema
    (before the fix it died with FileNotFoundError: spec.schema.json)."""
    target = tmp_path / "installed"
    install = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
            "--target", str(target), str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"sqs": [{"name": "jobs", "fifo": "yes"}]}))
    # -I -S: no PYTHONPATH, no site (so no editable install of this checkout); the
    # dependencies come from this interpreter's site-packages, devstack from `target`.
    path = [str(target), *site.getsitepackages()]
    argv = ["provision", "--spec", str(spec), "--endpoint", "http://127.0.0.1:9"]
    code = (
        "import sys\n"
        f"sys.path[:0] = {path!r}\n"
        "import devstack.provision as p\n"
        f"assert p.__file__.startswith({str(target)!r}), p.__file__\n"
        "from devstack.cli.main import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr
    assert "devstack.aws.sqs[0].fifo: must be true or false" in run.stderr
    assert "Traceback" not in run.stderr
