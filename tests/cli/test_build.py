"""`devstack build SERVICE...`: the pure plan as tables (each builder's argv,
build args, the Dockerfile and context resolution, the tag rule), the
runner with a configured command that really builds (a tarball of the
context and a file naming the image) and one that fails, the "no builder"
error, a `docker` found on the PATH, the record `.devstack/builds.json`, and
`devstack up`'s plan deploying the recorded image in the copy only."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.cli.build import (
    BuildFailed,
    BuildPlan,
    builder_steps,
    context_digest,
    dockerignore_patterns,
    plan_build,
    run_plan,
    tag_for,
)
from devstack.cli.cluster_up import format_plan, plan_up
from devstack.cli.images import (
    BUILD_DEFAULTS,
    BuildConfigError,
    BuildRecord,
    BuildSettings,
    build_settings,
    read_records,
    write_record,
)
from devstack.cli.main import main
from devstack.core.errors import ConfigError
from devstack.core.helmfile import load
from tests.cli.test_workflow_plan import workflow_project

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/team/hello"
DIGEST = "sha256:" + "0123456789abcdef" * 4

HELMFILE = """
releases:
  - name: api
    chart: ./charts/plain
    values:
      - devstack:
          build: {image: registry.example.com/team/api}
  - name: hello
    chart: ../examples/chart
    needs: [api]
    values:
      - devstack:
          local: {dir: src/hello, command: "python app.py"}
          build:
            image: registry.example.com/team/hello
            args: {PYTHON_VERSION: "3.12", DEBUG: true, WORKERS: 2}
