"""The command's own decisions: where the endpoint comes from, option errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.cli.main import main
from devstack.core.errors import ConfigError
from devstack.provision import command
from devstack.provision.command import DEFAULT_ENDPOINT, resolve_endpoint

CASES = [
    ("nothing set: LocalStack in the cluster", (None, None, None), DEFAULT_ENDPOINT),
    ("environment", (None, None, "http://env:1"), "http://env:1"),
    ("spec over environment", (None, "http://spec:1", "http://env:1"), "http://spec:1"),
    ("flag over everything", ("http://flag:1", "http://spec:1", "http://env:1"), "http://flag:1"),
    ("empty flag: AWS itself", ("", "http://spec:1", None), None),
    ("empty environment: AWS itself", (None, None, ""), None),
]


@pytest.mark.parametrize(("case", "given", "expected"), CASES, ids=[c[0] for c in CASES])
def test_resolve_endpoint(
    case: str, given: tuple[str | None, str | None, str | None], expected: str | None
) -> None:
    assert resolve_endpoint(*given) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--owner", "Alice", "--spec", "x"], "--owner 'Alice': must be 1-20 lowercase letters"),
        (["--release=-x", "--spec", "x"], "--release '-x': must be 1-53 lowercase letters"),
        ([], "--spec FILE is required (except with --teardown)"),
        (["--spec", "/no/such/file.yaml"], "--spec /no/such/file.yaml: No such file or directory"),
    ],
)
def test_bad_options_are_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["provision", *argv]) == 2
    err = capsys.readouterr().err
    assert f"devstack provision: {message}" in err


@pytest.mark.parametrize(("case", "given", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_command_uses_the_resolved_endpoint(
    case: str,
    given: tuple[str | None, str | None, str | None],
    expected: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`devstack provision` builds its AWS clients for the endpoint the rules above
    choose, from the real flag, spec file and environment."""
    flag, in_spec, env = given
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({"endpoint": in_spec} if in_spec is not None else {}))
    if env is None:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", env)
    chosen: list[str | None] = []

    class Clients:
        def __init__(self, *, endpoint: str | None, region: str) -> None:
            chosen.append(endpoint)
            raise ConfigError("stop here")

    monkeypatch.setattr(command, "BotoClients", Clients)
    argv = ["provision", "--spec", str(spec_file)]
    if flag is not None:
        argv += ["--endpoint", flag]
    assert main(argv) == 2
    assert "stop here" in capsys.readouterr().err
    assert chosen == [expected]
