"""``devstack build SERVICE [SERVICE...]``: build and push each service's
image with the builder that is installed, and record the tag so that
``devstack up`` deploys it in your copy.

- :func:`plan_build` is pure: a service's settings (``devstack.build``, see
  :mod:`devstack.cli.images`), the owner, the digest of its build context and
  which builders are on the PATH give the image reference, the tag and the
  argv of each command: ``docker build`` then ``docker push`` (``buildah
  bud``/``push``, ``nerdctl build``/``push``, ``podman build``/``push``), or
  the configured ``devstack.build.command`` with ``${IMAGE}``,
  ``${CONTEXT}`` and ``${DOCKERFILE}`` expanded;
- :func:`digest_of` is pure and :func:`context_digest` its I/O: the tag
  rule's digest (below);
- :func:`run_plan` is the thin runner: each command in turn, its output
  streamed to stderr line by line behind ``SERVICE |``, one progress line
  per step; a failure is one line with the exit code and the last lines.

The tag rule: ``dev-<owner>-<the first 12 hex digits of the digest>``. The
digest is SHA-256 over what the build reads, so the same sources give the
same tag on every machine and any change gives another one:

- each file, folder and symlink of the context (path, content digest,
  executable bit, link target; no times, owners or other mode bits) that
  ``devstack connect`` would sync from that folder: the built-in ignore
  rules (``.git/``, ``node_modules/``, caches, ``.devstack/``...),
  ``.gitignore`` files and ``.devstackignore``, and then without what
  ``.dockerignore`` at the context's root leaves out of a build;
- the Dockerfile's content (it may live outside the context), the build
  arguments and a configured command's words.

``--tag`` overrides the rule.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from devstack.cli.cluster_up import dump, resolve_services, table
from devstack.cli.images import (
    BUILDERS,
    BuildConfigError,
    BuildRecord,
    BuildSettings,
    build_settings,
    records_path,
    write_record,
)
from devstack.cli.project import (
    Project,
    add_output_argument,
    add_project_arguments,
    load_project,
)
from devstack.core import ignore
from devstack.core import logging as dlog
from devstack.core.errors import PermanentError
from devstack.core.manifest import DigestCache, Entry, Kind, scan

log = dlog.get_logger("devstack.cli.build")

#: A Docker tag: at most 128 of these characters, not starting with ``.`` or ``-``.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: Hex digits of the digest in the tag.
TAG_DIGEST_CHARS = 12
#: Lines of a failed command's output repeated in its error.
LAST_LINES = 3
DOCKERIGNORE = ".dockerignore"

#: ``shutil.which`` for one name: the executable's path, or None.
Which = Callable[[str], str | None]

EXAMPLES = """\
examples:
  devstack build web                    build and push web's image; `devstack up web` deploys it
  devstack build web api --dry-run      the commands it would run, and the tags
  devstack build web --tag try-1        a tag of your own instead of dev-<owner>-<digest>
  devstack build web -o json            the result, for scripts

Settings are the release's values under devstack.build (docs/helmfile.md):
  devstack:
    build:
      image: registry.example.com/team/web    # the repository, without a tag
      args: {PYTHON_VERSION: "3.12"}           # --build-arg
      # command: "kaniko-build ${IMAGE} ${CONTEXT}"   # instead of a builder
"""


class BuildFailed(PermanentError):
    """A builder command that did not succeed: one line with its exit code
    and its last lines."""

    reason = "build-failed"


# --- the plan (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    service: str
    #: The repository, without a tag.
    image: str
    tag: str
    #: ``sha256:<hex>``: what the tag rule hashed.
    digest: str
    context: Path
    dockerfile: Path
    #: ``docker``, ``buildah``, ``nerdctl``, ``podman`` or ``command``.
    builder: str
    #: The commands, in order: each must exit 0.
    steps: tuple[tuple[str, ...], ...]

    @property
    def ref(self) -> str:
        return f"{self.image}:{self.tag}"

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "image": self.image,
            "tag": self.tag,
            "ref": self.ref,
            "digest": self.digest,
            "context": str(self.context),
            "dockerfile": str(self.dockerfile),
            "builder": self.builder,
            "commands": [list(s) for s in self.steps],
        }


def tag_for(owner: str, digest: str) -> str:
    """The tag rule: ``dev-<owner>-<first 12 hex digits of the digest>``."""
    return f"dev-{owner}-{digest.removeprefix('sha256:')[:TAG_DIGEST_CHARS]}"


def builder_steps(
    builder: str,
    ref: str,
    *,
    dockerfile: Path,
    context: Path,
    args: Sequence[tuple[str, str]] = (),
) -> tuple[tuple[str, ...], ...]:
    """The argv of each command that builds ``ref`` and pushes it, as each
    CLI takes them: ``build -t REF -f DOCKERFILE --build-arg K=V CONTEXT``
    then ``push REF`` (buildah's build is ``bud``; its ``push REF`` pushes to
    the registry the name says). Paths are absolute: docker reads a relative
    ``-f`` from the working directory, not the context."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown builder {builder!r}")
    build = "bud" if builder == "buildah" else "build"
    build_args = [w for k, v in args for w in ("--build-arg", f"{k}={v}")]
    return (
        (builder, build, "-t", ref, "-f", str(dockerfile), *build_args, str(context)),
        (builder, "push", ref),
    )