"""


def project(tmp_path: Path, text: str = HELMFILE) -> Path:
    """The workflow fixture project with ``text`` as its Helmfile, hello's
    sources in src/hello (a Dockerfile, an app) and api's at the root."""
    path = workflow_project(tmp_path)
    path.write_text(text)
    src = path.parent / "src" / "hello"
    src.mkdir(parents=True)
    (src / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY app.py /app/\n")
    (src / "app.py").write_text("print('hello')\n")
    (path.parent / "Dockerfile").write_text("FROM scratch\n")
    return path


def settings_of(path: Path, service: str) -> BuildSettings:
    return build_settings(load(path).release(service), path.parent)


def found(*names: str) -> Callable[[str], str | None]:
    """``which`` for a machine with exactly these builders on the PATH."""
    return lambda name: f"/usr/bin/{name}" if name in names else None


# --- the plan (pure) --------------------------------------------------------------


ARGS = (("DEBUG", "true"), ("PYTHON_VERSION", "3.12"))


@pytest.mark.parametrize(
    ("builder", "build", "push"),
    [
        (
            "docker",
            ["docker", "build", "-t", "r/x:t", "-f", "/c/Dockerfile",
             "--build-arg", "DEBUG=true", "--build-arg", "PYTHON_VERSION=3.12", "/c"],
            ["docker", "push", "r/x:t"],
        ),
        (
            "buildah",
            ["buildah", "bud", "-t", "r/x:t", "-f", "/c/Dockerfile",
             "--build-arg", "DEBUG=true", "--build-arg", "PYTHON_VERSION=3.12", "/c"],
            ["buildah", "push", "r/x:t"],
        ),
        (
            "nerdctl",
            ["nerdctl", "build", "-t", "r/x:t", "-f", "/c/Dockerfile",
             "--build-arg", "DEBUG=true", "--build-arg", "PYTHON_VERSION=3.12", "/c"],
            ["nerdctl", "push", "r/x:t"],
        ),
        (
            "podman",
            ["podman", "build", "-t", "r/x:t", "-f", "/c/Dockerfile",
             "--build-arg", "DEBUG=true", "--build-arg", "PYTHON_VERSION=3.12", "/c"],
            ["podman", "push", "r/x:t"],
        ),
    ],
)  # fmt: skip
def test_each_builders_argv(builder: str, build: list[str], push: list[str]) -> None:
    steps = builder_steps(
        builder, "r/x:t", dockerfile=Path("/c/Dockerfile"), context=Path("/c"), args=ARGS
    )
    assert [list(s) for s in steps] == [build, push]


def test_no_build_args_no_flags() -> None:
    (build, _) = builder_steps("docker", "r/x:t", dockerfile=Path("/c/D"), context=Path("/c"))
    assert build == ("docker", "build", "-t", "r/x:t", "-f", "/c/D", "/c")
    with pytest.raises(ValueError, match="unknown builder 'kaniko'"):
        builder_steps("kaniko", "r/x:t", dockerfile=Path("/c/D"), context=Path("/c"))


def _release(build: dict[str, Any], local: dict[str, Any] | None = None) -> str:
    block: dict[str, Any] = {"build": build}
    if local is not None:
        block["local"] = local
    return yaml.safe_dump(
        {
            "releases": [
                {"name": "hello", "chart": "./charts/plain", "values": [{"devstack": block}]}
            ]
        }
    )


LOCAL = {"dir": "src/hello", "command": "python app.py"}


@pytest.mark.parametrize(
    ("build", "local", "context", "dockerfile"),
    [
        # no context, no local.dir: the Helmfile's folder, its Dockerfile
        ({"image": IMAGE}, None, ".", "Dockerfile"),
        # local.dir is the default context
        ({"image": IMAGE}, LOCAL, "src/hello", "src/hello/Dockerfile"),
        # an explicit context wins over local.dir
        ({"image": IMAGE, "context": "src"}, LOCAL, "src", "src/Dockerfile"),
        # the Dockerfile is relative to the context, and may leave it
        ({"image": IMAGE, "context": "src/hello", "dockerfile": "../../Dockerfile"}, None,
         "src/hello", "Dockerfile"),
        ({"image": IMAGE, "context": "src", "dockerfile": "hello/Dockerfile"}, None,
         "src", "src/hello/Dockerfile"),
    ],
)  # fmt: skip
def test_context_and_dockerfile_resolution(
    tmp_path: Path,
    build: dict[str, Any],
    local: dict[str, Any] | None,
    context: str,
    dockerfile: str,
) -> None:
    path = project(tmp_path, _release(build, local))
    root = path.parent.resolve()
    s = settings_of(path, "hello")
    assert s.context == (root / context).resolve()
    assert s.dockerfile == (root / dockerfile).resolve()
    plan = plan_build(s, owner="alice", digest=DIGEST, which=found("docker"))
    assert plan.steps[0][-3:] == ("-f", str(s.dockerfile), str(s.context))


def test_the_defaults_are_the_library_charts() -> None:
    """The one place the defaults are applied in Python agrees with
    helm/devstack-lib/templates/_defaults.tpl."""
    text = (REPO / "helm" / "devstack-lib" / "templates" / "_defaults.tpl").read_text()
    body = text.split('{{- define "devstack-lib.defaults" -}}', 1)[1].split("{{- end -}}", 1)[0]
    assert yaml.safe_load(body)["build"] == BUILD_DEFAULTS


def test_settings_from_the_helmfile(tmp_path: Path) -> None:
    s = settings_of(project(tmp_path), "hello")
    assert s.image == IMAGE
    # typed values are text, as --build-arg passes them; sorted by name
    assert s.args == (("DEBUG", "true"), ("PYTHON_VERSION", "3.12"), ("WORKERS", "2"))
    assert (s.builder, s.command) == ("", ())
    assert (s.repository_path, s.tag_path) == ("image.repository", "image.tag")


@pytest.mark.parametrize(
    ("which", "builder", "chosen"),
    [
        (found("docker", "buildah", "nerdctl", "podman"), "", "docker"),
        (found("podman", "nerdctl"), "", "nerdctl"),
        (found("podman", "buildah"), "", "buildah"),
        (found("podman"), "", "podman"),
        # the one devstack.build.builder names, even when another comes first
        (found("docker", "podman"), "podman", "podman"),
    ],
)
def test_the_builder_is_the_first_found_or_the_one_named(
    tmp_path: Path, which: Callable[[str], str | None], builder: str, chosen: str
) -> None:
    build: dict[str, Any] = {"image": IMAGE, **({"builder": builder} if builder else {})}
    s = settings_of(project(tmp_path, _release(build)), "hello")
    plan = plan_build(s, owner="alice", digest=DIGEST, which=which)
    assert plan.builder == chosen
    assert [st[:2] for st in plan.steps] == [
        (chosen, "bud" if chosen == "buildah" else "build"),
        (chosen, "push"),
    ]


def test_a_named_builder_that_is_missing(tmp_path: Path) -> None:
    s = settings_of(project(tmp_path, _release({"image": IMAGE, "builder": "podman"})), "hello")
    with pytest.raises(BuildConfigError) as e:
        plan_build(s, owner="alice", digest=DIGEST, which=found("docker"))
    assert str(e.value) == (
        f"{s.where}: devstack.build.builder is podman, but podman is not on the PATH "
        "(install it, or leave builder empty to use the first of docker, buildah, nerdctl "
        "found)"
    )


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        # a string, split as a shell would split it (no shell runs)
        (
            "kaniko --destination ${IMAGE} --context '${CONTEXT}' -f $DOCKERFILE --keep $HOME",
            ["kaniko", "--destination", "{ref}", "--context", "{context}", "-f", "{dockerfile}",
             "--keep", "$HOME"],
        ),
        # a list: each word expanded, nothing split
        (["sh", "-c", "build ${IMAGE} && push ${IMAGE}"],
         ["sh", "-c", "build {ref} && push {ref}"]),
    ],
)  # fmt: skip
def test_a_configured_command(tmp_path: Path, command: Any, argv: list[str]) -> None:
    path = project(tmp_path, _release({"image": IMAGE, "command": command, "context": "src"}))
    s = settings_of(path, "hello")
    # it is used even with no builder installed
    plan = plan_build(s, owner="alice", digest=DIGEST, which=found())
    ref = f"{IMAGE}:dev-alice-0123456789ab"
    assert plan.builder == "command"
    assert [list(st) for st in plan.steps] == [
        [w.format(ref=ref, context=s.context, dockerfile=s.dockerfile) for w in argv]
    ]


