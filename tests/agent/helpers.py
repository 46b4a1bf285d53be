"""Helpers for the agent's tests: agent configs with short timings (the
logic is the same; only the waits are shorter), a controller run on its own,
and a clock that records the waits the agent asks for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.agent.controller import Controller, ControllerSettings
from devstack.agent.desired import AgentSettings
from devstack.agent.informer import Backoff, Timer
from devstack.agent.kube import KubeApi, kube_client
from devstack.agent.leader import LeaseSettings
from devstack.agent.service import AgentConfig
from devstack.agent.writer import Writer
from tests.support.kube import EmulatorThread
from tests.support.net import eventually

FAST_BACKOFF = Backoff(initial=0.05, maximum=0.5)


def fast_config(
    kubeconfig: Path,
    *,
    identity: str = "agent-a",
    agent: AgentSettings | None = None,
    namespaces: tuple[str, ...] = (),
) -> AgentConfig:
    """An agent on a free port whose retries and lease are quick."""
    return AgentConfig(
        agent=agent or AgentSettings(),
        controller=ControllerSettings(
            namespaces=namespaces,
            backoff=FAST_BACKOFF,
            permanent_retry=1.0,
            resync_period=3600,
            watch_timeout=60,
        ),
        lease=LeaseSettings(
            namespace="devstack",
            name="devstack-agent",
            identity=identity,
            lease_duration=1.0,
            renew_deadline=0.8,
            retry_period=0.1,
        ),
        listen_host="127.0.0.1",
        listen_port=0,
        kubeconfig=str(kubeconfig),
    )


@dataclass(frozen=True)
class Wait:
    """One wait the agent asked for: ``kind`` is ``sleep`` or ``timer``;
    ``mark`` is how many requests the emulator had logged at that moment."""

    kind: str
    delay: float
    mark: int


@dataclass
class RecordingClock:
    """A :class:`~devstack.agent.informer.Clock` that records every wait
    (with the emulator's request count at that moment, so a test can check
    the order: failed request, wait, retry) and then waits only ``token``
    seconds, so a test sees an advertised 10 s delay without waiting it."""

    mark: Callable[[], int] = lambda: 0
    token: float = 0.005
    waits: list[Wait] = field(default_factory=list)

    async def sleep(self, delay: float) -> None:
        self.waits.append(Wait("sleep", delay, self.mark()))
        await asyncio.sleep(min(delay, self.token))

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        self.waits.append(Wait("timer", delay, self.mark()))
        return asyncio.get_running_loop().call_later(min(delay, self.token), callback)


def clock_for(kube: EmulatorThread) -> RecordingClock:
    return RecordingClock(mark=lambda: len(kube.emulator.log))


@contextlib.asynccontextmanager
async def running_controller(
    kubeconfig: Path,
    *,
    clock: RecordingClock | None = None,
    writer: Callable[[KubeApi], Writer] | None = None,
    backoff: Backoff = FAST_BACKOFF,
    agent: AgentSettings | None = None,
    **settings: Any,
) -> AsyncIterator[Controller]:
    """A :class:`Controller` alone (no leader election, no HTTP API), always
    allowed to write, running until the block ends. ``writer`` builds the
    writer from the API client (to wrap the real one)."""
    async with kube_client(str(kubeconfig)) as api:
        controller = Controller(
            api,
            agent or AgentSettings(),
            ControllerSettings(
                backoff=backoff, permanent_retry=1.0, resync_period=3600, **settings
            ),
            writer=writer(api) if writer is not None else None,
            clock=clock,
        )
        task = asyncio.create_task(controller.run())
        try:
            yield controller
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def controller_settled(controller: Controller) -> None:
    """Until the controller has synced and has nothing left to do."""
    await eventually(lambda: controller.ready)
    await eventually(lambda: controller.idle.is_set() and not controller.busy)
