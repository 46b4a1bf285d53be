"""Fixtures for the agent's tests: the Kubernetes emulator and a kubeconfig
for it, for the tests that need what no real server does on demand (injected
failures, a request log; docs/testing.md lists them). Tests that a real API
server can serve live under tests/cluster/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kube import EmulatorThread, kube  # noqa: F401  (the fixture)


@pytest.fixture
def kubeconfig(kube: EmulatorThread, tmp_path: Path) -> Path:  # noqa: F811
    return kube.kubeconfig(tmp_path / "kubeconfig")
