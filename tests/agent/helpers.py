"""Helpers for the agent's tests: agent configs with short timings (the
logic is the same; only the waits are shorter)."""

from __future__ import annotations

from pathlib import Path

from devstack.agent.controller import ControllerSettings
from devstack.agent.desired import AgentSettings
from devstack.agent.informer import Backoff
from devstack.agent.leader import LeaseSettings
from devstack.agent.service import AgentConfig


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
            backoff=Backoff(initial=0.05, maximum=0.5),
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
