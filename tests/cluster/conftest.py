"""Fixtures for the tests on the real control plane (tests/support/testbed.py):
the session's testbed, an admin client, and a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.testbed import Kube, Testbed, testbed, wait_for  # noqa: F401  (the fixture)


@pytest.fixture
def admin(testbed: Testbed) -> Iterator[Kube]:  # noqa: F811
    kube = testbed.admin()
    yield kube
    kube.close()


@pytest.fixture
def namespace(admin: Kube) -> Iterator[str]:
    """A namespace of this test's own, ready for Pods (its ``default``
    ServiceAccount exists); deleted afterwards, without waiting."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(lambda: admin.maybe(f"/api/v1/namespaces/{name}/serviceaccounts/default"))
    yield name
    admin.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def apps(admin: Kube) -> Iterator[str]:
    """The namespace the routed Services live in; gone before the next test
    starts, so that a later agent watching every namespace never meets its
    Services while the namespace terminates (a 403 it would log)."""
    name = f"apps-{uuid.uuid4().hex[:8]}"
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    admin.delete(f"/api/v1/namespaces/{name}")
    wait_for(lambda: admin.maybe(f"/api/v1/namespaces/{name}") is None, timeout=120)
