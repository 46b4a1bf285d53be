"""Fixtures for the agent's tests: the Kubernetes emulator and a kubeconfig for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kube import EmulatorThread, kube  # noqa: F401  (the fixture)


@pytest.fixture
def kubeconfig(kube: EmulatorThread, tmp_path: Path) -> Path:  # noqa: F811
    return kube.kubeconfig(tmp_path / "kubeconfig")