def test_a_command_that_cannot_be_split(tmp_path: Path) -> None:
    path = project(tmp_path, _release({"image": IMAGE, "command": "build 'unclosed"}))
    with pytest.raises(
        BuildConfigError, match=r"release hello: devstack.build.command: No closing"
    ):
        settings_of(path, "hello")


def test_the_tag_rule_and_its_override(tmp_path: Path) -> None:
    s = settings_of(project(tmp_path), "hello")
    plan = plan_build(s, owner="alice", digest=DIGEST, which=found("docker"))
    assert (plan.tag, plan.ref) == ("dev-alice-0123456789ab", f"{IMAGE}:dev-alice-0123456789ab")
    assert tag_for("bob", DIGEST) == "dev-bob-0123456789ab"
    plan = plan_build(s, owner="alice", digest=DIGEST, which=found("docker"), tag="try-1")
    assert plan.ref == f"{IMAGE}:try-1"
    assert plan.steps[1] == ("docker", "push", f"{IMAGE}:try-1")
    with pytest.raises(BuildConfigError, match=r"--tag '-x' is not an image tag"):
        plan_build(s, owner="alice", digest=DIGEST, which=found("docker"), tag="-x")


def test_no_image_is_an_error(tmp_path: Path) -> None:
    s = settings_of(project(tmp_path, _release({"context": "."})), "hello")
    with pytest.raises(BuildConfigError) as e:
        plan_build(s, owner="alice", digest=DIGEST, which=found("docker"))
    assert str(e.value) == (
        f"{s.where}: devstack.build.image is not set: set the repository to push to in "
        "hello's values (devstack: {build: {image: registry.example.com/team/hello}})"
    )


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("registry.example.com:5000/team/hello", True),  # a registry's port is no tag
        ("localhost:5000/hello", True),
        ("hello", True),
        ("registry.example.com/team/hello:1.0", False),
        ("localhost:5000/hello:latest", False),
    ],
)
def test_the_image_is_a_repository_without_a_tag(tmp_path: Path, image: str, ok: bool) -> None:
    s = settings_of(project(tmp_path, _release({"image": image})), "hello")
    if ok:
        plan = plan_build(s, owner="alice", digest=DIGEST, which=found("docker"))
        assert plan.ref == f"{image}:dev-alice-0123456789ab"
        return
    with pytest.raises(BuildConfigError) as e:
        plan_build(s, owner="alice", digest=DIGEST, which=found("docker"))
    assert str(e.value) == (
        f"{s.where}: devstack.build.image {image!r} has a tag: give the repository "
        "only (devstack build chooses the tag; --tag sets one)"
    )


