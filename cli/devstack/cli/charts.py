"""Where a release's chart is on this machine: its own folder for a local
chart; for a chart of a repository (``repo/chart``) or a registry
(``oci://host/path/chart``), a folder in devstack's chart cache, pulled
through Helm's engine (helm-python-sdk) the first time it is needed.

The cache is outside the checkout::

    ${XDG_CACHE_HOME:-~/.cache}/devstack/charts/<digest of the repository URL>/<chart>-<version>/

one unpacked chart per folder, moved into place whole (a half-pulled chart is
never seen), so a second ``devstack up`` reads the folder and downloads
nothing. A chart version is taken to be immutable, as Helm takes it: delete
the folder to pull it again.

Which version, as Helm chooses it (``helm pull --version``): an entry that is
exactly the Helmfile's ``version``, else the newest that satisfies it as a
semver constraint (``~1.2``, ``^1``, ``>=1.0 <2``, ``1.2.x``, ``1.0 - 1.4``,
``a || b``, with Masterminds/semver's rules: a pre-release only matches a
constraint that names one); no ``version``: the newest that is not a
pre-release. Versions come from the repository's ``index.yaml`` or the
registry's tags. A pinned version (``1.2.3``) already in the cache is used
without asking the repository at all.

Pure: :func:`parse_version`, :func:`parse_constraint`, :func:`choose_version`,
:func:`remote_chart`, :func:`cache_root`, :func:`cache_path`,
:func:`chart_url`, :func:`plain_http`, :func:`unreachable`. The I/O shell:
:func:`resolve` (the cache, a lock, the move into place) over a
:class:`ChartSource`, whose real one is :class:`HelmSource`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urljoin, urlsplit

from devstack.core import logging as dlog
from devstack.core.errors import ConfigError, DevstackError, UnreachableError
from devstack.core.helmfile import Release

log = dlog.get_logger("devstack.cli.charts")


class ChartError(DevstackError):
    """A remote chart that cannot be had; one line naming the release, the
    chart, the repository and the fix."""

    reason = "chart-unavailable"


class ChartNotFoundError(ChartError, ConfigError):
    """The repository answered, and what the Helmfile asks for is not there
    (or is not a chart): the Helmfile must change."""

    reason = "chart-not-found"


class ChartUnreachableError(ChartError, UnreachableError):
    """The repository or registry did not answer: it may later."""

    reason = "chart-unreachable"


# --- versions, as Helm compares them (pure) --------------------------------------------

_PARTS = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_VERSION = re.compile(rf"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-({_PARTS}))?(?:\+({_PARTS}))?$")
#: A version that names one release exactly (what may hit the cache offline).
_PINNED = re.compile(rf"^v?\d+\.\d+\.\d+(?:-{_PARTS})?(?:\+{_PARTS})?$")


@dataclass(frozen=True)
class Version:
    """A semantic version (build metadata is kept out of comparisons)."""

    major: int
    minor: int
    patch: int
    pre: str = ""

    def key(self) -> tuple[Any, ...]:
        """Sorts as semver precedence: a release after its pre-releases,
        numeric identifiers before alphanumeric ones, a shorter list of
        identifiers before a longer one it starts."""
        if not self.pre:
            return (self.major, self.minor, self.patch, 1, ())
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre.split("."))
        return (self.major, self.minor, self.patch, 0, ids)

    def cmp(self, other: Version) -> int:
        a, b = self.key(), other.key()
        return (a > b) - (a < b)


def parse_version(text: str) -> Version | None:
    """A version as Helm reads an index entry or a tag (``v`` and missing
    minor or patch allowed: ``v1.2`` is 1.2.0); None if it is none."""
    m = _VERSION.match(text.strip())
    if m is None:
        return None
    return Version(int(m[1]), int(m[2] or 0), int(m[3] or 0), m[4] or "")


_OPS = r"!=|>=|=>|<=|=<|~>|=|>|<|~|\^|"
_CV = rf"v?([0-9xX*]+)(\.[0-9xX*]+)?(\.[0-9xX*]+)?(-{_PARTS})?(\+{_PARTS})?"
_TERM = re.compile(rf"^\s*({_OPS})\s*({_CV})\s*$")
_FIND = re.compile(rf"({_OPS})\s*({_CV})")
_VALID = re.compile(rf"^(\s*({_OPS})\s*({_CV})\s*)((?:\s+|,\s*)({_OPS})\s*({_CV})\s*)*$")
_RANGE = re.compile(rf"\s*({_CV})\s+-\s+({_CV})\s*")


def _is_x(part: str | None) -> bool:
    return part in ("x", "X", "*")


@dataclass(frozen=True)
class Term:
    """One comparison: ``op`` against ``version``; ``dirty`` parts were
    wildcards or left out (``1.2`` is ``1.2.x``)."""

    op: str
    version: Version
    dirty: bool = False
    minor_dirty: bool = False
    patch_dirty: bool = False

    def check(self, v: Version) -> bool:
        c = self.version
        if self.op == "!=":
            return self._not_equal(v)
        if v.pre and not c.pre:
            return False  # a pre-release only for a constraint that names one
        if self.op in ("", "="):
            return self._tilde(v) if self.dirty else v.cmp(c) == 0
        if self.op == ">":
            if not self.dirty or (not self.minor_dirty and not self.patch_dirty):
                return v.cmp(c) > 0
            if v.major != c.major:
                return v.major > c.major
            return False if self.minor_dirty else v.minor > c.minor
        if self.op == "<":
            return v.cmp(c) < 0
        if self.op in (">=", "=>"):
            return v.cmp(c) >= 0
        if self.op in ("<=", "=<"):
            if not self.dirty:
                return v.cmp(c) <= 0
            if v.major > c.major:
                return False
            return not (v.major == c.major and v.minor > c.minor and not self.minor_dirty)
        if self.op in ("~", "~>"):
            return self._tilde(v)
        return self._caret(v)

    def _not_equal(self, v: Version) -> bool:
        c = self.version
        if self.dirty:
            if v.pre and not c.pre:
                return False
            if c.major != v.major:
                return True
            if c.minor != v.minor and not self.minor_dirty:
                return True
            if self.minor_dirty:
                return False
            if c.patch != v.patch and not self.patch_dirty:
                return True
            if self.patch_dirty:
                return (
                    bool(v.pre or c.pre)
                    and Version(0, 0, 0, v.pre).cmp(Version(0, 0, 0, c.pre)) != 0
                )
        return v.cmp(c) != 0

    def _tilde(self, v: Version) -> bool:
        c = self.version
        if v.cmp(c) < 0:
            return False
        if (c.major, c.minor, c.patch) == (0, 0, 0) and not (self.minor_dirty or self.patch_dirty):
            return True
        if v.major != c.major:
            return False
        return v.minor == c.minor or self.minor_dirty

    def _caret(self, v: Version) -> bool:
        c = self.version
        if v.cmp(c) < 0:
            return False
        if c.major > 0 or self.minor_dirty:
            return v.major == c.major
        if v.major > 0:
            return False
        if c.minor > 0 or self.patch_dirty:
            return v.minor == c.minor
        if v.minor > 0:
            return False
        return v.patch == c.patch


def _term(text: str) -> Term:
    m = _TERM.match(text)
    if m is None:
        raise ValueError(text)
    op, major, minor, patch, pre = m[1], m[3], m[4], m[5], (m[6] or "").removeprefix("-")
    minor, patch = (minor or "").removeprefix("."), (patch or "").removeprefix(".")
    if _is_x(major):
        return Term(op, Version(0, 0, 0, pre), dirty=True)
    if _is_x(minor) or not minor:
        return Term(op, Version(int(major), 0, 0, pre), dirty=True, minor_dirty=True)
    if _is_x(patch) or not patch:
        return Term(op, Version(int(major), int(minor), 0, pre), dirty=True, patch_dirty=True)
    if not (major + minor + patch).isdigit():
        raise ValueError(text)
    return Term(op, Version(int(major), int(minor), int(patch), pre))


@dataclass(frozen=True)
class Constraint:
    """Any of ``alternatives`` (``||``), each all of its terms."""

    alternatives: tuple[tuple[Term, ...], ...]

    def check(self, v: Version) -> bool:
        return any(all(t.check(v) for t in terms) for terms in self.alternatives)


def parse_constraint(text: str) -> Constraint:
    """A Helm version constraint (Masterminds/semver v3's syntax); ValueError
    if it is none."""
    for m in list(_RANGE.finditer(text)):
        text = text.replace(m[0], f" >= {m[1]}, <= {m[7]} ", 1)
    alternatives = []
    for part in text.split("||"):
        if not _VALID.match(part):
            raise ValueError(part)
        try:
            alternatives.append(tuple(_term(t.group(0)) for t in _FIND.finditer(part)))
        except (ValueError, OverflowError) as e:
            raise ValueError(part) from e
    return Constraint(tuple(alternatives))


def choose_version(available: Iterable[str], wanted: str | None) -> str | None:
    """The version Helm takes from ``available`` for ``wanted`` (None or
    empty: the newest release); None when none fits. ValueError when
    ``wanted`` is neither a version the list has nor a constraint."""
    versions = list(available)
    if wanted and wanted in versions:
        return wanted
    constraint = parse_constraint(wanted or "*")
    parsed = [(v, text) for text in versions if (v := parse_version(text)) is not None]
    parsed.sort(key=lambda pair: pair[0].key(), reverse=True)
    for v, text in parsed:
        if constraint.check(v):
            return text
    return None


def newest_first(available: Iterable[str]) -> list[str]:
    """``available`` as a person wants to read it: newest first, what is no
    version last."""
    versions = list(available)
    parsed = sorted(
        ((v, t) for t in versions if (v := parse_version(t)) is not None),
        key=lambda pair: pair[0].key(),
        reverse=True,
    )
    rest = [t for t in versions if parse_version(t) is None]
    return [t for _, t in parsed] + rest


# --- where a chart comes from and where it is cached (pure) -----------------------------


@dataclass(frozen=True)
class RemoteChart:
    """A release's chart that is not on this machine."""

    #: The Helmfile release, and where it is declared (for messages).
    release: str
    where: str
    kind: Literal["repository", "oci"]
    #: As the Helmfile names it (``stable/web``, ``oci://host/charts/web``).
    ref: str
    name: str
    #: The repository: ``http(s)://…`` or ``oci://host/path`` (the chart's parent).
    repo_url: str
    #: The declared repository's name, if the chart is ``<repo>/<chart>``.
    repository: str | None
    version: str | None

    @property
    def oci_ref(self) -> str:
        return f"{self.repo_url}/{self.name}"


def remote_chart(release: Release) -> RemoteChart | None:
    """The remote chart of ``release``; None for a local one."""
    chart = release.chart
    if chart.kind == "local" or not chart.url:
        return None
    where = f"{release.source}:{release.line}" if release.source else "the Helmfile"
    if chart.kind == "oci":
        parent = chart.url.rstrip("/").rsplit("/", 1)[0]
        kind: Literal["repository", "oci"] = "oci"
    else:
        kind, parent = "repository", chart.url.rstrip("/")
    return RemoteChart(
        release=release.name,
        where=where,
        kind=kind,
        ref=chart.ref,
        name=chart.name,
        repo_url=parent,
        repository=chart.repository,
        version=release.version,
    )


def cache_root(env: Mapping[str, str], home: Path) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/devstack/charts``."""
    base = env.get("XDG_CACHE_HOME") or str(home / ".cache")
    return Path(base) / "devstack" / "charts"


def repo_key(repo_url: str) -> str:
    """The cache folder of one repository: a digest of its URL (trailing
    ``/`` dropped), so two Helmfiles naming it differently share it."""
    return hashlib.sha256(repo_url.strip().rstrip("/").encode()).hexdigest()[:16]


_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def cache_path(root: Path, repo_url: str, chart: str, version: str) -> Path:
    """The folder of ``chart`` at ``version`` of the repository at ``repo_url``.
    ValueError for a name or version that is no file name."""
    for part in (chart, version):
        if not _SAFE.match(part) or ".." in part:
            raise ValueError(part)
    return root / repo_key(repo_url) / f"{chart}-{version}"


def chart_url(repo_url: str, entry_url: str) -> str:
    """An index entry's download URL, absolute (entries may be relative to
    the repository, as ``helm repo index`` writes them)."""
    return urljoin(repo_url.rstrip("/") + "/", entry_url)


def plain_http(url: str) -> bool:
    """Talk plain HTTP to a registry on this machine (``localhost``,
    127.0.0.0/8, ``::1``), HTTPS to any other, as Docker does."""
    host = urlsplit(url if "://" in url else f"oci://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "connection reset",
    "network is unreachable",
    "no route to host",
    "server misbehaving",
    "deadline exceeded",
    "timeout awaiting",
    "unexpected eof",
)


def unreachable(message: str) -> bool:
    """Whether Helm's error says the other end did not answer (rather than
    answering no)."""
    text = message.lower()
    return any(s in text for s in _UNREACHABLE)


def _short(message: str, limit: int = 240) -> str:
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the shell ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One version the repository offers: where to download it, and the
    digest (``sha256`` hex) its index promises, if any."""

    version: str
    url: str
    digest: str = ""