def command_steps(
    command: Sequence[str], ref: str, *, context: Path, dockerfile: Path
) -> tuple[tuple[str, ...], ...]:
    """The configured command with ``${IMAGE}`` (``repository:tag``),
    ``${CONTEXT}`` and ``${DOCKERFILE}`` expanded in each word (``$NAME`` too;
    other names are kept as written)."""
    names = {"IMAGE": ref, "CONTEXT": str(context), "DOCKERFILE": str(dockerfile)}
    return (tuple(string.Template(w).safe_substitute(names) for w in command),)


def no_builder_message(service: str) -> str:
    return (
        f"no image builder on the PATH (looked for {', '.join(BUILDERS)}): install one, or "
        f"set devstack.build.command in {service}'s values to a command that builds and "
        "pushes ${IMAGE} (docs/helmfile.md, devstack.build)"
    )


def no_image_message(settings: BuildSettings) -> str:
    return (
        f"{settings.where}: devstack.build.image is not set: set the repository to push to "
        f"in {settings.service}'s values (devstack: {{build: {{image: "
        f"registry.example.com/team/{settings.service}}}}})"
    )


def check_tag(tag: str | None) -> None:
    if tag is not None and not TAG_RE.match(tag):
        raise BuildConfigError(
            f"--tag {tag!r} is not an image tag (1-128 letters, digits, '_', '.', '-'; "
            "not starting with '.' or '-')"
        )


def choose_builder(settings: BuildSettings, which: Which) -> str:
    """``command`` when one is configured; else the builder
    ``devstack.build.builder`` names, which must be on the PATH; else the
    first of :data:`BUILDERS` that is."""
    if settings.command:
        return "command"
    if settings.builder:
        if which(settings.builder) is None:
            others = ", ".join(b for b in BUILDERS if b != settings.builder)
            raise BuildConfigError(
                f"{settings.where}: devstack.build.builder is {settings.builder}, but "
                f"{settings.builder} is not on the PATH (install it, or leave builder empty "
                f"to use the first of {others} found)"
            )
        return settings.builder
    found = next((b for b in BUILDERS if which(b) is not None), None)
    if found is None:
        raise BuildConfigError(no_builder_message(settings.service))
    return found


def plan_build(
    settings: BuildSettings,
    *,
    owner: str,
    digest: str,
    which: Which,
    tag: str | None = None,
) -> BuildPlan:
    """How to build and push one service's image (pure: ``which`` says which
    builders are installed)."""
    if not settings.image:
        raise BuildConfigError(no_image_message(settings))
    if ":" in settings.image.rsplit("/", 1)[-1]:  # (the schema refuses a digest, @...)
        raise BuildConfigError(
            f"{settings.where}: devstack.build.image {settings.image!r} has a tag: "
            "give the repository only (devstack build chooses the tag; --tag sets one)"
        )
    check_tag(tag)
    builder = choose_builder(settings, which)
    chosen = tag if tag is not None else tag_for(owner, digest)
    ref = f"{settings.image}:{chosen}"
    if builder == "command":
        steps = command_steps(
            settings.command, ref, context=settings.context, dockerfile=settings.dockerfile
        )
    else:
        steps = builder_steps(
            builder,
            ref,
            dockerfile=settings.dockerfile,
            context=settings.context,
            args=settings.args,
        )
    return BuildPlan(
        service=settings.service,
        image=settings.image,
        tag=chosen,
        digest=digest,
        context=settings.context,
        dockerfile=settings.dockerfile,
        builder=builder,
        steps=steps,
    )