def test_a_bad_values_path_is_an_error(tmp_path: Path) -> None:
    path = project(tmp_path, _release({"image": IMAGE, "values": {"tag": "image..tag"}}))
    with pytest.raises(BuildConfigError, match=r"devstack.build.values.tag 'image..tag' is not"):
        settings_of(path, "hello")


# --- the tag's digest -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "patterns"),
    [
        (["# a comment", "", "  ", "node_modules", "*.log"], ["/node_modules", "/*.log"]),
        (["/build/", "./dist", "a/../b"], ["/build", "/dist", "/b"]),
        (["**/*.tmp", "!keep.tmp", " ! spaced "], ["/**/*.tmp", "!/keep.tmp", "!/spaced"]),
        ([".", "/", "!"], []),
    ],
)
def test_dockerignore_patterns(lines: list[str], patterns: list[str]) -> None:
    assert dockerignore_patterns(lines) == patterns


def _digest_in_another_process(path: Path) -> str:
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from devstack.cli.build import context_digest
        from devstack.cli.images import build_settings
        from devstack.core.helmfile import load
        path = Path({str(path)!r})
        print(context_digest(build_settings(load(path).release("hello"), path.parent)))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def test_the_tag_is_stable_and_follows_the_sources(tmp_path: Path) -> None:
    path = project(tmp_path)
    src = path.parent / "src" / "hello"
    s = settings_of(path, "hello")
    first = context_digest(s)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first)
    # stable: again, and in another process (no per-process salt)
    assert context_digest(s) == first
    assert _digest_in_another_process(path) == first

    seen = [first]

    def digest() -> str:
        return context_digest(settings_of(path, "hello"))

    def unchanged(change: Callable[[], object]) -> None:
        change()
        assert digest() == seen[-1], "this change must not give another tag"

    def changed(change: Callable[[], object]) -> None:
        change()
        got = digest()
        assert got not in seen, "this change must give another tag"
        seen.append(got)

    # ignored files do not change it: the built-in rules (.git/, caches, .devstack/)
    unchanged(lambda: (src / ".git").mkdir())
    unchanged(lambda: (src / ".git" / "HEAD").write_text("ref: x\n"))
    unchanged(lambda: (src / "__pycache__").mkdir())
    unchanged(lambda: (src / "__pycache__" / "app.cpython-312.pyc").write_bytes(b"\0"))
    unchanged(lambda: (src / ".devstack").mkdir())
    unchanged(lambda: (src / ".devstack" / "builds.json").write_text("{}"))
    # .devstackignore (a new file: it counts itself) and what it ignores
    changed(lambda: (src / ".devstackignore").write_text("notes.txt\n"))
    unchanged(lambda: (src / "notes.txt").write_text("mine\n"))
    # .dockerignore, anchored at the context's root as Docker reads it
    changed(lambda: (src / ".dockerignore").write_text("secrets/\n*.log\n"))
    unchanged(lambda: (src / "secrets").mkdir())
    unchanged(lambda: (src / "secrets" / "key").write_text("k"))
    unchanged(lambda: (src / "run.log").write_text("x"))
    changed(lambda: (src / "sub").mkdir())
    changed(lambda: (src / "sub" / "run.log").write_text("x"))  # sent to the builder: counts
    # a file's content, a new file, the executable bit, the Dockerfile, a build arg
    changed(lambda: (src / "app.py").write_text("print('hello, world')\n"))
    changed(lambda: (src / "util.py").write_text("X = 1\n"))
    changed(lambda: (src / "app.py").chmod(0o755))
    changed(lambda: (src / "Dockerfile").write_text("FROM python:3.13-slim\n"))
    changed(lambda: path.write_text(HELMFILE.replace('"3.12"', '"3.13"')))
    # the same sources again: the same digest (no times in it)
    before = seen[-1]
    changed(lambda: (src / "util.py").unlink())
    (src / "util.py").write_text("X = 1\n")
    (src / "util.py").chmod(0o644)
    assert digest() == before


