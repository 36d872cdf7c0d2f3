"""The cluster's limits without Ray: shards' leases (factory/engine/limits.py) against the actor's
state (factory/executors/cluster.py) called in this process, on the real rate policy. The same
objects run on Ray in tests/test_ray_limits.py."""

from __future__ import annotations

import asyncio
import random

import pytest

from factory.engine.limits import Lease
from factory.errors import BudgetExceeded, FactoryError
from factory.executors.cluster import ClusterLimits

SPEC = "openai:m"


@pytest.fixture(autouse=True)
def quick_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("factory.engine.limits.REFRESH_S", 0.02)


def cluster(rpm: float | None = None, tpm: float | None = None, concurrency: int = 4, cap: float | None = None,
            spent: float = 0.0) -> ClusterLimits:
    return ClusterLimits({SPEC: {"rpm": rpm, "tpm": tpm, "concurrency": concurrency}}, cap, spent)


def lease(limits: ClusterLimits, shard: int = 0, cap: float | None = None) -> Lease:
    async def call(report: dict) -> dict:
        await asyncio.sleep(0)  # a round trip: other tasks run meanwhile
        return limits.lease(report)

    return Lease(call, shard, [SPEC], cap, lambda: 0)


async def settle() -> None:
    await asyncio.sleep(0.2)  # a few rounds of every lease's loop


def test_slots_are_redivided_as_shards_come_and_go() -> None:
    limits = cluster(concurrency=5)

    async def go() -> None:
        a = lease(limits, 0)
        a.start()
        await settle()
        slots_a = a.limiters[SPEC].slots
        assert slots_a.limit == 5  # alone: the whole endpoint
        held = [asyncio.Event() for _ in range(5)]

        async def call(i: int) -> None:
            async with slots_a:
                await held[i].wait()

        calls = [asyncio.create_task(call(i)) for i in range(5)]
        await settle()
        b = lease(limits, 1)
        b.start()
        await settle()
        slots_b = b.limiters[SPEC].slots
        assert (slots_a.limit, slots_b.limit) == (3, 0)  # A's five calls still hold every slot
        assert limits.endpoints[SPEC].held == {a.id: 5, b.id: 0}
        for e in held[:3]:
            e.set()
        await settle()
        assert (slots_a.limit, slots_b.limit) == (3, 2)  # each its share, never more than 5 in all
        assert sum(limits.endpoints[SPEC].held.values()) <= 5
        for e in held[3:]:
            e.set()
        await asyncio.gather(*calls)
        await a.close()  # A finished: B, the last shard running, gets the whole endpoint
        await settle()
        assert slots_b.limit == 5 and limits.running == [b.id]
        await b.close()
        assert limits.endpoints[SPEC].held == {} and limits.running == []

    asyncio.run(go())


def test_unused_permits_go_back_to_the_cluster() -> None:
    limits = cluster(rpm=600, tpm=60_000)  # buckets of 10 requests and 1000 tokens

    async def go() -> None:
        a = lease(limits)  # its rounds made by hand, not by its loop
        lim = a.limiters[SPEC]
        calls = [asyncio.create_task(lim.acquire(t)) for t in (10, 10, 30, 10)]
        await asyncio.sleep(0)
        assert (lim.waiting, lim.tokens_each) == (4, 30)
        round_trip = asyncio.create_task(a._round(final=False))
        await asyncio.sleep(0)  # the round asked for four calls' permits...
        calls[3].cancel()  # ...then one of them was no longer needed
        await round_trip
        await asyncio.gather(*calls[:3])
        e = limits.endpoints[SPEC]
        assert e.granted == 4 and (lim.requests, lim.tokens) == (1, 4 * 30 - 50)
        await a.close()
        assert e.returned == 1 and (lim.requests, lim.tokens) == (0, 0)
        assert e.policy.take(1, 940)[0] == 1  # 1000 - 120 + 70 tokens (880 without the 70 given back)
        assert e.policy.take(10, 1) == (6, 0.0)  # 10 - 4 taken + 1 given back - 1 just now

    asyncio.run(go())


def test_answers_and_429s_reach_the_one_policy() -> None:
    limits = cluster(rpm=6000)

    async def go() -> None:
        a, b = lease(limits, 0), lease(limits, 1)
        for x in (a, b):
            x.start()
        await asyncio.sleep(1.05)
        for x in (a, b):  # half of every shard's answers were 429s
            for _ in range(10):
                x.limiters[SPEC].on_success()
                x.limiters[SPEC].on_rate_limited()
        await settle()
        assert limits.endpoints[SPEC].policy.snapshot()["rate_limited"] == 20
        assert limits.endpoints[SPEC].policy.effective_rpm < 0.6 * 6000  # the cluster slowed down, as one
        assert a.limiters[SPEC].snapshot()["rpm"] < 0.6 * 6000  # and every shard hears of it
        for x in (a, b):
            await x.close()

    asyncio.run(go())


@pytest.mark.parametrize("seed", range(5))
def test_the_cluster_budget_is_never_passed(seed: int) -> None:
    rng = random.Random(seed)
    cap = rng.uniform(0.01, 0.05)
    limits = cluster(cap=cap, spent=0.002)

    async def shard(i: int) -> float:
        x = lease(limits, i, cap)
        x.start()
        budget = x.budget

        async def call() -> None:
            worst = rng.uniform(0.0005, 0.002)
            await budget.room_for(worst)
            budget.reserve(worst)  # raises BudgetExceeded
            await asyncio.sleep(rng.uniform(0, 0.01))
            budget.settle(worst, worst * rng.uniform(0.2, 1.0))

        try:
            while True:
                await asyncio.gather(*(call() for _ in range(4)))
        except BudgetExceeded as e:
            assert "the cluster's spending past --max-cost" in str(e)
        await asyncio.sleep(0.05)  # calls still in flight settle
        await x.close()
        return budget.spent

    async def go() -> list[float]:
        return await asyncio.gather(*(shard(i) for i in range(3)))

    spent = asyncio.run(go())
    assert 0.002 + sum(spent) <= cap
    assert sum(spent) > 0.3 * (cap - 0.002)  # it stopped near the cap, not at the first refusal
    assert limits.allotted and sum(limits.allotted.values()) == pytest.approx(sum(spent))  # the rest came back
    assert limits.refused >= 1


def test_a_lost_actor_fails_the_waiting_calls_instead_of_hanging() -> None:
    async def gone(report: dict) -> dict:
        raise ConnectionError("actor died")

    async def go() -> None:
        a = Lease(gone, 0, [SPEC], 1.0, lambda: 0)
        a.start()
        with pytest.raises(FactoryError, match="limits actor did not answer.*--resume"):
            await asyncio.wait_for(a.limiters[SPEC].acquire(1), 5)
        with pytest.raises(FactoryError, match="limits actor did not answer"):
            await asyncio.wait_for(a.budget.room_for(0.1), 5)
        await a.close()

    asyncio.run(go())