class ChartSource(Protocol):
    """The repository side: what versions there are, and one of them
    downloaded and unpacked. Raises :class:`ChartError`."""

    def versions(self, chart: RemoteChart) -> Sequence[Candidate]: ...

    def fetch(self, chart: RemoteChart, candidate: Candidate, into: Path) -> Path:
        """Download ``candidate`` and unpack it under ``into``; its folder."""
        ...


def _helm() -> Any:
    from devstack.cli.releases import helm

    return helm()


class HelmSource:
    """A :class:`ChartSource` through Helm's engine: the repository's index
    (``repo_index``), a registry's tags (``RegistryClient.tags``), ``pull``
    of the chosen version, its digest checked against the index, unpacked
    (``expand``) and loaded once to prove it is a chart."""

    def __init__(self, sdk: Any | None = None) -> None:
        self.sdk = sdk if sdk is not None else _helm()

    def _failed(
        self, chart: RemoteChart, error: BaseException, problem: str, fix: str
    ) -> ChartError:
        """Helm's error as one line: unreachable, or ``problem`` (Helm's
        words) and ``fix``."""
        text = _short(str(error))
        repo = chart.repo_url
        if unreachable(text):
            return ChartUnreachableError(
                f"release {chart.release}: chart {chart.ref}: the "
                f"{'registry' if chart.kind == 'oci' else 'repository'} {repo} cannot be reached "
                f"({text}): check {_where_url(chart)} and that it is up, then run `devstack up` "
                "again"
            )
        return ChartNotFoundError(
            f"release {chart.release}: chart {chart.ref}: {problem} ({text}): {fix}"
        )

    def versions(self, chart: RemoteChart) -> Sequence[Candidate]:
        sdk = self.sdk
        if chart.kind == "oci":
            ref = chart.oci_ref
            try:
                with sdk.RegistryClient(plain_http=plain_http(ref)) as client:
                    tags = client.tags(ref)
            except sdk.HelmError as e:
                raise self._failed(
                    chart, e, f"the registry has no chart {ref}", f"fix {_where_chart(chart)}"
                ) from e
            return [Candidate(str(t), ref) for t in tags]
        try:
            index = sdk.repo_index(chart.repo_url)
        except sdk.HelmError as e:
            raise self._failed(
                chart,
                e,
                f"{chart.repo_url} is not a Helm chart repository",
                f"fix {_where_url(chart)}",
            ) from e
        entries = (index.get("entries") or {}) if isinstance(index, dict) else {}
        if chart.name not in entries:
            has = ", ".join(sorted(entries)) or "no charts"
            raise ChartNotFoundError(
                f"release {chart.release}: chart {chart.ref}: the repository {chart.repo_url} "
                f"has no chart {chart.name!r} (it has: {_short(has)}): fix the chart name in "
                f"{chart.where}"
            )
        out = []
        for entry in entries[chart.name] or ():
            urls = entry.get("urls") or ()
            if entry.get("version") is None or not urls:
                continue
            out.append(
                Candidate(
                    str(entry["version"]),
                    chart_url(chart.repo_url, str(urls[0])),
                    str(entry.get("digest") or ""),
                )
            )
        return out

    def fetch(self, chart: RemoteChart, candidate: Candidate, into: Path) -> Path:
        sdk = self.sdk
        download = into / "download"
        download.mkdir()
        at = f"{chart.ref} {candidate.version}"
        try:
            if chart.kind == "oci":
                insecure = plain_http(candidate.url)
                with sdk.RegistryClient(plain_http=insecure) as client:
                    sdk.pull(
                        candidate.url,
                        client=client,
                        version=candidate.version,
                        destination=str(download),
                        plain_http=insecure,
                    )
            else:
                sdk.pull(candidate.url, destination=str(download))
        except sdk.HelmError as e:
            raise self._failed(
                chart,
                e,
                f"version {candidate.version} cannot be downloaded from {candidate.url}",
                f"fix the repository, or pin another version in {chart.where}",
            ) from e
        archives = sorted(download.glob("*.tgz"))
        if len(archives) != 1:
            raise ChartNotFoundError(
                f"release {chart.release}: chart {at}: the download from {candidate.url} is not "
                "one chart archive: fix the repository, or pin another version"
            )
        archive = archives[0]
        if candidate.digest:
            got = str(sdk.digest(str(archive))).removeprefix("sha256:")
            if got != candidate.digest.removeprefix("sha256:"):
                raise ChartNotFoundError(
                    f"release {chart.release}: chart {at}: the download from {candidate.url} has "
                    f"digest {got}, not the {candidate.digest} the index of {chart.repo_url} "
                    "lists: the repository changed or the download broke; run `devstack up` again"
                )
        unpacked = into / "chart"
        try:
            sdk.expand(str(unpacked), str(archive))
            folders = [p for p in unpacked.iterdir() if p.is_dir()]
            if len(folders) != 1:
                raise sdk.HelmChartLoadError("the archive holds no single chart folder")
            loaded = sdk.Chart.load(str(folders[0]))
            loaded.close()
        except sdk.HelmError as e:
            raise ChartNotFoundError(
                f"release {chart.release}: chart {at}: what {candidate.url} serves is not a Helm "
                f"chart ({_short(str(e))}): fix the repository, or pin another version in "
                f"{chart.where}"
            ) from e
        return folders[0]


