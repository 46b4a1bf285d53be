"""Leader election against the emulator's Lease, with a clock the test moves.

Why this stays on the emulator: the case is the elector's own arithmetic. A
candidate measures the holder's silence on its own clock, from when it last
saw the Lease record change, so a renewal restarts the count (9 s + 9 s of
a 10 s lease is no takeover; 11 s of silence is). Only a clock the test
moves can put a candidate exactly 9 or 11 seconds on; no real component
produces that, and the API server only stores the record. Everything the
real server decides (one winner among concurrent candidates, a released
Lease taken at once, a SIGKILLed leader's Lease taken over once it has
expired, and only the holder writing routes) is tested on the real server
in tests/cluster/test_leader_on_the_server.py.
"""

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
