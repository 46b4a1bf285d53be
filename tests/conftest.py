"""Fixtures every test gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """A command run in-process (`main([...])`) configures structlog to print to
    the sys.stderr of the moment (pytest's capture, closed after the test): undo
    that after each test so no later log line goes to a closed stream."""
    yield
    structlog.reset_defaults()
