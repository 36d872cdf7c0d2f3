"""The per-endpoint rate limiter, driven by a fake clock (runs instantly)."""

import asyncio

import pytest

from factory.ratelimit import (
    LimitInfo,
    RateLimiter,
    parse_anthropic_headers,
    parse_openai_headers,
)


class FakeTime:
    """A clock that only moves when the limiter sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def make(t: FakeTime, **kwargs) -> RateLimiter:
    return RateLimiter(clock=t.clock, sleep=t.sleep, **kwargs)


def count_in(t: FakeTime, rl: RateLimiter, seconds: float, tokens: int = 1) -> int:
    """How many acquisitions complete within `seconds` of simulated time."""

    async def go() -> int:
        end, n = t.now + seconds, 0
        while True:
            await rl.acquire(tokens)
            if t.now >= end:
                return n
            n += 1

    return asyncio.run(go())


def test_unlimited_returns_at_once():
    t = FakeTime()
    rl = make(t)

    async def go():
        for _ in range(1000):
            await rl.acquire(10_000)

    asyncio.run(go())
    assert t.slept == [] and t.now == 0.0
    assert rl.snapshot() == {"rpm": None, "tpm": None, "factor": 1.0, "rate_limited": 0}


def test_rejects_bad_config():
    with pytest.raises(ValueError, match="rpm"):
        RateLimiter(rpm=0)
    with pytest.raises(ValueError, match="tpm"):
        RateLimiter(tpm=-5)


def test_rpm_paces_requests_over_a_minute():
    t = FakeTime()
    n = count_in(t, make(t, rpm=600), 60.0)
    assert abs(n - 600) <= 18  # 10/s, plus one second of burst at the start
    assert max(t.slept) <= 0.1 + 1e-9  # smooth pacing, no long pauses


def test_tpm_limits_by_tokens():
    t = FakeTime()
    rl = make(t, tpm=6000)  # 100 tokens/s, no request limit
    assert rl.effective_rpm is None
    n = count_in(t, rl, 60.0, tokens=100)
    assert 58 <= n <= 63  # about one 100-token request per second


def test_settle_refunds_and_charges():
    t = FakeTime()
    rl = make(t, tpm=6000)  # capacity 100 tokens, 100 tokens/s

    async def go():
        await rl.acquire(100)  # drains the bucket
        rl.settle(estimated=100, actual=40)  # refund 60
        await rl.acquire(60)
        assert t.now == 0.0
        rl.settle(estimated=10, actual=110)  # charge 100 more: level -100
        await rl.acquire(1)

    asyncio.run(go())
    assert t.now == pytest.approx(1.01)


def test_oversize_request_passes_without_deadlock():
    t = FakeTime()
    rl = make(t, tpm=600)  # capacity 10 tokens, 10 tokens/s

    async def go():
        await rl.acquire(5)  # bucket no longer full
        await asyncio.wait_for(rl.acquire(1000), timeout=1)  # waits for a full bucket, then goes
        first = t.now
        await rl.acquire(1)  # must wait out the debt of 990 tokens
        return first

    first = asyncio.run(go())
    assert first == pytest.approx(0.5)
    assert t.now - first == pytest.approx(99.1)


def test_parse_openai_headers():
    info = parse_openai_headers({
        "X-RateLimit-Limit-Requests": "500",
        "x-ratelimit-limit-tokens": " 30000 ",
        "X-RATELIMIT-REMAINING-REQUESTS": "499",
        "x-ratelimit-remaining-tokens": "lots",
        "content-type": "application/json",
    })
    assert info == LimitInfo(requests_limit=500, tokens_limit=30000, requests_remaining=499)
    assert parse_openai_headers({"content-type": "application/json"}) is None
    assert parse_openai_headers({"x-ratelimit-limit-requests": "-3"}) is None
    assert parse_openai_headers({"x-ratelimit-limit-tokens": "nan"}) is None


def test_parse_anthropic_headers():
    info = parse_anthropic_headers({
        "Anthropic-RateLimit-Requests-Limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
    })
    assert info == LimitInfo(50, 40000, 49, 39000)
    both = parse_anthropic_headers({
        "anthropic-ratelimit-tokens-limit": "80000",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "???",
        "anthropic-ratelimit-input-tokens-remaining": "123",
    })
    assert both == LimitInfo(tokens_limit=80000, tokens_remaining=123)
    assert parse_anthropic_headers({"x-ratelimit-limit-requests": "500"}) is None
    assert parse_anthropic_headers({}) is None


def test_header_limits_adopted_when_not_configured():
    t = FakeTime()
    rl = make(t)
    rl.on_success(LimitInfo(requests_limit=500, tokens_limit=30000))
    assert (rl.effective_rpm, rl.effective_tpm) == (500, 30000)
    rl.on_success(None)  # no headers: the adopted limits stay
    assert (rl.effective_rpm, rl.effective_tpm) == (500, 30000)
    assert count_in(t, rl, 0.5) >= 1  # and the bucket now paces requests
    assert t.slept


def test_explicit_config_wins_when_lower():
    rl = RateLimiter(rpm=100, tpm=1_000_000)
    rl.on_success(LimitInfo(requests_limit=500, tokens_limit=30000))
    assert rl.effective_rpm == 100  # configured lower: wins
    assert rl.effective_tpm == 30000  # provider's real limit is lower: wins


def test_429_decreases_rate_once_per_cooldown():
    t = FakeTime()
    rl = make(t, rpm=600)
    rl.on_rate_limited()
    assert rl.effective_rpm == pytest.approx(420)
    for _ in range(10):  # a burst from requests already in flight
        t.now += 0.05
        rl.on_rate_limited()
    assert rl.effective_rpm == pytest.approx(420)
    assert rl.snapshot()["rate_limited"] == 11
    t.now = 1.5
    rl.on_rate_limited()
    assert rl.effective_rpm == pytest.approx(294)
    assert t.slept == []  # never sleeps itself


def test_429_slows_admission_immediately():
    t = FakeTime()
    rl = make(t, rpm=600)
    count_in(t, rl, 1.0)
    rl.on_rate_limited()
    n = count_in(t, rl, 10.0)
    assert abs(n - 70) <= 2  # 7/s, not 10/s and not a freeze


def test_retry_after_extends_cooldown():
    t = FakeTime()
    rl = make(t, rpm=600)
    rl.on_rate_limited(retry_after=5)
    t.now = 3.0
    rl.on_rate_limited()
    assert rl.effective_rpm == pytest.approx(420)
    t.now = 6.0
    rl.on_rate_limited()
    assert rl.effective_rpm == pytest.approx(294)


def test_floor():
    t = FakeTime()
    rl = make(t, rpm=600)
    for _ in range(50):
        t.now += 2
        rl.on_rate_limited()
    assert rl.effective_rpm == pytest.approx(12)  # 2% of the cap
    slow = make(t, rpm=10)
    for _ in range(50):
        t.now += 2
        slow.on_rate_limited()
    assert slow.effective_rpm == pytest.approx(1)  # at least one request per minute


def test_recovery_is_gradual_and_time_based():
    t = FakeTime()
    rl = make(t, rpm=600)
    rl.on_rate_limited()  # factor 0.7, cooldown until t=1
    t.now = 0.5
    rl.on_success()
    assert rl.snapshot()["factor"] == pytest.approx(0.7)  # no recovery inside the cooldown
    t.now = 10.0
    rl.on_success()
    assert rl.snapshot()["factor"] == pytest.approx(0.7 + 9 / 60)
    for _ in range(30):
        t.now += 1
        rl.on_success()
    assert rl.snapshot()["factor"] == 1.0
    assert rl.effective_rpm == 600


def test_429_without_cap_derives_one_from_observed_rate():
    t = FakeTime()
    rl = make(t)
    for _ in range(20):  # 20 completions in 10 s: 120 rpm
        t.now += 0.5
        rl.on_success()
    rl.on_rate_limited()
    assert rl.effective_rpm == pytest.approx(84)  # 120 x 0.7
    assert rl.effective_tpm is None


def test_429_with_nothing_observed_falls_back_to_small_cap():
    t = FakeTime()
    rl = make(t)
    rl.on_rate_limited()
    assert rl.effective_rpm == pytest.approx(42)  # 60 x 0.7

    async def go():
        await rl.acquire(1)
        await rl.acquire(1)

    asyncio.run(go())  # now paced: the second request waits for one
    assert t.now == pytest.approx(60 / 42)


def test_waiters_served_in_arrival_order():
    t = FakeTime()
    rl = make(t, tpm=6000)  # capacity 100 tokens
    done: list[int] = []

    async def one(i: int, tokens: int):
        await rl.acquire(tokens)
        done.append(i)

    async def go():
        await rl.acquire(100)  # drain
        # The big request arrives first; the small ones would fit sooner but must queue behind it.
        await asyncio.gather(one(0, 100), one(1, 1), one(2, 1), one(3, 1))

    asyncio.run(go())
    assert done == [0, 1, 2, 3]
    assert t.now == pytest.approx(1.03)
