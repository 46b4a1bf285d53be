"""One running agent: Kubernetes client, controller, leader election and
HTTP API wired together (does I/O). ``devstack agent`` runs one; tests run
several in one process with ``async with Agent(config) as agent:``."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

from devstack.agent.api import make_app
from devstack.agent.controller import Controller, ControllerSettings
from devstack.agent.desired import AgentSettings
from devstack.agent.kube import KubeApi, kube_client
from devstack.agent.leader import LeaderElector, LeaseSettings
from devstack.agent.metrics import Metrics
from devstack.agent.sleep import SleepSettings
from devstack.agent.sleeper import Sleeper
from devstack.agent.usage.service import UsageService, UsageSettings
from devstack.core.logging import get_logger

log = get_logger("agent")


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    agent: AgentSettings = field(default_factory=AgentSettings)
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    sleep: SleepSettings = field(default_factory=SleepSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    kubeconfig: str | None = None
    context: str | None = None


class Agent:
    """The agent as an async context manager; ``port`` is the API's port."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.port = 0
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self.api: KubeApi | None = None
        self.controller: Controller | None = None
        self.elector: LeaderElector | None = None
        self.sleeper: Sleeper | None = None
        self.usage: UsageService | None = None

    async def __aenter__(self) -> Agent:
        cfg = self.config
        try:
            self.api = await self._stack.enter_async_context(
                kube_client(
                    cfg.kubeconfig,
                    cfg.context,
                    user_agent=f"devstack-agent/{cfg.lease.identity}",
                )
            )
            elector_box: list[LeaderElector] = []
            self.controller = Controller(
                self.api,
                cfg.agent,
                cfg.controller,
                metrics=self.metrics,
                is_leader=lambda: bool(elector_box) and elector_box[0].is_leader,
            )
            controller = self.controller
            usage_box: list[UsageService] = []

            def started_leading() -> None:
                controller.on_started_leading()
                for usage in usage_box:
                    usage.on_started_leading()

            def stopped_leading() -> None:
                controller.on_stopped_leading()
                for usage in usage_box:
                    usage.on_stopped_leading()

            self.elector = LeaderElector(
                self.api, cfg.lease, on_started=started_leading, on_stopped=stopped_leading
            )
            elector_box.append(self.elector)
            self.sleeper = Sleeper(
                self.api,
                cfg.sleep,
                routes=self.controller,
                lease_namespace=cfg.lease.namespace,
                lease_name=cfg.lease.name,
                namespaces=cfg.controller.namespaces,
                metrics=self.metrics,
                is_leader=self.controller.is_leader,
                team_of=cfg.usage.team_of(),
                backoff=cfg.controller.backoff,
                watch_timeout=cfg.controller.watch_timeout,
            )
            if cfg.usage.enabled:
                self.usage = UsageService(
                    self.api,
                    cfg.usage,
                    namespaces=cfg.controller.namespaces,
                    record_namespace=cfg.lease.namespace,
                    lease_name=cfg.lease.name,
                    metrics=self.metrics,
                    is_leader=self.controller.is_leader,
                    sleep_source=self.sleeper,
                    watch_timeout=cfg.controller.watch_timeout,
                )
                usage_box.append(self.usage)
            runner = web.AppRunner(
                make_app(self.controller, self.metrics, self.usage),
                handle_signals=False,
                shutdown_timeout=1,
            )
            await runner.setup()
            self._stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else cfg.listen_port
            self._tasks = [
                asyncio.create_task(self.controller.run(), name="controller"),
                asyncio.create_task(self.elector.run(), name="leader-election"),
                asyncio.create_task(self.sleeper.run(), name="sleeper"),
            ]
            if self.usage is not None:
                self._tasks.append(asyncio.create_task(self.usage.run(), name="usage"))
            log.info(
                "agent.started",
                identity=cfg.lease.identity,
                api=self.api.host,
                listen=f"{cfg.listen_host}:{self.port}",
                namespaces=list(cfg.controller.namespaces) or "all",
                traefik_version=cfg.agent.traefik_version,
            )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def wait(self) -> None:
        """Until a task ends (it only does on a bug: it is reported)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.usage is not None:
            await self.usage.close()
        if self.elector is not None:
            await self.elector.release()
        await self._stack.aclose()
        log.info("agent.stopped", identity=self.config.lease.identity)
