"""structlog configuration: ``$DEVSTACK_LOG_FORMAT`` (what the Helm chart
sets) picks JSON lines or console output; without it, JSON unless stderr is
a terminal. Secrets are masked either way."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from devstack.core import logging as devstack_logging
from devstack.core.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def emit(capsys: pytest.CaptureFixture[str]) -> str:
    devstack_logging.get_logger("test").info("test.event", owner="alice", token="s3cret")
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("value", ["json", "JSON", " json "])
def test_json_when_asked(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVSTACK_LOG_FORMAT", value)
    devstack_logging.configure()
    event = json.loads(emit(capsys))
    assert (event["event"], event["owner"], event["token"]) == ("test.event", "alice", "***")


def test_console_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVSTACK_LOG_FORMAT", "console")
    devstack_logging.configure()
    line = emit(capsys)
    with pytest.raises(ValueError):
        json.loads(line)
    assert "test.event" in line and "owner=alice" in line
    assert "s3cret" not in line


def test_default_is_json_unless_stderr_is_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEVSTACK_LOG_FORMAT", raising=False)
    devstack_logging.configure()  # pytest's captured stderr is no terminal
    assert json.loads(emit(capsys))["event"] == "test.event"
    assert devstack_logging.json_wanted({}, tty=False) is True
    assert devstack_logging.json_wanted({}, tty=True) is False
    assert devstack_logging.json_wanted({"DEVSTACK_LOG_FORMAT": "json"}, tty=True) is True
    assert devstack_logging.json_wanted({"DEVSTACK_LOG_FORMAT": "console"}, tty=False) is False


def test_an_explicit_argument_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVSTACK_LOG_FORMAT", "console")
    devstack_logging.configure(json=True)
    assert json.loads(emit(capsys))["event"] == "test.event"


def test_a_bad_format_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVSTACK_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="DEVSTACK_LOG_FORMAT"):
        devstack_logging.configure()
