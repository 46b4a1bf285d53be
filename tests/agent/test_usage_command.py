"""`devstack agent`'s usage flags and their environment variables."""

from __future__ import annotations

import argparse

import pytest

from devstack.agent import command
from devstack.agent.usage.ledger import Prices
from devstack.agent.usage.service import UsageSettings
from devstack.core.errors import ConfigError


def _parse(argv: list[str], env: dict[str, str] | None = None) -> UsageSettings:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.usage_settings(parser.parse_args(argv), env or {})


def test_the_flags_set_interval_retention_teams_and_prices() -> None:
    settings = _parse(
        [
            "--usage-interval", "2m", "--usage-retention-days", "7",
            "--team", "alice=payments", "--team", "bob=search",
            "--price-core-hour", "0.031", "--price-storage-gib-hour", "0.0001",
            "--currency", "EUR",
        ]
    )  # fmt: skip
    assert settings.interval == 120.0
    assert settings.retention_days == 7
    assert dict(settings.teams) == {"alice": "payments", "bob": "search"}
    assert settings.prices == Prices(core_hour=0.031, storage_gib_hour=0.0001, currency="EUR")


def test_the_teams_come_from_the_environment_when_no_flag_gives_them() -> None:
    settings = _parse([], {"DEVSTACK_TEAMS": "alice=payments, bob=search"})
    assert dict(settings.teams) == {"alice": "payments", "bob": "search"}
    assert _parse(["--team", "carol=infra"], {"DEVSTACK_TEAMS": "alice=payments"}).teams == (
        ("carol", "infra"),
    )


def test_environment_variables_are_the_flags_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVSTACK_USAGE_INTERVAL", "30")
    monkeypatch.setenv("DEVSTACK_PRICE_GIB_HOUR", "0.004")
    settings = _parse([])
    assert settings.interval == 30.0
    assert settings.prices == Prices(gib_hour=0.004)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--team", "alice"], "--team: team 'alice': use OWNER=TEAM"),
        (["--price-core-hour", "cheap"], "--price-core-hour 'cheap': use a price of 0 or more"),
        (["--price-gib-hour", "-1"], "--price-gib-hour '-1': use a price of 0 or more"),
        (["--usage-interval", "soon"], "--usage-interval 'soon': use seconds or a duration"),
        (["--usage-interval", "0s"], "--usage-interval '0s': use a duration between 1s and 24h"),
        (["--usage-retention-days", "0"], "--usage-retention-days '0': use a whole number"),
        (["--currency", " "], "--currency is empty"),
    ],
)
def test_a_bad_value_is_one_line_saying_what_to_give(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _parse(argv)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)