# --- the digest -------------------------------------------------------------------------


def dockerignore_patterns(lines: Iterable[str]) -> list[str]:
    """``.dockerignore`` lines as ignore rules (gitignore syntax): every
    Docker pattern is relative to the context's root, so each is anchored
    (``/pattern``) after Go's ``filepath.Clean``; ``#`` in the first column
    starts a comment, ``!`` re-includes."""
    out: list[str] = []
    for raw in lines:
        if raw.startswith("#"):
            continue
        line = raw.strip()
        negated = line.startswith("!")
        body = line[1:].strip() if negated else line
        if not body:
            continue
        body = posixpath.normpath(body).lstrip("/")
        if body in ("", "."):
            continue
        out.append(("!" if negated else "") + "/" + body)
    return out


def digest_of(
    entries: Iterable[Entry],
    *,
    dockerfile: bytes | None,
    args: Sequence[tuple[str, str]] = (),
    command: Sequence[str] = (),
) -> str:
    """``sha256:<hex>`` of a build's inputs (pure): each entry's kind, path,
    content digest and executable bit (or link target), in path order; the
    Dockerfile's bytes (None: there is none); the build arguments; a
    configured command's words."""
    h = hashlib.sha256(b"devstack-build/1\n")

    def line(*parts: Any) -> None:
        h.update(json.dumps(parts).encode() + b"\n")

    for e in sorted(entries, key=lambda e: e.path):
        if e.kind == Kind.FILE:
            line("file", e.path, bool(e.mode & 0o111), e.digest.hex())
        elif e.kind == Kind.SYMLINK:
            line("link", e.path, e.target)
        else:
            line("dir", e.path)
    line("dockerfile", None if dockerfile is None else hashlib.sha256(dockerfile).hexdigest())
    for k, v in args:
        line("arg", k, v)
    line("command", *command)
    return "sha256:" + h.hexdigest()


def context_entries(context: Path) -> list[Entry]:
    """What the digest covers of ``context`` (I/O): what ``devstack connect``
    would sync from it, without what its ``.dockerignore`` leaves out."""
    try:
        lines = (context / DOCKERIGNORE).read_text(errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        lines = []
    rules = ignore.load(context, extra=dockerignore_patterns(lines))
    return list(scan(context, rules=rules, cache=DigestCache()).values())


def context_digest(settings: BuildSettings) -> str:
    try:
        dockerfile: bytes | None = settings.dockerfile.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        dockerfile = None
    return digest_of(
        context_entries(settings.context),
        dockerfile=dockerfile,
        args=settings.args,
        command=settings.command,
    )


# --- the runner ---------------------------------------------------------------------------


def _short(argv: Sequence[str]) -> str:
    """How an error names a command: its first two words (``docker push``)."""
    return shlex.join([Path(argv[0]).name, *argv[1:2]])


def run_step(
    argv: Sequence[str], *, cwd: Path, prefix: str, stream: TextIO
) -> tuple[int, list[str]]:
    """Run one command, each line of its output (stdout and stderr) copied to
    ``stream`` behind ``prefix``; its exit code (negative: killed by that
    signal; 127: not found) and its last lines."""
    last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except FileNotFoundError:
        return 127, [f"{argv[0]}: command not found"]
    except PermissionError:
        return 126, [f"{argv[0]}: permission denied"]
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.rstrip("\n")
            stream.write(f"{prefix} | {text}\n")
            stream.flush()
            if text.strip():
                last.append(dlog.clip(text.strip(), 200))
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return code, list(last)


def run_plan(plan: BuildPlan, *, stream: TextIO) -> float:
    """Run ``plan``'s commands in order; the seconds it took. Raises
    :class:`BuildFailed` at the first that fails."""
    started = time.monotonic()
    n = len(plan.steps)
    for i, argv in enumerate(plan.steps, 1):
        stream.write(f"{plan.service}: [{i}/{n}] {shlex.join(argv)}\n")
        stream.flush()
        code, last = run_step(argv, cwd=plan.context, prefix=plan.service, stream=stream)
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
            tail = f": {' / '.join(last)}" if last else " with no output"
            log.info("build.failed", service=plan.service, step=i, code=code)
            raise BuildFailed(
                f"{plan.service}: `{_short(argv)}` {how}{tail} (fix it, then run "
                f"`devstack build {plan.service}` again)"
            )
    seconds = time.monotonic() - started
    stream.write(f"{plan.service}: pushed {plan.ref} in {seconds:.1f}s\n")
    stream.flush()
    log.info("build.pushed", service=plan.service, ref=plan.ref, seconds=round(seconds, 3))
    return seconds


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build and push each service's image with the builder on the PATH (docker, buildah,\n"
        "nerdctl or podman: the first found, or the one devstack.build.builder names), or\n"
        "with devstack.build.command, and record the tag in .devstack/builds.json:\n"
        "`devstack up` then deploys that image in your copy. The tag is\n"
        "dev-<owner>-<digest of the build context>: the same sources, the same tag."
    )
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("services", nargs="+", metavar="SERVICE", help="the services to build")
    parser.add_argument(
        "--tag", default=None, help="the tag to push (default: dev-<owner>-<digest>)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the commands and the tags; build, push and record nothing",
    )
    add_project_arguments(parser, kube=False)
    add_output_argument(parser)