# --- the command: a configured command that builds ---------------------------------------

BUILD_SCRIPT = """\
import json, os, sys, tarfile
image, context, out = sys.argv[1], sys.argv[2], sys.argv[3]
print("packing", context)
print("warning: to stderr", file=sys.stderr)
with tarfile.open(os.path.join(out, "image.tar"), "w") as tar:
    tar.add(context, arcname=".")
with open(os.path.join(out, "image-name"), "w") as f:
    f.write(image)
print("pushed", image)
"""

FAIL_SCRIPT = """\
import sys
for i in range(1, 6):
    print(f"step {i}")
print("error: no space left on device", file=sys.stderr)
sys.exit(3)
"""


def _command_project(tmp_path: Path, script: str) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    tool = tmp_path / "tool.py"
    tool.write_text(script)
    command = [sys.executable, str(tool), "${IMAGE}", "${CONTEXT}", str(out)]
    text = HELMFILE.replace(
        'args: {PYTHON_VERSION: "3.12", DEBUG: true, WORKERS: 2}',
        f"command: {json.dumps(command)}",
    )
    return project(tmp_path, text), out


@pytest.fixture
def alice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVSTACK_OWNER", "alice")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))


def test_a_configured_command_builds_and_the_tag_is_recorded(
    tmp_path: Path, alice: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path, out = _command_project(tmp_path, BUILD_SCRIPT)
    assert main(["build", "hello", "-f", str(path)]) == 0
    s = settings_of(path, "hello")
    tag = tag_for("alice", context_digest(s))
    ref = f"{IMAGE}:{tag}"
    # it built: the context's files in the tarball, the image it was given
    assert (out / "image-name").read_text() == ref
    with tarfile.open(out / "image.tar") as tar:
        names = set(tar.getnames())
    assert {"./Dockerfile", "./app.py"} <= names
    captured = capsys.readouterr()
    # its output streamed behind the service's name, stderr too; progress lines
    err = captured.err.splitlines()
    assert f"hello | packing {s.context}" in err
    assert "hello | warning: to stderr" in err
    assert f"hello | pushed {ref}" in err
    assert err[0].startswith(f"hello: [1/1] {sys.executable} ")
    assert re.fullmatch(rf"hello: pushed {re.escape(ref)} in \d+\.\ds", err[-1])
    assert captured.out.split() == [
        "SERVICE", "IMAGE", "TAG", "BUILDER", "RESULT", "hello", IMAGE, tag, "command", "pushed",
    ]  # fmt: skip
    # the record
    record = json.loads((path.parent / ".devstack" / "builds.json").read_text())
    entry = record["services"]["hello"]
    assert (record["version"], entry["image"], entry["tag"]) == (1, IMAGE, tag)
    assert entry["digest"] == context_digest(s) and entry["builder"] == "command"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["builtAt"])
    # building again with the same sources: the same tag
    assert main(["build", "hello", "-f", str(path), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["builds"][0]["tag"] == tag and doc["builds"][0]["result"] == "pushed"


def test_a_failing_command_is_one_line_with_its_exit_code_and_last_lines(
    tmp_path: Path, alice: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _command_project(tmp_path, FAIL_SCRIPT)
    assert main(["build", "hello", "-f", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "hello | step 5" in err
    assert err[-1] == (
        f"devstack build: hello: `{Path(sys.executable).name} {tmp_path / 'tool.py'}` exited 3: "
        "step 4 / step 5 / error: no space left on device "
        "(fix it, then run `devstack build hello` again)"
    )
    # nothing recorded
    assert not (path.parent / ".devstack" / "builds.json").exists()


def test_run_plan_reports_a_missing_command_and_a_signal(tmp_path: Path) -> None:
    plan = BuildPlan(
        service="hello", image=IMAGE, tag="t", digest=DIGEST, context=tmp_path,
        dockerfile=tmp_path / "Dockerfile", builder="command",
        steps=(("no-such-builder-here", "x"),),
    )  # fmt: skip
    with open(os.devnull, "w") as sink, pytest.raises(BuildFailed) as e:
        run_plan(plan, stream=sink)
    assert str(e.value) == (
        "hello: `no-such-builder-here x` exited 127: no-such-builder-here: command not found "
        "(fix it, then run `devstack build hello` again)"
    )
    killed = plan.__class__(**{**plan.__dict__, "steps": (("sh", "-c", "kill -9 $$"),)})
    with open(os.devnull, "w") as sink, pytest.raises(BuildFailed) as e:
        run_plan(killed, stream=sink)
    assert str(e.value).startswith("hello: `sh -c` was killed by signal 9 with no output")


# --- the command: builders on the PATH ----------------------------------------------------

STAND_IN = """\
#!{python}
# A stand-in for {name}'s CLI: records its argv (this machine has no container engine).
import json, os, sys
with open(os.environ["BUILD_LOG"], "a") as f:
    f.write(json.dumps(["{name}", *sys.argv[1:]]) + "\\n")
print("{name}: " + " ".join(sys.argv[1:2]) + " done")
"""


def _stand_ins(folder: Path, *names: str) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        exe = folder / name
        exe.write_text(STAND_IN.format(python=sys.executable, name=name))
        exe.chmod(0o755)


def test_no_builder_on_the_path_is_one_line(
    tmp_path: Path,
    alice: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = project(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["build", "hello", "-f", str(path)]) == 2
    assert capsys.readouterr().err == (
        "devstack build: no image builder on the PATH (looked for docker, buildah, nerdctl, "
        "podman): install one, or set devstack.build.command in hello's values to a command "
        "that builds and pushes ${IMAGE} (docs/helmfile.md, devstack.build)\n"
    )
    assert not (path.parent / ".devstack").exists()


def test_docker_on_the_path_builds_then_pushes(
    tmp_path: Path,
    alice: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The `docker` (and `podman`) found on the PATH are stand-ins written by
    this test that record their argv: this machine has no container engine.
    They prove which builder is chosen, the exact argv and the order: build,
    then push, then the record."""
    path = project(tmp_path)
    log = tmp_path / "calls.jsonl"
    bin_dir = tmp_path / "bin"
    _stand_ins(bin_dir, "podman", "docker")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("BUILD_LOG", str(log))
    s = settings_of(path, "hello")
    ref = f"{IMAGE}:{tag_for('alice', context_digest(s))}"

    # --dry-run: the commands, and nothing run or written
    assert main(["build", "hello", "-f", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-3:] == [
        "commands:",
        f"  hello: docker build -t {ref} -f {s.dockerfile} --build-arg DEBUG=true "
        f"--build-arg PYTHON_VERSION=3.12 --build-arg WORKERS=2 {s.context}",
        f"  hello: docker push {ref}",
    ]
    assert not log.exists()
    assert not (path.parent / ".devstack").exists()

    assert main(["build", "hello", "-f", str(path)]) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [
        ["docker", "build", "-t", ref, "-f", str(s.dockerfile),
         "--build-arg", "DEBUG=true", "--build-arg", "PYTHON_VERSION=3.12",
         "--build-arg", "WORKERS=2", str(s.context)],
        ["docker", "push", ref],
    ]  # fmt: skip
    err = capsys.readouterr().err
    assert "hello | docker: build done" in err and "hello | docker: push done" in err
    assert read_records(path.parent / ".devstack")["hello"].ref == ref


def test_the_record_keeps_every_service(tmp_path: Path) -> None:
    state = tmp_path / ".devstack"
    assert read_records(state) == {}
    one = BuildRecord("hello", IMAGE, "t1", DIGEST, "2025-01-02T03:04:05Z", "docker")
    two = BuildRecord("api", "r/api", "t2", DIGEST, "2025-01-02T03:04:06Z", "podman")
    write_record(state, one)
    write_record(state, two)
    write_record(state, BuildRecord("hello", IMAGE, "t3", DIGEST, "2025-01-02T03:04:07Z"))
    got = read_records(state)
    assert (got["hello"].tag, got["api"]) == ("t3", two)
    # one file, no temporary left beside it
    assert [p.name for p in state.iterdir()] == ["builds.json"]
    (state / "builds.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"builds.json: not valid JSON .*; delete .*builds.json"):
        read_records(state)


# --- `devstack up` deploys the recorded image -------------------------------------------


def test_up_plan_injects_the_recorded_image_in_the_copy_only(
    tmp_path: Path,
    alice: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`up --dry-run -o json` needs a cluster (which releases exist), so this
    checks plan_up on the project's own record, written by a real `devstack
    build` (the stand-in docker as above), as `up` prints it."""
    path = project(tmp_path)
    bin_dir = tmp_path / "bin"
    _stand_ins(bin_dir, "docker")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("BUILD_LOG", str(tmp_path / "calls.jsonl"))
    assert main(["build", "hello", "api", "-f", str(path)]) == 0
    capsys.readouterr()
    builds = read_records(path.parent / ".devstack")
    hello_tag, api_tag = builds["hello"].tag, builds["api"].tag

    helmfile = load(path)
    plan = plan_up(helmfile, "alice", ["hello"], set(), builds=builds)
    doc = plan.as_json()
    by = {r["release"]: r for level in doc["levels"] for r in level}
    assert set(by) == {"api", "hello--alice"}
    assert by["hello--alice"]["injectedValues"]["image"] == {
        "repository": IMAGE,
        "tag": hello_tag,
    }
    # the baseline of api keeps its chart's image, though api was built
    assert "image" not in by["api"]["injectedValues"]
    copy = next(r for r in plan.releases if r.role == "copy")
    # what Helm gets: the Helmfile's values with the image set, its devstack kept
    assert copy.values["image"] == {"repository": IMAGE, "tag": hello_tag}
    assert copy.values["devstack"]["build"]["image"] == IMAGE
    printed = format_plan(plan, default_namespace="dev")
    assert f'image.repository="{IMAGE}" image.tag="{hello_tag}"' in printed
    # its own copy gets api's image
    plan = plan_up(helmfile, "alice", ["api"], set(), builds=builds)
    assert plan.releases[0].injected["image"] == {
        "repository": "registry.example.com/team/api",
        "tag": api_tag,
    }
