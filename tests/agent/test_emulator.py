"""The test emulator itself (tests/support/kube.py), where the agent's tests
rely on it behaving like a real API server.

Stays on the emulator by nature: it tests the emulator, for as long as the
tests that need injected failures (tests/agent/test_retries.py,
test_controller.py, test_kube.py) use it. A real server's list and watch:
tests/cluster/test_kube_client.py."""

from __future__ import annotations

import threading
from typing import Any

import aiohttp

from tests.support.kube import EmulatorThread, KubeEmulator, Obj, ResourceDef


class WriteDuringList(KubeEmulator):
    """Another client creates a Service while a list reads the objects: the
    write runs in its own thread, as the emulator's callers do, and is given
    a second to get in."""

    racing = False
    writer: threading.Thread | None = None

    def objects(self, rdef: ResourceDef, *args: Any, **kwargs: Any) -> list[Obj]:
        found: list[Obj] = super().objects(rdef, *args, **kwargs)
        if self.racing and rdef.plural == "services":
            self.racing = False
            self.writer = threading.Thread(
                target=self.create,
                args=(rdef, {"metadata": {"name": "late", "namespace": "dev"}, "spec": {}}),
            )
            self.writer.start()
            self.writer.join(1.0)  # it waits for the lock if the list holds it
        return found


async def test_a_list_is_the_state_at_its_resource_version() -> None:
    emulator = WriteDuringList()
    thread = EmulatorThread(emulator).start()
    try:
        services = emulator.resource("v1", "services")
        emulator.create(services, {"metadata": {"name": "early", "namespace": "dev"}, "spec": {}})
        emulator.racing = True
        async with aiohttp.ClientSession() as s, s.get(f"{thread.url}/api/v1/services") as r:
            listed = await r.json()
        list_rv = int(listed["metadata"]["resourceVersion"])
        names = [o["metadata"]["name"] for o in listed["items"]]
        # Every object whose resourceVersion is not newer than the list's is in
        # it; otherwise a watch from the list's version would never see it.
        for obj in emulator.objects(services):
            if int(obj["metadata"]["resourceVersion"]) <= list_rv:
                assert obj["metadata"]["name"] in names
        assert names == ["early"]
        assert emulator.writer is not None
        emulator.writer.join(10)
        assert emulator.get(services, "dev", "late") is not None  # the write did happen
    finally:
        thread.stop()
