"""The container image, checked without a Docker engine (none runs here): what the
Dockerfile copies exists and is not excluded by .dockerignore, the entrypoint is the
`devstack` console script, the final stage runs as a numeric non-root user, and the
charts' commands are subcommands that script knows."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

from devstack.cli.main import COMMANDS
from tests.helm.charts import AGENT_CHART, REPO, documents, one, render

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(path: str) -> bool:
    """Docker's .dockerignore semantics, for the patterns this project uses: the last
    matching pattern wins, `!` re-includes."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    copies = [rest for word, rest in _instructions() if word == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for source in sources:
            path = source.rstrip("/")
            assert (REPO / path).exists(), source
            assert not _ignored(path), source


def test_the_sdist_sources_the_build_needs_are_copied() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = {
        shlex.split(rest)[0].rstrip("/")
        for word, rest in _instructions()
        if word == "COPY" and "--from" not in rest
    }
    folders = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    assert folders <= copied
    assert "pyproject.toml" in copied


def test_entrypoint_is_the_devstack_console_script() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "devstack" in project["project"]["scripts"]
    (entrypoint,) = [rest for word, rest in _instructions() if word == "ENTRYPOINT"]
    import json

    assert json.loads(entrypoint) == ["/opt/devstack/bin/devstack"]


def test_final_stage_is_multi_stage_and_non_root() -> None:
    stages = [rest for word, rest in _instructions() if word == "FROM"]
    assert len(stages) >= 2
    final = DOCKERFILE[DOCKERFILE.rindex("\nFROM ") :]
    (user,) = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_the_charts_run_subcommands_the_image_has(example_chart: Path) -> None:
    """Every container running the devstack image starts a subcommand of the script."""
    values = {"devstack": {"enabled": True, "owner": "alice"}}
    docs = documents(render(example_chart, values))
    docs += documents(render(AGENT_CHART, {}, name="devstack"))
    run = []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container["image"].startswith("ghcr.io/devstack/devstack:"):
                assert "command" not in container  # the image's ENTRYPOINT runs
                run.append(container["args"][0])
    assert sorted(set(run)) == ["agent", "provision", "sidecar"]
    assert set(run) <= set(COMMANDS)


def test_the_image_has_the_static_copier_the_seed_runs(example_chart: Path) -> None:
    """The chart's tools init container copies a file the image's final stage puts
    there, from a package that is statically linked (it runs in any app image)."""
    pod = one(documents(render(example_chart, {"devstack": {"enabled": True}})), "Deployment")[
        "spec"
    ]["template"]["spec"]
    tools = next(c for c in pod["initContainers"] if c["name"] == "devstack-tools")
    copier = tools["command"][0]
    assert tools["command"][2] == copier
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    runs = " ".join(rest for word, rest in instructions[last_from:] if word == "RUN")
    assert "busybox-static" in runs
    assert re.search(rf"install\s+-D\s+-m\s+0755\s+/bin/busybox\s+{re.escape(copier)}\b", runs)