def _where_url(chart: RemoteChart) -> str:
    if chart.repository:
        return f"the url of repository {chart.repository!r} in the Helmfile"
    return f"the chart reference in {chart.where}"


def _where_chart(chart: RemoteChart) -> str:
    if chart.repository:
        return f"the chart name or the url of repository {chart.repository!r} ({chart.where})"
    return f"the chart reference in {chart.where}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process (and thread) at a time pulls a given chart version."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(folder: Path) -> bool:
    return (folder / "Chart.yaml").is_file()


def resolve(chart: RemoteChart, *, root: Path, source: ChartSource) -> Path:
    """The folder of ``chart`` in the cache under ``root``, pulled from
    ``source`` unless it is there."""
    wanted = chart.version
    if not _SAFE.match(chart.name):
        raise ChartNotFoundError(
            f"release {chart.release}: chart {chart.ref}: {chart.name!r} is not a chart name "
            f"(letters, digits, '.', '_', '-'): fix the chart reference in {chart.where}"
        )
    if wanted and _PINNED.match(wanted):
        folder = cache_path(root, chart.repo_url, chart.name, wanted)
        if _cached(folder):
            log.info("charts.cached", release=chart.release, chart=chart.ref, version=wanted)
            return folder
    candidates = source.versions(chart)
    by_version = {c.version: c for c in candidates}
    try:
        chosen = choose_version(by_version, wanted)
    except ValueError as e:
        raise ChartNotFoundError(
            f"release {chart.release}: chart {chart.ref}: version {wanted!r} is neither a version "
            "nor a constraint (e.g. 1.2.3, ~1.2, ^1, >=1.0 <2): fix version in "
            f"{chart.where}"
        ) from e
    if chosen is None:
        listed = newest_first(by_version)
        has = ", ".join(listed[:10]) + (", …" if len(listed) > 10 else "") or "no versions"
        asked = (
            f"version {wanted!r} of {chart.name}"
            if wanted
            else f"version of {chart.name} that is not a pre-release"
        )
        raise ChartNotFoundError(
            f"release {chart.release}: chart {chart.ref}: {chart.repo_url} has no {asked} "
            f"(it has: {has}): set version to one of them in {chart.where}"
        )
    try:
        folder = cache_path(root, chart.repo_url, chart.name, chosen)
    except ValueError as e:
        raise ChartNotFoundError(
            f"release {chart.release}: chart {chart.ref}: {chart.repo_url} lists version "
            f"{chosen!r}, which devstack cannot cache: pin another version in {chart.where}"
        ) from e
    try:
        return _pull_into(chart, by_version[chosen], folder, source)
    except OSError as e:
        raise ChartError(
            f"release {chart.release}: chart {chart.ref} {chosen}: cannot write devstack's "
            f"chart cache {root} ({e.strerror or e}): free some room or set XDG_CACHE_HOME to "
            "a writable folder"
        ) from e


