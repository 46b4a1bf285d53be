"""Fixtures for the chart tests: the example chart with its library dependency resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.charts import prepare_example


@pytest.fixture(scope="session")
def example_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_example(tmp_path_factory.mktemp("charts"))
