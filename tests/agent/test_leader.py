"""Leader election against the emulator's Lease, with a clock the test moves."""

from __future__ import annotations

from pathlib import Path

from devstack.agent.kube import LEASES, kube_client
from devstack.agent.leader import LeaderElector, LeaseSettings
from tests.support.kube import EmulatorThread


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(identity: str) -> LeaseSettings:
    return LeaseSettings(namespace="devstack", name="lock", identity=identity, lease_duration=10)


async def test_one_holder_at_a_time_and_takeover_after_expiry(
    kube: EmulatorThread, kubeconfig: Path
) -> None:
    clock_a, clock_b = Clock(), Clock()
    async with kube_client(str(kubeconfig)) as api:
        a = LeaderElector(api, settings("a"), clock=clock_a)
        b = LeaderElector(api, settings("b"), clock=clock_b)
        assert await a.try_acquire_or_renew() is True
        assert await b.try_acquire_or_renew() is False
        assert await a.try_acquire_or_renew() is True  # a renews: the record changes
        # b measures silence on its own clock from when it last saw a change.
        clock_b.now += 9
        assert await b.try_acquire_or_renew() is False  # sees the renewal: restarts its count
        clock_b.now += 9
        assert await b.try_acquire_or_renew() is False  # 9 s of silence < 10 s
        clock_b.now += 2
        assert await b.try_acquire_or_renew() is True  # 11 s: a is gone; b takes over
        lease = await api.get(LEASES, namespace="devstack", name="lock")
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
        # a's next renew loses: the Lease is b's and not expired for a yet.
        assert await a.try_acquire_or_renew() is False


async def test_a_released_lease_is_taken_at_once(kube: EmulatorThread, kubeconfig: Path) -> None:
    async with kube_client(str(kubeconfig)) as api:
        a = LeaderElector(api, settings("a"))
        b = LeaderElector(api, settings("b"))
        assert await a.try_acquire_or_renew()
        a._leader = True  # as run() would have set it
        await a.release()
        assert not a.is_leader
        assert await b.try_acquire_or_renew() is True


async def test_concurrent_writers_cannot_both_win(kube: EmulatorThread, kubeconfig: Path) -> None:
    import asyncio

    async with kube_client(str(kubeconfig)) as api:
        electors = [LeaderElector(api, settings(f"r{i}")) for i in range(5)]
        results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
        assert sum(results) == 1
