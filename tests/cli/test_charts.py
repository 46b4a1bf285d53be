"""Remote charts (devstack.cli.charts): which version Helm's rules choose,
where the cache keeps a chart, and, against a real chart repository served
on 127.0.0.1 (tests/support/chart_repo.py), that a chart is pulled once,
the Helmfile's version is honoured, and each way of failing is one line
naming the release, the chart, the repository and the fix."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devstack.cli.charts import (
    ChartError,
    ChartNotFoundError,
    ChartUnreachableError,
    Version,
    cache_path,
    cache_root,
    chart_folder,
    chart_url,
    choose_version,
    newest_first,
    parse_version,
    plain_http,
    remote_chart,
    repo_key,
    unreachable,
)
from devstack.core.helmfile import HelmfileError, Release, load
from tests.support.chart_repo import ChartRepo, refused_url, serve_repo
from tests.support.registry import Registry, running_registry

# --- versions (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("1.2.3", Version(1, 2, 3)),
        ("v1.2.3", Version(1, 2, 3)),
        ("1.2", Version(1, 2, 0)),
        ("1", Version(1, 0, 0)),
        ("1.2.3-rc.1", Version(1, 2, 3, "rc.1")),
        ("1.2.3+build.7", Version(1, 2, 3)),
        ("1.2.3-beta+exp.sha.5114f85", Version(1, 2, 3, "beta")),
        ("latest", None),
        ("1.2.3.4", None),
        ("", None),
        ("1.x", None),
    ],
)
def test_parse_version(text: str, version: Version | None) -> None:
    assert parse_version(text) == version


def test_precedence_is_semvers() -> None:
    # semver.org's own example order
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2"]
    order += ["1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0", "10.0.0"]
    shuffled = order[::2] + order[1::2]
    assert newest_first(shuffled) == order[::-1]
    assert newest_first(["1.0.0", "banana", "2.0.0"]) == ["2.0.0", "1.0.0", "banana"]


INDEX = ["0.9.0", "1.0.0", "1.2.0", "1.2.5", "1.3.0-rc.1", "1.10.0", "2.0.0", "2.1.0-beta.1"]


@pytest.mark.parametrize(
    ("wanted", "chosen"),
    [
        # no version: the newest that is no pre-release
        (None, "2.0.0"),
        ("", "2.0.0"),
        ("*", "2.0.0"),
        # exact, and an exact version the index lacks
        ("1.2.0", "1.2.0"),
        ("1.2.1", None),
        ("v1.2.0", "1.2.0"),  # equal as versions
        # comparisons
        (">1.2.0", "2.0.0"),
        (">=1.0.0 <1.3.0", "1.2.5"),
        (">=1.0.0, <1.3.0", "1.2.5"),
        ("<1.0.0", "0.9.0"),
        ("<=1.2", "1.2.5"),  # 1.2 is 1.2.x
        (">=1 !=2.0.0", "1.10.0"),
        ("=1.2.5", "1.2.5"),
        # tilde, caret, wildcards
        ("~1.2.0", "1.2.5"),
        ("~1.2", "1.2.5"),
        ("~1", "1.10.0"),
        ("~>1.2", "1.2.5"),
        ("^1.2.0", "1.10.0"),
        ("^1", "1.10.0"),
        ("^0.9", "0.9.0"),
        ("^0.8", None),
        ("1.2.x", "1.2.5"),
        ("1.x", "1.10.0"),
        ("1.2", "1.2.5"),
        ("1", "1.10.0"),
        ("3.x", None),
        # ranges and alternatives
        ("1.0.0 - 1.2.0", "1.2.0"),
        ("0.9 - 1.2", "1.2.5"),
        ("^3 || ~1.2", "1.2.5"),
        ("<0.1 || >=2", "2.0.0"),
        # a pre-release only for a constraint that names one
        (">=1.3.0-0 <2", "1.10.0"),
        (">=2.1.0-0", "2.1.0-beta.1"),
        ("2.1.0-beta.1", "2.1.0-beta.1"),
        ("~1.3.0-0", "1.3.0-rc.1"),
        (">0.0.0-0", "2.1.0-beta.1"),  # what `helm --devel` asks
    ],
)
def test_choose_version(wanted: str | None, chosen: str | None) -> None:
    assert choose_version(INDEX, wanted) == chosen


def test_choose_version_takes_an_entry_that_is_exactly_the_text_first() -> None:
    # Helm looks for the very string before reading it as a constraint
    assert choose_version(["v1.0.0", "1.0.0"], "v1.0.0") == "v1.0.0"
    assert choose_version(["nightly", "1.0.0"], "nightly") == "nightly"
    assert choose_version(["nightly", "1.0.0"], None) == "1.0.0"
    assert choose_version([], None) is None


@pytest.mark.parametrize("wanted", ["latest", ">>1", "1.2.3.4", "~", "1.0 || ", "abc || 1"])
def test_a_version_that_is_no_constraint(wanted: str) -> None:
    with pytest.raises(ValueError):
        choose_version(INDEX, wanted)


# --- where a chart is cached (pure) ------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "root"),
    [
        ({}, "/home/al/.cache/devstack/charts"),
        ({"XDG_CACHE_HOME": "/c"}, "/c/devstack/charts"),
        ({"XDG_CACHE_HOME": ""}, "/home/al/.cache/devstack/charts"),
    ],
)
def test_cache_root(env: dict[str, str], root: str) -> None:
    assert cache_root(env, Path("/home/al")) == Path(root)


def test_cache_path() -> None:
    root = Path("/c")
    url = "https://charts.example.com/stable"
    key = repo_key(url)
    assert len(key) == 16 and int(key, 16) >= 0
    assert cache_path(root, url, "web", "1.2.3") == root / key / "web-1.2.3"
    # one repository, however it is written; another one elsewhere
    assert repo_key(url + "/") == key
    assert repo_key("https://charts.example.com/other") != key
    assert repo_key("oci://127.0.0.1:5000/charts") != repo_key("oci://127.0.0.1:5001/charts")
    assert cache_path(root, url, "web", "1.2.3") != cache_path(root, url, "web", "1.2.4")
    assert cache_path(root, url, "web", "1.2.3+b.1").name == "web-1.2.3+b.1"


@pytest.mark.parametrize(("chart", "version"), [("../x", "1.0.0"), ("web", "../1"), ("a/b", "1")])
def test_cache_path_refuses_what_is_no_file_name(chart: str, version: str) -> None:
    with pytest.raises(ValueError):
        cache_path(Path("/c"), "https://x", chart, version)


@pytest.mark.parametrize(
    ("repo", "entry", "url"),
    [
        ("http://127.0.0.1:8/charts", "web-1.0.0.tgz", "http://127.0.0.1:8/charts/web-1.0.0.tgz"),
        ("http://127.0.0.1:8/charts/", "web-1.0.0.tgz", "http://127.0.0.1:8/charts/web-1.0.0.tgz"),
        ("http://h/charts", "pkg/web-1.0.0.tgz", "http://h/charts/pkg/web-1.0.0.tgz"),
        ("http://h/charts", "/web-1.0.0.tgz", "http://h/web-1.0.0.tgz"),
        ("http://h/charts", "https://cdn/web-1.0.0.tgz", "https://cdn/web-1.0.0.tgz"),
    ],
)
def test_chart_url(repo: str, entry: str, url: str) -> None:
    assert chart_url(repo, entry) == url


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("oci://127.0.0.1:5000/charts/web", True),
        ("oci://localhost:5000/charts/web", True),
        ("oci://127.1.2.3/web", True),
        ("oci://[::1]:5000/web", True),
        ("oci://registry.example.com/charts/web", False),
        ("oci://10.0.0.1:5000/web", False),
        ("127.0.0.1:5000/charts", True),
    ],
)
def test_plain_http_only_on_this_machine(url: str, plain: bool) -> None:
    assert plain_http(url) is plain


@pytest.mark.parametrize(
    ("message", "down"),
    [
        ('Get "http://127.0.0.1:1/index.yaml": dial tcp 127.0.0.1:1: connect: '
         "connection refused", True),
        ("dial tcp: lookup charts.invalid: no such host", True),
        ("net/http: TLS handshake timeout: i/o timeout", True),
        ("failed to fetch http://h/index.yaml : 404 Not Found", False),
        ('chart "web" not found in http://h repository', False),
    ],
)  # fmt: skip
def test_unreachable(message: str, down: bool) -> None:
    assert unreachable(message) is down


# --- a Helmfile's remote charts -------------------------------------------------------


def helmfile_release(
    root: Path,
    chart: str,
    *,
    version: str | None = None,
    url: str = "http://127.0.0.1:1",
    registry: str = "127.0.0.1:5000/charts",
) -> Release:
    """Release ``db`` of a Helmfile that declares repository ``local`` at
    ``url`` and ``reg``, an OCI registry, at ``registry``."""
    release: dict[str, object] = {"name": "db", "chart": chart}
    if version is not None:
        release["version"] = version
    data = {
        "repositories": [
            {"name": "local", "url": url},
            {"name": "reg", "url": registry, "oci": True},
        ],
        "releases": [release],
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "helmfile.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load(str(root / "helmfile.yaml")).release("db")


def where(root: Path) -> str:
    """``file:line`` of release ``db`` in the Helmfile :func:`helmfile_release` wrote."""
    path = root / "helmfile.yaml"
    return f"{path}:{path.read_text().splitlines().index('- name: db') + 1}"


def test_remote_chart_of_a_release(tmp_path: Path) -> None:
    r = remote_chart(helmfile_release(tmp_path, "local/plain", version="0.1.0"))
    assert r is not None
    assert (r.kind, r.name, r.repo_url, r.repository, r.version) == (
        "repository", "plain", "http://127.0.0.1:1", "local", "0.1.0",
    )  # fmt: skip
    assert r.where == where(tmp_path)
    r = remote_chart(helmfile_release(tmp_path, "reg/plain"))
    assert r is not None
    assert (r.kind, r.name, r.repo_url, r.oci_ref) == (
        "oci", "plain", "oci://127.0.0.1:5000/charts", "oci://127.0.0.1:5000/charts/plain",
    )  # fmt: skip
    r = remote_chart(helmfile_release(tmp_path, "oci://127.0.0.1:5000/a/b/plain"))
    assert r is not None
    assert (r.kind, r.repo_url, r.repository) == ("oci", "oci://127.0.0.1:5000/a/b", None)
    (tmp_path / "charts" / "web").mkdir(parents=True)
    assert remote_chart(helmfile_release(tmp_path, "./charts/web")) is None


def test_an_undeclared_repository_is_already_a_helmfile_error(tmp_path: Path) -> None:
    with pytest.raises(HelmfileError) as e:
        helmfile_release(tmp_path, "nope/plain")
    assert "releases[0].chart: 'nope/plain': no repository 'nope' is declared" in str(e.value)


# --- against a real chart repository on 127.0.0.1 ---------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[ChartRepo]:
    with serve_repo(tmp_path / "repo") as served:
        served.add("0.1.0", "0.2.0", "0.3.0-rc.1")
        yield served


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "cache")}


def pulled_version(folder: str) -> str:
    return str(yaml.safe_load((Path(folder) / "Chart.yaml").read_text())["version"])


def test_a_chart_is_pulled_once_into_the_cache(
    tmp_path: Path, repo: ChartRepo, env: dict[str, str]
) -> None:
    release = helmfile_release(tmp_path / "p", "local/plain", version="0.1.0", url=repo.url)
    folder = chart_folder(release, env=env)
    assert Path(folder) == cache_path(
        tmp_path / "cache" / "devstack" / "charts", repo.url, "plain", "0.1.0"
    )
    assert pulled_version(folder) == "0.1.0"
    assert (Path(folder) / "templates" / "deployment.yaml").is_file()
    assert (Path(folder).parent / "repository.txt").read_text() == repo.url + "\n"
    assert repo.log() == [("/index.yaml", 200), ("/plain-0.1.0.tgz", 200)]
    # the second time: a pinned version in the cache asks the repository nothing
    assert chart_folder(release, env=env) == folder
    assert repo.log() == [("/index.yaml", 200), ("/plain-0.1.0.tgz", 200)]
    # nothing of a pull is left beside it
    assert sorted(p.name for p in Path(folder).parent.iterdir()) == [
        ".plain-0.1.0.lock", "plain-0.1.0", "repository.txt",
    ]  # fmt: skip


def test_without_a_version_the_newest_release_and_the_index_each_time(
    tmp_path: Path, repo: ChartRepo, env: dict[str, str]
) -> None:
    release = helmfile_release(tmp_path / "p", "local/plain", url=repo.url)
    folder = chart_folder(release, env=env)
    assert pulled_version(folder) == "0.2.0"  # not 0.3.0-rc.1
    assert chart_folder(release, env=env) == folder
    # which version is newest is the index's to say; the chart is not downloaded again
    assert repo.log() == [("/index.yaml", 200), ("/plain-0.2.0.tgz", 200), ("/index.yaml", 200)]
    # a newer release in the repository is taken on the next up
    repo.add("0.2.1")
    assert pulled_version(chart_folder(release, env=env)) == "0.2.1"
    assert repo.downloads() == ["/plain-0.2.0.tgz", "/plain-0.2.1.tgz"]


@pytest.mark.parametrize(
    ("version", "chosen"),
    [("0.2.0", "0.2.0"), ("~0.1", "0.1.0"), ("<0.2", "0.1.0"), (">=0.3.0-0", "0.3.0-rc.1")],
)
def test_the_helmfiles_version_is_honoured(
    tmp_path: Path, repo: ChartRepo, env: dict[str, str], version: str, chosen: str
) -> None:
    release = helmfile_release(tmp_path / "p", "local/plain", version=version, url=repo.url)
    assert pulled_version(chart_folder(release, env=env)) == chosen
    assert repo.downloads() == [f"/plain-{chosen}.tgz"]


def test_a_cache_folder_emptied_by_hand_is_pulled_again(
    tmp_path: Path, repo: ChartRepo, env: dict[str, str]
) -> None:
    release = helmfile_release(tmp_path / "p", "local/plain", version="0.2.0", url=repo.url)
    folder = Path(chart_folder(release, env=env))
    (folder / "Chart.yaml").unlink()
    assert chart_folder(release, env=env) == str(folder)
    assert pulled_version(str(folder)) == "0.2.0"
    assert repo.downloads() == ["/plain-0.2.0.tgz", "/plain-0.2.0.tgz"]


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path: Path, repo: ChartRepo) -> None:
    (tmp_path / "not-a-folder").write_text("")
    release = helmfile_release(tmp_path / "p", "local/plain", version="0.2.0", url=repo.url)
    with pytest.raises(ChartError) as e:
        chart_folder(release, env={"XDG_CACHE_HOME": str(tmp_path / "not-a-folder")})
    assert str(e.value) == (
        "release db: chart local/plain 0.2.0: cannot write devstack's chart cache "
        f"{tmp_path / 'not-a-folder' / 'devstack' / 'charts'} (Not a directory): free some "
        "room or set XDG_CACHE_HOME to a writable folder"
    )


def test_two_releases_of_one_chart_at_once_download_it_once(
    tmp_path: Path, repo: ChartRepo, env: dict[str, str]
) -> None:
    release = helmfile_release(tmp_path / "p", "local/plain", version="0.2.0", url=repo.url)
    got: list[str] = []
    threads = [
        threading.Thread(target=lambda: got.append(chart_folder(release, env=env)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 4 and len(set(got)) == 1
    assert repo.downloads() == ["/plain-0.2.0.tgz"]


def test_errors_are_one_line_naming_release_chart_repository_and_fix(
    tmp_path: Path, repo: ChartRepo, env: dict[str, str]
) -> None:
    helmfile_release(tmp_path / "p", "local/plain", url=repo.url)
    release_at = where(tmp_path / "p")  # the same line in each Helmfile below

    def error(chart: str, version: str | None = None, url: str = repo.url) -> str:
        release = helmfile_release(tmp_path / "p", chart, version=version, url=url)
        with pytest.raises((ChartNotFoundError, ChartUnreachableError)) as e:
            chart_folder(release, env=env)
        text = str(e.value)
        assert "\n" not in text
        return text

    assert error("local/nope") == (
        f"release db: chart local/nope: the repository {repo.url} has no chart 'nope' "
        f"(it has: plain): fix the chart name in {release_at}"
    )
    assert error("local/plain", "9.9.9") == (
        f"release db: chart local/plain: {repo.url} has no version '9.9.9' of plain "
        f"(it has: 0.3.0-rc.1, 0.2.0, 0.1.0): set version to one of them in {release_at}"
    )
    only_previews = repo.root / "previews"
    only_previews.mkdir()
    (only_previews / "index.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "entries": {
                    "plain": [{"name": "plain", "version": "1.0.0-rc.1", "urls": ["x.tgz"]}]
                },
            }
        )
    )
    assert error("local/plain", url=repo.url + "/previews") == (
        f"release db: chart local/plain: {repo.url}/previews has no version of plain that is "
        f"not a pre-release (it has: 1.0.0-rc.1): set version to one of them in {release_at}"
    )
    assert error("local/plain", "latest") == (
        "release db: chart local/plain: version 'latest' is neither a version nor a "
        f"constraint (e.g. 1.2.3, ~1.2, ^1, >=1.0 <2): fix version in {release_at}"
    )
    down = refused_url()
    assert error("local/plain", url=down) == (
        f"release db: chart local/plain: the repository {down} cannot be reached "
        f'(Get "{down}/index.yaml": dial tcp {down.removeprefix("http://")}: connect: '
        "connection refused): check the url of repository 'local' in the Helmfile and that "
        "it is up, then run `devstack up` again"
    )
    assert error("local/plain", url=repo.url + "/nothing") == (
        f"release db: chart local/plain: {repo.url}/nothing is not a Helm chart repository "
        f"(failed to fetch {repo.url}/nothing/index.yaml : 404 File not found): fix the url "
        "of repository 'local' in the Helmfile"
    )
    # an index entry whose archive is no chart
    broken = repo.root / "broken"
    broken.mkdir()
    (broken / "plain-1.0.0.tgz").write_bytes(b"<html>not a chart</html>")
    (broken / "index.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "entries": {
                    "plain": [{"name": "plain", "version": "1.0.0", "urls": ["plain-1.0.0.tgz"]}]
                },
            }
        )
    )
    assert error("local/plain", url=repo.url + "/broken") == (
        f"release db: chart local/plain 1.0.0: what {repo.url}/broken/plain-1.0.0.tgz serves is "
        "not a Helm chart (gzip: invalid header): fix the repository, or pin another version "
        f"in {release_at}"
    )
    # an archive that is not the one the index lists
    (repo.root / "plain-0.1.0.tgz").write_bytes((repo.root / "plain-0.2.0.tgz").read_bytes())
    assert error("local/plain", "0.1.0").startswith(
        f"release db: chart local/plain 0.1.0: the download from {repo.url}/plain-0.1.0.tgz "
        "has digest "
    )
    # nothing of a failed pull is left in the cache
    cached = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_dir()]
    assert not [name for name in cached if name.startswith(("plain-", ".pull-"))], cached


# --- against a real OCI registry on 127.0.0.1 -------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with running_registry(tmp_path / "registry") as served:
        served.push("0.1.0", "0.2.0", "0.3.0-rc.1")
        yield served


def test_an_oci_chart_is_pulled_once_into_the_cache(
    tmp_path: Path, registry: Registry, env: dict[str, str]
) -> None:
    root = tmp_path / "cache" / "devstack" / "charts"
    # a repository declared with oci: true
    release = helmfile_release(
        tmp_path / "p", "reg/plain", version="0.1.0", registry=f"{registry.host}/charts"
    )
    before = registry.settled()
    folder = chart_folder(release, env=env)
    assert Path(folder) == cache_path(root, f"oci://{registry.host}/charts", "plain", "0.1.0")
    assert pulled_version(folder) == "0.1.0"
    assert (Path(folder) / "templates" / "deployment.yaml").is_file()
    pulled = registry.settled()[len(before) :]
    assert "GET /v2/charts/plain/tags/list" in pulled
    assert any(r.startswith("GET /v2/charts/plain/manifests/0.1.0") for r in pulled), pulled
    # the second time, a pinned version asks the registry nothing
    assert chart_folder(release, env=env) == folder
    assert registry.settled()[len(before) + len(pulled) :] == []
    # an oci:// reference with no version: the newest tag that is no pre-release,
    # in the same cache folder as the repository's (one registry path, one key)
    release = helmfile_release(tmp_path / "p", f"oci://{registry.host}/charts/plain")
    newest = chart_folder(release, env=env)
    assert Path(newest) == Path(folder).parent / "plain-0.2.0"
    assert pulled_version(newest) == "0.2.0"
    # a constraint over the tags
    release = helmfile_release(
        tmp_path / "p", f"oci://{registry.host}/charts/plain", version="<0.2"
    )
    assert chart_folder(release, env=env) == folder


def test_oci_errors_are_one_line(tmp_path: Path, registry: Registry, env: dict[str, str]) -> None:
    helmfile_release(tmp_path / "p", "reg/plain")
    release_at = where(tmp_path / "p")

    def error(chart: str, version: str | None = None) -> str:
        release = helmfile_release(
            tmp_path / "p", chart, version=version, registry=f"{registry.host}/charts"
        )
        with pytest.raises((ChartNotFoundError, ChartUnreachableError)) as e:
            chart_folder(release, env=env)
        text = str(e.value)
        assert "\n" not in text
        return text

    assert error("reg/plain", "9.9.9") == (
        f"release db: chart reg/plain: oci://{registry.host}/charts has no version '9.9.9' of "
        f"plain (it has: 0.3.0-rc.1, 0.2.0, 0.1.0): set version to one of them in {release_at}"
    )
    assert error("reg/nope").startswith(
        f"release db: chart reg/nope: the registry has no chart oci://{registry.host}/charts/nope ("
    )
    assert error("reg/nope").endswith(
        f"): fix the chart name or the url of repository 'reg' ({release_at})"
    )
    down = refused_url().removeprefix("http://")
    assert error(f"oci://{down}/charts/plain") == (
        f"release db: chart oci://{down}/charts/plain: the registry oci://{down}/charts cannot "
        f'be reached (Get "http://{down}/v2/charts/plain/tags/list": dial tcp {down}: connect: '
        f"connection refused): check the chart reference in {release_at} and that it is up, "
        "then run `devstack up` again"
    )
