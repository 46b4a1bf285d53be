"""The cluster workflow commands' command lines, before any cluster is
reached: which form of `connect` and `status` a command line is, and one
clear line (exit 2, no traceback) for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.cli.main import main
from tests.cli.test_workflow_plan import workflow_project


@pytest.fixture
def helmfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = workflow_project(tmp_path)
    monkeypatch.setenv("DEVSTACK_OWNER", "alice")
    for name in ("DEVSTACK_SIDECAR", "DEVSTACK_TOKEN_FILE", "DEVSTACK_AUTHORITY"):
        monkeypatch.delenv(name, raising=False)
    # no cluster at all: nothing below may need one
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["connect"],
            "devstack connect: name the service: devstack connect SERVICE [PATH] "
            "(or devstack connect PATH --to HOST:PORT --token-file FILE)",
        ),
        (
            ["connect", "nope"],
            "devstack connect: {path} declares no service 'nope' "
            "(it declares: db, cache, api, hello)",
        ),
        (
            ["connect", "src", "extra", "--token-file", "t", "--to", "127.0.0.1:1"],
            "devstack connect: with --token-file, give one PATH (no SERVICE)",
        ),
        (
            ["connect", "src", "--token-file", "t"],
            "devstack connect: --token-file needs --to HOST:PORT (the sidecar's address)",
        ),
        (
            ["connect", "hello", "--local"],
            "devstack connect: no local stack runs: start it with `devstack up --local`",
        ),
        (
            ["status", "--token-file", "t"],
            "devstack status: --token-file needs --to HOST:PORT (the sidecar's address)",
        ),
        (
            ["connect", "hello", "--owner", "Not Valid"],
            "devstack connect: --owner 'Not Valid' must be 1-20 lowercase letters, digits and "
            "single '-' between them (e.g. alice or alice-smith)",
        ),
    ],
)
def test_one_line_for_each_mistake(
    helmfile: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(helmfile.parent)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == message.format(path=helmfile) + "\n"


@pytest.mark.parametrize("command", ["down", "status", "urls", "connect"])
def test_help_is_written_for_users(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"devstack {command}" in out
    # the shared project and kube flags, as kubectl spells them
    for flag in ("--kubeconfig", "--context", "--namespace", "--owner", "--file"):
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "code", "out"),
    [
        (["urls", "--local"], 0, "nothing deployed: run `devstack up` (owner alice)\n"),
        (["status", "--local"], 0, "nothing deployed: run `devstack up` (owner alice)\n"),
        (["down", "--local", "--dry-run"], 0, "would stop the local stack: nothing runs\n"),
    ],
)
def test_local_mode_reads_the_local_stacks_state_not_the_cluster(
    helmfile: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    code: int,
    out: str,
) -> None:
    # no local stack runs, and there is no cluster to reach (KUBECONFIG names
    # no file): with --local nothing asks one
    monkeypatch.chdir(helmfile.parent)
    assert main(argv) == code
    assert capsys.readouterr().out == out


def test_without_a_local_stack_the_cluster_is_asked(
    helmfile: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(helmfile.parent)
    assert main(["urls"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("devstack urls: no kubeconfig at KUBECONFIG=")


def test_down_local_stops_the_whole_stack(
    helmfile: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(helmfile.parent)
    assert main(["down", "--local", "hello"]) == 2
    assert capsys.readouterr().err == (
        "devstack down: the local stack stops as a whole: `devstack down --local`, no SERVICE\n"
    )