def _pull_into(chart: RemoteChart, candidate: Candidate, folder: Path, source: ChartSource) -> Path:
    """``candidate`` unpacked at ``folder``, pulled unless another pull (this
    process's or another's) put it there first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    label = folder.parent / "repository.txt"  # which repository this digest is
    if not label.is_file():
        label.write_text(chart.repo_url + "\n")
    with _locked(folder.parent / f".{folder.name}.lock"):
        if _cached(folder):
            log.info("charts.cached", release=chart.release, chart=chart.ref, version=folder.name)
            return folder
        if folder.exists():  # a folder someone emptied by hand: pull it again
            shutil.rmtree(folder)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".pull-") as tmp:
            pulled = source.fetch(chart, candidate, Path(tmp))
            os.replace(pulled, folder)
        log.info(
            "charts.pulled",
            release=chart.release,
            chart=chart.ref,
            version=candidate.version,
            repository=chart.repo_url,
            seconds=round(time.monotonic() - started, 3),
        )
    return folder


def chart_folder(
    release: Release,
    *,
    env: Mapping[str, str] | None = None,
    source: Callable[[], ChartSource] = HelmSource,
) -> str:
    """The folder to install ``release`` from: its own for a local chart,
    else its remote chart in the cache (pulled if need be)."""
    if release.chart.kind == "local":
        assert release.chart.path is not None
        return release.chart.path
    remote = remote_chart(release)
    if remote is None:
        raise ChartNotFoundError(f"release {release.name}: chart {release.chart.ref} has no URL")
    root = cache_root(os.environ if env is None else env, Path.home())
    return str(resolve(remote, root=root, source=source()))


__all__ = [
    "Candidate",
    "ChartError",
    "ChartNotFoundError",
    "ChartSource",
    "ChartUnreachableError",
    "Constraint",
    "HelmSource",
    "RemoteChart",
    "Version",
    "cache_path",
    "cache_root",
    "chart_folder",
    "chart_url",
    "choose_version",
    "newest_first",
    "parse_constraint",
    "parse_version",
    "plain_http",
    "remote_chart",
    "repo_key",
    "resolve",
    "unreachable",
]