def check_settings(settings: BuildSettings, which: Which) -> None:
    """What the plan cannot see (I/O): the image is set, the context is a
    folder, the builder is installed, and a builder has its Dockerfile."""
    if not settings.image:
        raise BuildConfigError(no_image_message(settings))
    if not settings.context.is_dir():
        raise BuildConfigError(
            f"{settings.where}: build context {settings.context}: no such folder "
            "(set devstack.build.context, relative to the Helmfile's folder)"
        )
    if choose_builder(settings, which) != "command" and not settings.dockerfile.is_file():
        raise BuildConfigError(
            f"{settings.where}: no Dockerfile at {settings.dockerfile} (write one, or set "
            "devstack.build.dockerfile, relative to the context)"
        )


def plan_services(
    project: Project,
    services: Sequence[str],
    *,
    which: Which,
    tag: str | None = None,
) -> list[BuildPlan]:
    """The plan of each named service (reading its context for the tag);
    every problem in one error."""
    plans: list[BuildPlan] = []
    problems: list[str] = []
    for release in resolve_services(project.helmfile, services):
        try:
            settings = build_settings(release, project.root)
            check_settings(settings, which)
            computed = context_digest(settings)
            plans.append(
                plan_build(settings, owner=project.owner, digest=computed, which=which, tag=tag)
            )
        except BuildConfigError as e:
            problems.append(str(e))
    if problems:
        raise BuildConfigError("; ".join(dict.fromkeys(problems)))
    return plans


def format_plans(plans: Sequence[BuildPlan], results: Mapping[str, str]) -> str:
    rows = [["SERVICE", "IMAGE", "TAG", "BUILDER", "RESULT"]]
    rows += [[p.service, p.image, p.tag, p.builder, results[p.service]] for p in plans]
    return table(rows)


def run(args: argparse.Namespace) -> int:
    # events go to stderr, and only warnings unless asked: stdout is the result
    dlog.configure(level=os.environ.get("DEVSTACK_LOG_LEVEL", "warning"))
    project = load_project(args)
    output = getattr(args, "output", "table")
    check_tag(args.tag)
    plans = plan_services(project, args.services, which=shutil.which, tag=args.tag)
    if args.dry_run:
        if output == "table":
            print(format_plans(plans, {p.service: "planned" for p in plans}))
            print("commands:")
            for p in plans:
                for argv in p.steps:
                    print(f"  {p.service}: {shlex.join(argv)}")
        else:
            doc = {
                "owner": project.owner,
                "dryRun": True,
                "builds": [{**p.as_json(), "result": "planned"} for p in plans],
            }
            print(dump(doc, output))
        return 0
    results = {p.service: "skipped" for p in plans}
    error: BuildFailed | None = None
    for p in plans:
        try:
            run_plan(p, stream=sys.stderr)
        except BuildFailed as e:
            results[p.service] = "failed"
            error = e
            break
        write_record(
            project.state_dir,
            BuildRecord(
                service=p.service,
                image=p.image,
                tag=p.tag,
                digest=p.digest,
                built_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                builder=p.builder,
            ),
        )
        results[p.service] = "pushed"
    if output == "table":
        print(format_plans(plans, results))
    else:
        doc = {
            "owner": project.owner,
            "dryRun": False,
            "builds": [{**p.as_json(), "result": results[p.service]} for p in plans],
            "record": str(records_path(project.state_dir)),
        }
        print(dump(doc, output))
    if error is not None:
        print(f"devstack build: {error}", file=sys.stderr)
        return 1
    return 0
