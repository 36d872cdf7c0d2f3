"""The per-endpoint rate limiter, driven by a fake clock (runs instantly)."""

import asyncio

import pytest

from factory.engine.ratelimit import (
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


def answers(t: FakeTime, rl: RateLimiter, seconds: float, ok: int, limited: int) -> None:
    """`ok` answers and `limited` 429s, spread evenly over `seconds` of simulated time."""
    events = ["ok"] * ok + ["429"] * limited
    events.sort(key=lambda e: e == "429")  # 429s last, as when a limit is hit mid-second
    for e in events:
        t.now += seconds / len(events)
        rl.on_success() if e == "ok" else rl.on_rate_limited()


def test_a_burst_of_429s_cuts_the_rate_at_most_in_half():
    t = FakeTime()
    rl = make(t, rpm=600)
    answers(t, rl, 1.0, ok=0, limited=64)  # everything in flight came back 429
    assert rl.effective_rpm == pytest.approx(600 * (0.5 + 0.05))
    assert rl.snapshot()["rate_limited"] == 64
    assert t.slept == []  # never sleeps itself


def test_stray_429s_barely_move_the_rate():
    t = FakeTime()
    rl = make(t, rpm=6000)
    for _ in range(30):  # 2% of answers are 429s, for 30 s
        answers(t, rl, 1.0, ok=98, limited=2)
    assert rl.effective_rpm > 0.95 * 6000


def test_a_real_overload_brings_the_rate_down_within_seconds():
    t = FakeTime()
    rl = make(t, rpm=600)
    answers(t, rl, 1.0, ok=4, limited=6)  # 60% refused
    assert rl.effective_rpm == pytest.approx(600 * (0.5 + 0.05))
    answers(t, rl, 1.0, ok=8, limited=2)  # 20% refused
    assert rl.effective_rpm == pytest.approx(600 * ((0.55 * 0.8) + 0.05))


def test_429_slows_admission_immediately_after_the_adjustment():
    t = FakeTime()
    rl = make(t, rpm=600)
    answers(t, rl, 1.0, ok=5, limited=5)  # factor 0.55
    n = count_in(t, rl, 2.0)
    assert 10 <= n <= 17  # a 5-request burst, then about 5.5 a second; at full rate it would be 30


def test_a_total_outage_settles_at_a_trickle_not_a_freeze():
    t = FakeTime()
    rl = make(t, rpm=600)
    for _ in range(20):  # every answer a 429: halved each second, 5% back each second
        answers(t, rl, 1.0, ok=0, limited=10)
    assert rl.effective_rpm == pytest.approx(60, rel=0.01)  # 10% of the cap keeps probing
    slow = make(t, rpm=5)
    for _ in range(20):
        answers(t, slow, 1.0, ok=0, limited=10)
    assert slow.effective_rpm == pytest.approx(1)  # never below one request per minute


def test_recovery_is_gradual_and_time_based():
    t = FakeTime()
    rl = make(t, rpm=600)
    answers(t, rl, 1.0, ok=0, limited=10)  # factor 0.55
    answers(t, rl, 4.0, ok=40, limited=0)
    assert rl.snapshot()["factor"] == pytest.approx(0.55 + 4 * 0.05)
    answers(t, rl, 10.0, ok=100, limited=0)
    assert rl.snapshot()["factor"] == 1.0 and rl.effective_rpm == 600


def test_429_without_a_cap_starts_from_the_rate_that_got_through():
    t = FakeTime()
    rl = make(t)
    assert rl.effective_rpm is None
    answers(t, rl, 1.0, ok=9, limited=1)  # 540 rpm got through, 10% refused
    assert rl.effective_rpm == pytest.approx(540 * (0.9 + 0.05))
    assert rl.effective_tpm is None


def test_a_derived_cap_grows_and_is_forgotten_when_far_above_the_achieved_rate():
    t = FakeTime()
    rl = make(t)
    answers(t, rl, 1.0, ok=9, limited=1)  # cap 540 x 0.9 + growth
    first = rl.effective_rpm
    answers(t, rl, 1.0, ok=8, limited=0)
    assert rl.effective_rpm == pytest.approx(first * 1.05, rel=0.01)  # probes upward
    for _ in range(60):  # the endpoint only manages 60 rpm, and never refuses
        answers(t, rl, 1.0, ok=1, limited=0)
    assert rl.effective_rpm is None  # unlimited again


def test_429_with_nothing_through_falls_back_to_a_small_cap():
    t = FakeTime()
    rl = make(t)
    answers(t, rl, 1.0, ok=0, limited=1)
    assert rl.effective_rpm == pytest.approx(60 * (0.5 + 0.05))


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
